"""Which version of a probe is which: the chain from an original to an enhanced version.

An enhanced probe is a probe row of its own whose ``parent_id`` names the version it was derived
from and whose ``derivation`` records the steps and hashes (:mod:`retroface.search.enhance`). A
search of such a version stores the whole chain (:func:`lineage_of`) with its record, so the
disclosure export can show "original hash -> steps -> searched hash" even after retention has
deleted the probes themselves.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from retroface.search.views import ProbeDerivation, ProbeLineage
from retroface.storage.tables import Probe

#: A chain longer than this is refused when enhancing (and never walked further): an examiner
#: needs a handful of versions, and a cycle, were one ever written, must not loop forever.
MAX_DEPTH = 20


def chain_of(s: Session, probe: Probe) -> list[Probe]:
    """``probe`` and its ancestors, original first."""
    chain = [probe]
    while chain[-1].parent_id is not None and len(chain) <= MAX_DEPTH:
        parent = s.get(Probe, chain[-1].parent_id)
        if parent is None:  # cannot happen with the cascade; stop rather than guess
            break
        chain.append(parent)
    return chain[::-1]


def lineage_of(s: Session, probe: Probe) -> ProbeLineage | None:
    """The chain from the original to ``probe``; None when ``probe`` is an original."""
    if probe.parent_id is None:
        return None
    chain = chain_of(s, probe)
    original = chain[0]
    return ProbeLineage(
        original_probe_id=original.id,
        original_sha256=original.content_hash,
        derivations=[
            ProbeDerivation(probe_id=p.id, parent_id=p.parent_id, **(p.derivation or {}))
            for p in chain[1:]
            if p.parent_id is not None
        ],
    )


def lineage_json(s: Session, probe: Probe) -> dict[str, Any] | None:
    """:func:`lineage_of` as stored with a search record."""
    lineage = lineage_of(s, probe)
    return lineage.model_dump(mode="json") if lineage is not None else None


def lineage_from_json(data: dict[str, Any] | None) -> ProbeLineage | None:
    return ProbeLineage.model_validate(data) if data else None
