"""What a candidate's matched reference image breaks of the quality minimums.

References below a minimum are enrolled flagged rather than refused (see
:class:`~retroface.gallery.enrol.Enroller`); candidate lists and review sheets carry the reasons
so that whoever weighs a match on a blurred or turned-away reference knows it. A light module
(SQLAlchemy and the tables only): the review service uses it without the search engine's imports.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from retroface.storage.tables import FaceTemplate, SearchRecord


def reference_warnings(s: Session, record: SearchRecord) -> dict[int, list[str]]:
    """Per matched reference image of ``record``'s candidates, the quality minimums it breaks
    (as its template recorded them at enrolment); images without any are left out."""
    ids = {c.image_id for c in record.candidates if c.image_id is not None}
    if not ids:
        return {}
    rows = s.execute(
        select(FaceTemplate.image_id, FaceTemplate.quality).where(
            FaceTemplate.image_id.in_(ids), FaceTemplate.model_key == record.model_key
        )
    )
    return {i: list(q.get("reasons", [])) for i, q in rows if q and q.get("reasons")}
