"""The gallery version: one counter bumped in the same transaction as every gallery change.

A search records the version it matched against, and an index knows the version it was built
from, so a stale index is detected by comparing two integers. Each bump also records which
templates the version added and removed (``gallery_changes``), so a stale index catches up by
reading only those.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from retroface.core.clock import utcnow
from retroface.storage.tables import GalleryChange, GalleryState


def gallery_version(session: Session) -> int:
    state = session.get(GalleryState, 1)
    return state.version if state else 0


def bump_gallery_version(
    session: Session, added: Iterable[int] = (), removed: Iterable[int] = ()
) -> int:
    """Increment the version in the caller's transaction, so it commits with the change itself,
    and record the template ids the change added and removed."""
    state = session.get(GalleryState, 1, with_for_update=True)
    if state is None:
        state = GalleryState(id=1, version=0)
        session.add(state)
    state.version += 1
    state.updated_at = utcnow()
    session.add(
        GalleryChange(
            version=state.version, added=[int(i) for i in added], removed=[int(i) for i in removed]
        )
    )
    session.flush()
    return state.version


def changes_since(session: Session, version: int, upto: int) -> list[GalleryChange] | None:
    """Every version's change after ``version`` up to ``upto``, in order; None when any is
    missing (versions from before the change log, or a gap), so the caller reloads instead."""
    rows = list(
        session.scalars(
            select(GalleryChange)
            .where(GalleryChange.version > version, GalleryChange.version <= upto)
            .order_by(GalleryChange.version)
        )
    )
    if [r.version for r in rows] != list(range(version + 1, upto + 1)):
        return None
    return rows
