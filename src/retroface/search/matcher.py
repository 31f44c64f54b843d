"""1:N matching of a probe embedding against the gallery, one row per subject.

A subject may have several reference images (one template each, per model). ``aggregate`` says
how such a subject is scored:

- ``fused`` (default): the cosine between the probe and the subject's **fused template**, the
  renormalised mean of *all* its unit templates under the model (not only those that reached the
  shortlist), read from the same index state as the search. Measured on LFW (docs/fairness.md,
  two reference images per subject, each aggregate at its own FPIR-1% threshold): rank-1 FNIR
  0.33% against 0.57% for ``max`` and 1.22% with one image (women 1.08% / 1.29% / 2.80%); at
  40 px 11.7% / 13.8% / 21.8%. A subject with one template scores exactly as under ``max``.
- ``max``: its best template's similarity.
- ``mean``: the mean similarity of its templates *in the shortlist* (the worst of the three).

Whatever the aggregate, the image reported for a candidate is its best-scoring image. The
candidate subjects are those with a template in the shortlist (``max(4 top_k, top_k + 50)``
templates); ``fused`` re-scores each of them. An index kind that cannot give its vectors back
(``ivf``: ``LoadedIndex.vectors``) falls back to ``max``, and ``search`` reports the
aggregate actually used, which the search record's audit event keeps.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np

from retroface.core.errors import RetrofaceError
from retroface.search.index_manager import IndexManager, LoadedIndex
from retroface.vision.types import FloatArray

Aggregate = Literal["max", "mean", "fused"]
AGGREGATES: tuple[Aggregate, ...] = ("fused", "max", "mean")
DEFAULT_AGGREGATE: Aggregate = "fused"

log = logging.getLogger(__name__)

#: (score, template, subject, image) of one shortlisted template
_Hit = tuple[float, int, int, int]


@dataclass(frozen=True)
class Match:
    rank: int
    subject_id: int
    similarity: float
    image_id: int
    template_id: int


@dataclass(frozen=True)
class MatchResult:
    """Candidates, best first; the gallery version searched; the aggregate that scored them
    (``fused`` asked of an index that cannot give vectors back is ``max`` here)."""

    matches: list[Match]
    version: int
    aggregate: Aggregate


class Matcher:
    def __init__(self, index: IndexManager) -> None:
        self.index = index

    def match(
        self,
        embedding: FloatArray,
        model_key: str,
        top_k: int = 20,
        threshold: float | None = None,
        aggregate: Aggregate = DEFAULT_AGGREGATE,
    ) -> tuple[list[Match], int]:
        """Candidates, best first, and the gallery version they were drawn from (exactly the
        version of the index state searched, even while another thread enrols or erases)."""
        result = self.search(embedding, model_key, top_k, threshold, aggregate)
        return result.matches, result.version

    def search(
        self,
        embedding: FloatArray,
        model_key: str,
        top_k: int = 20,
        threshold: float | None = None,
        aggregate: Aggregate = DEFAULT_AGGREGATE,
    ) -> MatchResult:
        """``match``, also saying which aggregate scored the candidates (module docstring)."""
        if aggregate not in AGGREGATES:
            raise ValueError(f"unknown aggregate {aggregate!r}: choose one of {AGGREGATES}")
        try:
            hits, version, fused = self._shortlist(embedding, model_key, top_k, aggregate)
        except RetrofaceError as exc:
            if exc.code == "index_unavailable":
                # A lost shard (search/sharded.py): this search fails, never returns a short
                # list; dropping the cached state makes the next one rebuild the index from the
                # database, on the nodes still there.
                self.index.invalidate()
            raise
        if aggregate == "fused" and fused is None:
            aggregate = "max"
        if hits is None:
            return MatchResult([], version, aggregate)
        best: dict[int, tuple[float, int, int]] = {}
        sums: dict[int, list[float]] = {}
        for score, tid, sid, image_id in hits:
            sums.setdefault(sid, []).append(score)
            if sid not in best or score > best[sid][0]:
                best[sid] = (score, image_id, tid)
        rows = []
        for sid, (score, image_id, tid) in best.items():
            if aggregate == "mean":
                sim = float(np.mean(sums[sid]))
            elif aggregate == "fused" and fused is not None:
                sim = fused.get(sid, float(score))
            else:
                sim = float(score)
            rows.append((sim, sid, image_id, tid))
        rows.sort(key=lambda r: -r[0])
        if threshold is not None:
            rows = [r for r in rows if r[0] >= threshold]
        return MatchResult(
            [
                Match(rank=i + 1, subject_id=sid, similarity=sim, image_id=img, template_id=tid)
                for i, (sim, sid, img, tid) in enumerate(rows[:top_k])
            ],
            version,
            aggregate,
        )

    def _shortlist(
        self, embedding: FloatArray, model_key: str, top_k: int, aggregate: Aggregate
    ) -> tuple[list[_Hit] | None, int, dict[int, float] | None]:
        """The nearest templates (None for an empty gallery), the version searched and, for
        ``fused``, each shortlisted subject's fused score (None when the index cannot give its
        vectors back)."""
        # Everything read from the index (ids, maps, vectors, version) comes from one state: the
        # shared lock holds updates back until the shortlist is resolved and scored.
        with self.index.reading(model_key) as loaded:
            version = loaded.version
            total = loaded.index.count()
            if total == 0:
                return None, version, None
            # enough templates that top_k distinct subjects survive grouping
            k = min(total, max(top_k * 4, top_k + 50))
            probe = np.asarray(embedding, dtype=np.float32)
            scores, ids = loaded.index.search(probe[None], k)
            hits = [
                (score, tid, loaded.subject_of[tid], loaded.image_of[tid])
                for score, tid in zip(scores[0].tolist(), ids[0].tolist(), strict=True)
                if tid >= 0
            ]
            fused = _fused_scores(loaded, probe, hits) if aggregate == "fused" else None
            return hits, version, fused


def _fused_scores(
    loaded: LoadedIndex, probe: FloatArray, hits: list[_Hit]
) -> dict[int, float] | None:
    """Cosine of ``probe`` to the fused template of every subject in ``hits`` (all of each
    subject's templates in ``loaded``); None when the index cannot give its vectors back.

    A subject with one template keeps the index's own score (its fused template is that
    template), so on a one-image-per-subject gallery ``fused`` equals ``max`` exactly.
    """
    subjects = {sid for _, _, sid, _ in hits}
    owned = loaded.templates_of(subjects)
    several = {sid: tids for sid, tids in owned.items() if len(tids) > 1}
    if not several:
        return {}
    wanted = [tid for tids in several.values() for tid in tids]
    vectors = loaded.vectors(wanted)
    if vectors is None:
        log.warning(
            "index kind %s cannot give its vectors back: fused search falls back to max",
            type(loaded.index).__name__,
        )
        return None
    v = np.asarray(vectors, dtype=np.float64)
    v /= np.linalg.norm(v, axis=1, keepdims=True)  # the mean of *unit* templates
    p = np.asarray(probe, dtype=np.float64).ravel()
    out: dict[int, float] = {}
    at = 0
    for sid, tids in several.items():
        mean = v[at : at + len(tids)].sum(axis=0)
        at += len(tids)
        out[sid] = float(p @ mean / np.linalg.norm(mean))
    return out
