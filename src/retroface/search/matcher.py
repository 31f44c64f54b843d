"""1:N matching of a probe embedding against the gallery, one row per subject."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from retroface.core.errors import RetrofaceError
from retroface.search.index_manager import IndexManager
from retroface.vision.types import FloatArray

Aggregate = Literal["max", "mean"]


@dataclass(frozen=True)
class Match:
    rank: int
    subject_id: int
    similarity: float
    image_id: int
    template_id: int


class Matcher:
    def __init__(self, index: IndexManager) -> None:
        self.index = index

    def match(
        self,
        embedding: FloatArray,
        model_key: str,
        top_k: int = 20,
        threshold: float | None = None,
        aggregate: Aggregate = "max",
    ) -> tuple[list[Match], int]:
        """Candidates, best first, and the gallery version they were drawn from (exactly the
        version of the index state searched, even while another thread enrols or erases).

        Subjects with several templates are ranked once: by their best template (``max``) or by
        the mean similarity of their templates (``mean``, from the shortlist).
        """
        try:
            hits, version = self._shortlist(embedding, model_key, top_k)
        except RetrofaceError as exc:
            if exc.code == "index_unavailable":
                # A lost shard (search/sharded.py): this search fails, never returns a short
                # list; dropping the cached state makes the next one rebuild the index from the
                # database, on the nodes still there.
                self.index.invalidate()
            raise
        if hits is None:
            return [], version
        best: dict[int, tuple[float, int, int]] = {}
        sums: dict[int, list[float]] = {}
        for score, tid, sid, image_id in hits:
            sums.setdefault(sid, []).append(score)
            if sid not in best or score > best[sid][0]:
                best[sid] = (score, image_id, tid)
        rows = []
        for sid, (score, image_id, tid) in best.items():
            sim = float(np.mean(sums[sid])) if aggregate == "mean" else float(score)
            rows.append((sim, sid, image_id, tid))
        rows.sort(key=lambda r: -r[0])
        if threshold is not None:
            rows = [r for r in rows if r[0] >= threshold]
        return [
            Match(rank=i + 1, subject_id=sid, similarity=sim, image_id=img, template_id=tid)
            for i, (sim, sid, img, tid) in enumerate(rows[:top_k])
        ], version

    def _shortlist(
        self, embedding: FloatArray, model_key: str, top_k: int
    ) -> tuple[list[tuple[float, int, int, int]] | None, int]:
        """(score, template, subject, image) of the nearest templates, and the version searched;
        None for an empty gallery."""
        # Everything read from the index (ids, maps, version) comes from one state: the shared
        # lock holds updates back until the shortlist is resolved to subjects and images.
        with self.index.reading(model_key) as loaded:
            version = loaded.version
            total = loaded.index.count()
            if total == 0:
                return None, version
            # enough templates that top_k distinct subjects survive grouping
            k = min(total, max(top_k * 4, top_k + 50))
            scores, ids = loaded.index.search(np.asarray(embedding, dtype=np.float32)[None], k)
            return [
                (score, tid, loaded.subject_of[tid], loaded.image_of[tid])
                for score, tid in zip(scores[0].tolist(), ids[0].tolist(), strict=True)
                if tid >= 0
            ], version
