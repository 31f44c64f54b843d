"""The gallery version: one counter bumped in the same transaction as every gallery change.

A search records the version it matched against, and an index knows the version it was built
from, so a stale index is detected by comparing two integers.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from retroface.core.clock import utcnow
from retroface.storage.tables import GalleryState


def gallery_version(session: Session) -> int:
    state = session.get(GalleryState, 1)
    return state.version if state else 0


def bump_gallery_version(session: Session) -> int:
    """Increment the version in the caller's transaction, so it commits with the change itself."""
    state = session.get(GalleryState, 1, with_for_update=True)
    if state is None:
        state = GalleryState(id=1, version=0)
        session.add(state)
    state.version += 1
    state.updated_at = utcnow()
    session.flush()
    return state.version
