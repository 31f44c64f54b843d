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


def with_derived(session: Session, ids: Iterable[int]) -> list[int]:
    """``ids`` and every probe version derived from them, at any depth: an enhanced version
    goes when its original goes (retention), whatever its own age."""
    found = set(ids)
    frontier = set(found)
    while frontier:
        children = set(
            session.scalars(select(Probe.id).where(Probe.parent_id.in_(sorted(frontier))))
        )
        frontier = children - found
        found |= frontier
    return sorted(found)


def delete_probes(session: Session, probes: Iterable[Probe]) -> None:
    """Delete probe rows, derived versions before the versions they came from.

    A version always has a larger id than its parent (it is made later). Deleted in one batch,
    the parent could go first and the database's cascade take its versions, and the ORM would
    then find their rows gone (a "0 rows matched" warning, an error on some drivers).
    """
    for probe in sorted(probes, key=lambda p: p.id, reverse=True):
        session.delete(probe)
        session.flush()
