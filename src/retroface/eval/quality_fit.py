"""Fitting the probe quality model on real searches, and measuring what its verdict covers.

The data are the evaluation's own mated searches, clean and degraded (``identify --degrade``):
for each probe with a face and an enrolled mate, its quality features and whether the mate came
first. The model's chances are judged *out of fold*: the probes are split into folds by
identity (a person's probes never sit on both sides), each fold is predicted by a model fitted
on the others, and calibration and coverage are measured on those predictions. The verdict's
"poor" cut-off is chosen on the same out-of-fold chances: the lowest cut-off that covers 95% of
the degraded probes that missed, unless that flags more than 4% of the full-size probes that
hit (then the cut-off is lowered to that bound); both shares are then reported on the
out-of-fold chances, not assumed. The shipped model is refitted on all the data.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from retroface.core.errors import InvalidInputError
from retroface.vision.probe_quality import FEATURES, HitChanceModel, fit_logistic
from retroface.vision.types import ModelIdentity

#: "good" from this chance on (9 in 10 such probes find their mate first)
GOOD_FROM = 0.9


@dataclass
class QualitySamples:
    """One row per mated search with a face and an enrolled mate."""

    features: NDArray[np.float32]  # (n, len(FEATURES))
    hit: NDArray[np.bool_]  # mate at rank 1
    identity: list[str]
    face_width: NDArray[np.int64]  # 0 = undegraded, else the degraded face width

    def __len__(self) -> int:
        return int(self.hit.size)


def identity_folds(identity: Sequence[str], k: int) -> NDArray[np.int64]:
    """Fold of each row, by a hash of its identity (stable, identity-disjoint)."""
    return np.array(
        [int(hashlib.sha256(i.encode()).hexdigest()[:8], 16) % k for i in identity],
        dtype=np.int64,
    )


def out_of_fold(s: QualitySamples, k: int = 5, l2: float = 1.0) -> NDArray[np.float64]:
    """Each row's chance from a model fitted without its identity's fold."""
    folds = identity_folds(s.identity, k)
    chance = np.full(len(s), np.nan)
    for f in range(k):
        test = folds == f
        if not test.any() or test.all():
            continue
        mean, scale, coef, icpt = fit_logistic(s.features[~test], s.hit[~test], l2=l2)
        z = (s.features[test].astype(np.float64) - mean) / scale
        chance[test] = 1.0 / (1.0 + np.exp(-np.clip(icpt + z @ coef, -40, 40)))
    return chance


def choose_poor_cutoff(
    chance: NDArray[np.float64],
    s: QualitySamples,
    miss_coverage: float = 0.95,
    max_clean_hits_flagged: float = 0.04,
) -> float:
    """The lowest cut-off whose "poor" covers ``miss_coverage`` of the degraded probes that
    missed, lowered further if needed so it flags at most ``max_clean_hits_flagged`` of the
    full-size probes that hit. The lowest, not the highest: a "poor" verdict on a probe
    with a 98% chance would be true to the target and useless to the operator."""
    clean_hits = np.sort(chance[(s.face_width == 0) & s.hit])
    misses = np.sort(chance[(s.face_width > 0) & ~s.hit])
    if clean_hits.size == 0 or misses.size == 0:
        raise InvalidInputError("the cut-off needs full-size hits and degraded misses")
    # flag chance < cut-off: just above the chance of the miss that reaches the coverage
    covering = float(np.nextafter(misses[int(np.ceil(miss_coverage * misses.size)) - 1], 2.0))
    allowed = int(np.floor(max_clean_hits_flagged * clean_hits.size))
    # the (allowed+1)-th lowest chance of a clean hit must stay unflagged
    bound = float(clean_hits[min(allowed, clean_hits.size - 1)])
    return min(covering, bound)


def coverage(
    chance: NDArray[np.float64], s: QualitySamples, poor_below: float
) -> list[dict[str, Any]]:
    """Per face width (and all degraded widths together): misses flagged poor, hits flagged
    poor, and predicted against observed hit rate (calibration)."""
    rows = []
    groups: list[tuple[str, NDArray[np.bool_]]] = [
        ("undegraded" if w == 0 else f"{w} px", s.face_width == w)
        for w in sorted(set(s.face_width.tolist()), key=lambda w: (w != 0, -w))
    ]
    groups.append(("all degraded", s.face_width > 0))
    poor = chance < poor_below
    for name, sel in groups:
        miss, hit = sel & ~s.hit, sel & s.hit
        rows.append(
            {
                "probes": name,
                "searches": int(sel.sum()),
                "misses": int(miss.sum()),
                "misses_poor": int((miss & poor).sum()),
                "hits": int(hit.sum()),
                "hits_poor": int((hit & poor).sum()),
                "observed_rank1": float(s.hit[sel].mean()) if sel.any() else None,
                "mean_chance": float(chance[sel].mean()) if sel.any() else None,
            }
        )
    return rows


CALIBRATION_EDGES = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 0.97, 1.0001)


def calibration_bins(
    chance: NDArray[np.float64],
    hit: NDArray[np.bool_],
    edges: Sequence[float] = CALIBRATION_EDGES,
) -> list[dict[str, Any]]:
    """Predicted against observed hit rate in bins of predicted chance."""
    out = []
    for lo, hi in itertools.pairwise(edges):
        sel = (chance >= lo) & (chance < hi)
        if sel.any():
            out.append(
                {
                    "chance_from": lo,
                    "chance_to": min(hi, 1.0),
                    "searches": int(sel.sum()),
                    "mean_chance": float(chance[sel].mean()),
                    "observed": float(hit[sel].mean()),
                }
            )
    return out


def fit_model(
    s: QualitySamples,
    model: ModelIdentity,
    *,
    dataset: str,
    dataset_hash: str,
    notes: Sequence[str] = (),
    k: int = 5,
    l2: float = 1.0,
    miss_coverage: float = 0.95,
    max_clean_hits_flagged: float = 0.04,
) -> tuple[HitChanceModel, dict[str, Any]]:
    """The model to ship (fitted on everything) and the out-of-fold report that judges it."""
    if len(s) < 50 or s.hit.all() or not s.hit.any():
        raise InvalidInputError("the quality model needs at least 50 searches, hits and misses")
    oof = out_of_fold(s, k=k, l2=l2)
    poor_below = choose_poor_cutoff(oof, s, miss_coverage, max_clean_hits_flagged)
    mean, scale, coef, icpt = fit_logistic(s.features, s.hit, l2=l2)
    brier = float(np.mean((oof - s.hit) ** 2))
    report = {
        "folds": k,
        "fold_by": "identity (sha256 of the name, modulo k)",
        "l2": l2,
        "searches": len(s),
        "miss_coverage_target": miss_coverage,
        "max_clean_hits_flagged": max_clean_hits_flagged,
        "poor_below": poor_below,
        "good_from": GOOD_FROM,
        "brier_out_of_fold": brier,
        "coverage_out_of_fold": coverage(oof, s, poor_below),
        "calibration_out_of_fold": calibration_bins(oof, s.hit),
        "coefficients": dict(zip(FEATURES, (float(c) for c in coef), strict=True)),
    }
    hm = HitChanceModel(
        backend=model.backend,
        name=model.name.removesuffix("+flip"),
        version=model.version,
        features=FEATURES,
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coef=tuple(float(v) for v in coef),
        intercept=icpt,
        poor_below=poor_below,
        fair_below=max(GOOD_FROM, poor_below),
        fitted_on={
            "dataset": dataset,
            "dataset_hash": dataset_hash,
            "searches": len(s),
            "face_widths": sorted({int(w) for w in s.face_width.tolist()}),
            "label": "mate at rank 1",
            "brier_out_of_fold": round(brier, 4),
            "notes": list(notes),
        },
    )
    return hm, report
