"""Which stored files are still referenced: a file shared by a probe and a reference image (or two
probes) is only deleted when its last reference goes."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from retroface.storage.tables import Probe, ReferenceImage


def still_referenced(session: Session, hashes: Iterable[str]) -> set[str]:
    """The subset of ``hashes`` that some remaining row still points to (call after deleting)."""
    wanted = set(hashes)
    if not wanted:
        return set()
    session.flush()
    probes = session.scalars(select(Probe.content_hash).where(Probe.content_hash.in_(wanted)))
    images = session.scalars(
        select(ReferenceImage.content_hash).where(ReferenceImage.content_hash.in_(wanted))
    )
    return set(probes) | set(images)
