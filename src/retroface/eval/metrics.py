"""Accuracy metrics for face identification (1:N) and verification (1:1).

Conventions follow ISO/IEC 19795-1 and the NIST FRTE 1:N reports, so that figures produced here
can be read next to published ones:

* Scores are similarities: higher means more alike. A candidate is *returned* at threshold ``t``
  when its score is ``>= t``.
* A **mated** search has its true mate enrolled. It is described by the mate's 1-based rank in
  the candidate list and the mate's score. Rank ``0``, ``-1``, ``None`` or NaN means the mate was
  not in the list (including failure to detect a face in the probe, or failure to enrol the mate).
  Such searches stay in every denominator: a system that fails to process a search has missed.
* A **non-mated** search has no mate enrolled; it is described by its top-1 candidate score.
  NaN or ``-inf`` means no candidate was returned (for example no face was detected).
* ``FPIR(t)`` is the share of non-mated searches that return *any* candidate at or above ``t``
  (equivalently, whose top-1 score is ``>= t``). ``FNIR(t, R)`` is the share of mated searches
  whose mate is not returned at rank ``<= R`` with score ``>= t``; NIST quotes "FNIR at FPIR"
  with ``R = 1``.
* Verification uses the same rule: ``FAR(t)`` is the share of impostor scores ``>= t`` and
  ``TAR(t)`` the share of genuine scores ``>= t``. Missing (NaN) comparison scores count as
  rejections in both populations.

Intervals are percentile bootstrap intervals. For identification the mated and non-mated
searches are resampled independently, because they are independent samples and the threshold
is itself estimated from the non-mated sample.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray: TypeAlias = NDArray[np.float64]
IntArray: TypeAlias = NDArray[np.int64]
#: Ranks may come straight from Python lists with ``None`` for "not in the candidate list".
RankLike: TypeAlias = ArrayLike | Sequence[float | None]

DEFAULT_FPIRS: tuple[float, ...] = (0.1, 0.01, 0.001)
DEFAULT_FARS: tuple[float, ...] = (0.1, 0.01, 0.001)
REPORTED_RANKS: tuple[int, ...] = (1, 5, 20)
#: Rule of three: with ``n`` trials and no errors the 95% upper bound on the error rate is
#: about ``3 / n``, so a rate ``p`` cannot be demonstrated with fewer than ``3 / p`` trials.
RULE_OF_THREE = 3.0


# --------------------------------------------------------------------------------------------
# Input normalisation and small helpers
# --------------------------------------------------------------------------------------------


def _scores(values: ArrayLike) -> FloatArray:
    """Flatten to float64; ``None`` becomes NaN. float64 keeps threshold comparisons exact."""
    return np.asarray(values, dtype=np.float64).ravel()


def _ranks(values: RankLike) -> IntArray:
    """1-based ranks with every "not in the list" spelling mapped to 0."""
    arr = np.asarray(values)
    if arr.dtype == object:
        as_float = np.array(
            [math.nan if r is None else float(r) for r in arr.ravel()], dtype=np.float64
        )
    else:
        as_float = arr.astype(np.float64).ravel()
    ok = np.isfinite(as_float) & (as_float >= 1)
    if np.any(as_float[ok] != np.round(as_float[ok])):
        raise ValueError("ranks must be integers (1-based), or 0/-1/None for a miss")
    return np.where(ok, as_float, 0.0).astype(np.int64)


def _mated(ranks: RankLike, scores: ArrayLike) -> tuple[IntArray, FloatArray]:
    r = _ranks(ranks)
    s = _scores(scores)
    if r.shape != s.shape:
        raise ValueError(f"{r.size} mate ranks but {s.size} mate scores")
    return r, s


def _check_rate(rate: float, name: str = "rate") -> None:
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {rate}")


def _check_max_rank(max_rank: int) -> None:
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")


def rate_key(rate: float) -> str:
    """Dictionary key for an operating point: ``0.001 -> "0.001"`` (stable for JSON and docs)."""
    return f"{rate:g}"


def samples_needed(rate: float) -> int:
    """Searches needed before an error rate ``rate`` can be quoted (rule of three: ``3 / rate``)."""
    if rate <= 0:
        raise ValueError("rate must be > 0")
    return math.ceil(RULE_OF_THREE / rate - 1e-9)


def _share_at_or_above(scores: FloatArray, threshold: float) -> float:
    """Share of *all* entries ``>= threshold``; NaN entries never qualify but stay counted."""
    if scores.size == 0:
        return math.nan
    with np.errstate(invalid="ignore"):
        return float(np.count_nonzero(scores >= threshold) / scores.size)


def _hits(ranks: IntArray, scores: FloatArray, threshold: float, max_rank: int) -> NDArray[Any]:
    with np.errstate(invalid="ignore"):
        return (ranks >= 1) & (ranks <= max_rank) & (scores >= threshold)


def _threshold_for_rate(scores: FloatArray, target: float) -> float:
    """Smallest threshold (up to one ulp) whose empirical exceedance rate is ``<= target``.

    Exceedance only changes at observed scores, so the answer is one ulp above the
    ``(k+1)``-th largest finite score, ``k = floor(target * n)`` being the number of
    exceedances allowed. Stepping one ulp above (rather than picking a value halfway to the
    next score) excludes every score tied with it, so ties are handled exactly. If all finite
    scores may exceed, the smallest finite score is returned; with none, ``-inf``.
    """
    finite = scores[np.isfinite(scores)]
    allowed = math.floor(target * scores.size + 1e-9)
    if allowed >= finite.size:
        return float(finite.min()) if finite.size else -math.inf
    pos = finite.size - 1 - allowed
    kth = np.partition(finite, pos)[pos]
    return float(np.nextafter(kth, np.inf))


def _clean(value: float | None) -> float | None:
    """JSON-safe float: NaN and infinities become ``None``."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _clean_ci(ci: tuple[float, float]) -> list[float | None]:
    return [_clean(ci[0]), _clean(ci[1])]


# --------------------------------------------------------------------------------------------
# Bootstrap
# --------------------------------------------------------------------------------------------


def _bootstrap_replicates(
    statistic: Callable[..., Any], samples: Sequence[ArrayLike], n_boot: int, seed: int
) -> FloatArray:
    """``(n_boot, k)`` matrix of the (vector) statistic over independent resamples."""
    if n_boot < 1:
        raise ValueError("n_boot must be >= 1")
    arrays = [np.asarray(s) for s in samples]
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_boot):
        resampled = [a[rng.integers(0, len(a), size=len(a))] if len(a) else a for a in arrays]
        rows.append(np.atleast_1d(np.asarray(statistic(*resampled), dtype=np.float64)))
    return np.vstack(rows)


def _percentile_intervals(replicates: FloatArray, confidence: float) -> list[tuple[float, float]]:
    alpha = 1.0 - confidence
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns -> NaN interval
        lo, hi = np.nanpercentile(replicates, [100 * alpha / 2, 100 * (1 - alpha / 2)], axis=0)
    return [(float(a), float(b)) for a, b in zip(lo, hi, strict=True)]


def bootstrap_ci(
    statistic_fn: Callable[..., float],
    *samples: ArrayLike,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval ``(lo, hi)`` of ``statistic_fn(*samples)``.

    Each sample is resampled with replacement *independently* along its first axis, which is
    what independent populations (mated vs non-mated searches, genuine vs impostor pairs) need.
    Values that must stay together (a mate's rank and score) go in one 2-D sample as columns.
    Replicates where the statistic is NaN are ignored. A fixed ``seed`` makes reports
    reproducible.
    """
    _check_rate(confidence, "confidence")
    reps = _bootstrap_replicates(statistic_fn, samples, n_boot, seed)
    return _percentile_intervals(reps[:, :1], confidence)[0]


# --------------------------------------------------------------------------------------------
# 1:N identification
# --------------------------------------------------------------------------------------------


def cmc(ranks: RankLike, max_rank: int) -> FloatArray:
    """Cumulative match characteristic: element ``k-1`` is the share of mated searches whose
    mate is at rank ``<= k`` (no threshold). Misses and failures count in the denominator."""
    _check_max_rank(max_rank)
    r = _ranks(ranks)
    if r.size == 0:
        return np.full(max_rank, math.nan)
    counts = np.bincount(r[(r >= 1) & (r <= max_rank)], minlength=max_rank + 1)[1:]
    return np.asarray(np.cumsum(counts) / r.size, dtype=np.float64)


def fpir_threshold(nonmated_top_scores: ArrayLike, target_fpir: float) -> float:
    """Threshold ``t`` with ``FPIR(t) <= target_fpir``, as low as the data allow.

    ``FPIR(t)`` is the share of non-mated searches whose top-1 score is ``>= t``; searches
    without candidates (NaN/-inf) count in the denominator but never exceed. The result is one
    ulp above the ``(k+1)``-th highest non-mated score with ``k = floor(target * n)``, i.e. the
    smallest "observed score + epsilon" that meets the target; scores tied at that value are all
    excluded. If every non-mated score may be returned, the lowest one is returned.
    """
    _check_rate(target_fpir, "target_fpir")
    scores = _scores(nonmated_top_scores)
    if scores.size == 0:
        raise ValueError("no non-mated searches")
    return _threshold_for_rate(scores, target_fpir)


def fpir_at_threshold(nonmated_top_scores: ArrayLike, threshold: float) -> float:
    """Share of non-mated searches returning a candidate with score ``>= threshold``."""
    return _share_at_or_above(_scores(nonmated_top_scores), threshold)


def fnir_at_threshold(
    mate_ranks: RankLike, mate_scores: ArrayLike, threshold: float, max_rank: int = 1
) -> float:
    """Share of mated searches whose mate is not returned at rank ``<= max_rank`` with score
    ``>= threshold``. ``max_rank=1`` is the NIST "FNIR at FPIR" convention."""
    _check_max_rank(max_rank)
    r, s = _mated(mate_ranks, mate_scores)
    if r.size == 0:
        return math.nan
    return 1.0 - float(np.count_nonzero(_hits(r, s, threshold, max_rank)) / r.size)


def fnir_at_fpir(
    mate_ranks: RankLike,
    mate_scores: ArrayLike,
    nonmated_top_scores: ArrayLike,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    max_rank: int = 1,
) -> dict[str, dict[str, float]]:
    """FNIR at the threshold that achieves each target FPIR.

    Returns ``{"0.01": {"threshold": t, "fnir": ..., "fpir_achieved": ...}, ...}``; the achieved
    FPIR can be below the target because the empirical FPIR moves in steps of ``1/n``.
    """
    _check_max_rank(max_rank)
    r, s = _mated(mate_ranks, mate_scores)
    nm = _scores(nonmated_top_scores)
    if nm.size == 0:
        raise ValueError("no non-mated searches")
    out: dict[str, dict[str, float]] = {}
    for target in fpirs:
        _check_rate(target, "fpir")
        t = _threshold_for_rate(nm, target)
        fnir = (
            1.0 - float(np.count_nonzero(_hits(r, s, t, max_rank)) / r.size) if r.size else math.nan
        )
        out[rate_key(target)] = {
            "threshold": t,
            "fnir": fnir,
            "fpir_achieved": _share_at_or_above(nm, t),
        }
    return out


def _thin(rate: FloatArray, max_points: int | None) -> IntArray:
    """Indices that keep a curve's shape on log axes with at most ~``max_points`` points.

    ``rate`` must be non-decreasing. Targets are log-spaced (the low-error region that matters
    on log axes) plus linearly spaced; for each, the last point with ``rate <= target`` is kept,
    i.e. the best other-error-rate at that rate. Endpoints are always kept.
    """
    n = rate.size
    if max_points is None or n <= max_points:
        return np.arange(n, dtype=np.int64)
    half = max(max_points // 2, 2)
    top = float(rate[-1])
    positive = rate[rate > 0]
    low = float(positive.min()) if positive.size else top
    targets = np.linspace(0.0, top, half)
    if low > 0:
        targets = np.concatenate([targets, np.geomspace(low, top, half)])
    idx = np.clip(np.searchsorted(rate, targets, "right") - 1, 0, n - 1)
    return np.unique(np.concatenate([idx, np.array([0, n - 1])])).astype(np.int64)


def det_curve(
    mate_ranks: RankLike,
    mate_scores: ArrayLike,
    nonmated_top_scores: ArrayLike,
    max_rank: int = 1,
    max_points: int | None = None,
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """DET points ``(fpir, fnir, thresholds)`` with thresholds ascending.

    Thresholds are the distinct finite non-mated scores and the finite scores of mates found
    at rank ``<= max_rank`` (the only values where either rate changes). ``max_points`` thins
    the curve to points log-spaced in FPIR, keeping the lowest FNIR at each.
    """
    _check_max_rank(max_rank)
    r, s = _mated(mate_ranks, mate_scores)
    nm = _scores(nonmated_top_scores)
    if r.size == 0 or nm.size == 0:
        raise ValueError("a DET curve needs both mated and non-mated searches")
    eligible = np.sort(s[(r >= 1) & (r <= max_rank) & np.isfinite(s)])
    nm_finite = np.sort(nm[np.isfinite(nm)])
    thresholds = np.unique(np.concatenate([nm_finite, eligible]))
    fpir = (nm_finite.size - np.searchsorted(nm_finite, thresholds, "left")) / nm.size
    fnir = 1.0 - (eligible.size - np.searchsorted(eligible, thresholds, "left")) / r.size
    keep = thresholds.size - 1 - _thin(fpir[::-1], max_points)[::-1]
    return (
        fpir[keep].astype(np.float64),
        fnir[keep].astype(np.float64),
        thresholds[keep].astype(np.float64),
    )


def _histogram(
    a: FloatArray, b: FloatArray, bins: int, labels: tuple[str, str]
) -> dict[str, Any] | None:
    """Shared-edge histogram of two score populations, small enough to keep in a result."""
    fa, fb = a[np.isfinite(a)], b[np.isfinite(b)]
    both = np.concatenate([fa, fb])
    if both.size == 0:
        return None
    edges = np.histogram_bin_edges(both, bins=bins)
    return {
        "edges": [float(e) for e in edges],
        labels[0]: [int(c) for c in np.histogram(fa, bins=edges)[0]],
        labels[1]: [int(c) for c in np.histogram(fb, bins=edges)[0]],
    }


@dataclass(frozen=True)
class FnirPoint:
    """FNIR at one target FPIR, with its interval and a sample-size verdict."""

    target_fpir: float
    threshold: float
    fnir: float
    fpir_achieved: float
    ci: tuple[float, float]
    nonmated_needed: int
    insufficient_samples: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": _clean(self.threshold),
            "fnir": _clean(self.fnir),
            "fpir_achieved": _clean(self.fpir_achieved),
            "ci": _clean_ci(self.ci),
            "insufficient_samples": self.insufficient_samples,
            "nonmated_needed": self.nonmated_needed,
        }


@dataclass(frozen=True)
class IdentificationResult:
    """Open-set 1:N accuracy summary; ``to_dict()`` is JSON-safe (NaN/inf become ``None``)."""

    n_mated: int
    n_nonmated: int
    failure_to_detect: int
    failure_to_enrol: int
    cmc: tuple[float, ...]
    rank1: float | None
    rank5: float | None
    rank20: float | None
    intervals: dict[str, tuple[float, float]]
    fnir_at_fpir: dict[str, FnirPoint]
    max_rank: int
    det: dict[str, list[float]]
    score_histogram: dict[str, Any] | None = None
    gallery_size: int | None = None
    confidence: float = 0.95
    n_boot: int = 1000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_mated": self.n_mated,
            "n_nonmated": self.n_nonmated,
            "gallery_size": self.gallery_size,
            "failure_to_detect": self.failure_to_detect,
            "failure_to_enrol": self.failure_to_enrol,
            "rank1": _clean(self.rank1),
            "rank5": _clean(self.rank5),
            "rank20": _clean(self.rank20),
            "cmc": [_clean(v) for v in self.cmc],
            "intervals": {k: _clean_ci(v) for k, v in self.intervals.items()},
            "fnir_max_rank": self.max_rank,
            "fnir_at_fpir": {k: v.to_dict() for k, v in self.fnir_at_fpir.items()},
            "det": {k: [_clean(x) for x in v] for k, v in self.det.items()},
            "score_histogram": self.score_histogram,
            "confidence": self.confidence,
            "n_boot": self.n_boot,
            "seed": self.seed,
        }


def _mask(values: ArrayLike | None, n: int, name: str) -> NDArray[np.bool_]:
    if values is None:
        return np.zeros(n, dtype=bool)
    m = np.asarray(values, dtype=bool).ravel()
    if m.size != n:
        raise ValueError(f"{name} has {m.size} entries, expected {n}")
    return m


def evaluate_identification(
    mate_ranks: RankLike,
    mate_scores: ArrayLike,
    nonmated_top_scores: ArrayLike,
    *,
    fpirs: Sequence[float] = DEFAULT_FPIRS,
    max_rank: int = 1,
    cmc_max_rank: int = 20,
    candidate_list_length: int | None = None,
    mated_failure_to_detect: ArrayLike | None = None,
    mated_failure_to_enrol: ArrayLike | None = None,
    nonmated_failure_to_detect: ArrayLike | None = None,
    gallery_size: int | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    det_points: int | None = 200,
    histogram_bins: int = 50,
) -> IdentificationResult:
    """Full open-set identification summary with bootstrap intervals.

    Failure masks (one boolean per search) are counted separately *and* scored as misses /
    empty candidate lists, so FNIR and rank-k rates are "all searches" figures. Rank-k rates
    beyond ``candidate_list_length`` are ``None`` rather than silently equal to the last rank.
    An FNIR-at-FPIR point is flagged ``insufficient_samples`` when there are fewer than
    ``3 / FPIR`` non-mated searches (rule of three).
    """
    _check_max_rank(max_rank)
    _check_max_rank(cmc_max_rank)
    _check_rate(confidence, "confidence")
    ranks, scores = _mated(mate_ranks, mate_scores)
    nm = _scores(nonmated_top_scores).copy()
    if ranks.size == 0 or nm.size == 0:
        raise ValueError("identification needs both mated and non-mated searches")
    ftd_m = _mask(mated_failure_to_detect, ranks.size, "mated_failure_to_detect")
    fte_m = _mask(mated_failure_to_enrol, ranks.size, "mated_failure_to_enrol")
    ftd_nm = _mask(nonmated_failure_to_detect, nm.size, "nonmated_failure_to_detect")
    failed = ftd_m | fte_m
    ranks = np.where(failed, 0, ranks)
    scores = np.where(failed, math.nan, scores)
    nm[ftd_nm] = math.nan

    list_len = cmc_max_rank if candidate_list_length is None else candidate_list_length
    cmc_len = min(cmc_max_rank, list_len)
    reported = [k for k in REPORTED_RANKS if k <= cmc_len]
    targets = list(fpirs)
    for target in targets:
        _check_rate(target, "fpir")

    def statistic(mated: FloatArray, nonmated: FloatArray) -> FloatArray:
        r = mated[:, 0].astype(np.int64)
        s = mated[:, 1]
        curve = cmc(r, cmc_len)
        values = [curve[k - 1] for k in reported]
        for target in targets:
            t = _threshold_for_rate(nonmated, target)
            values.append(1.0 - np.count_nonzero(_hits(r, s, t, max_rank)) / r.size)
        return np.asarray(values, dtype=np.float64)

    mated = np.column_stack([ranks.astype(np.float64), scores])
    cis = _percentile_intervals(
        _bootstrap_replicates(statistic, [mated, nm], n_boot, seed), confidence
    )
    curve = cmc(ranks, cmc_len)
    rank_values = {k: float(curve[k - 1]) for k in reported}
    intervals = {f"rank{k}": cis[i] for i, k in enumerate(reported)}

    points: dict[str, FnirPoint] = {}
    base = fnir_at_fpir(ranks, scores, nm, targets, max_rank)
    for i, target in enumerate(targets):
        entry = base[rate_key(target)]
        # FPIR 0 can never be demonstrated from a finite sample: always flagged.
        needed = samples_needed(target) if target > 0 else nm.size + 1
        points[rate_key(target)] = FnirPoint(
            target_fpir=target,
            threshold=entry["threshold"],
            fnir=entry["fnir"],
            fpir_achieved=entry["fpir_achieved"],
            ci=cis[len(reported) + i],
            nonmated_needed=needed,
            insufficient_samples=nm.size < needed,
        )

    fp, fn, th = det_curve(ranks, scores, nm, max_rank=max_rank, max_points=det_points)
    found = scores[(ranks >= 1) & (ranks <= list_len)]
    return IdentificationResult(
        n_mated=int(ranks.size),
        n_nonmated=int(nm.size),
        failure_to_detect=int(np.count_nonzero(ftd_m) + np.count_nonzero(ftd_nm)),
        failure_to_enrol=int(np.count_nonzero(fte_m)),
        cmc=tuple(float(v) for v in curve),
        rank1=rank_values.get(1),
        rank5=rank_values.get(5),
        rank20=rank_values.get(20),
        intervals=intervals,
        fnir_at_fpir=points,
        max_rank=max_rank,
        det={"fpir": fp.tolist(), "fnir": fn.tolist(), "threshold": th.tolist()},
        score_histogram=_histogram(found, nm, histogram_bins, ("mated", "nonmated")),
        gallery_size=gallery_size,
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# 1:1 verification
# --------------------------------------------------------------------------------------------


def _pair_scores(genuine: ArrayLike, impostor: ArrayLike) -> tuple[FloatArray, FloatArray]:
    g, i = _scores(genuine), _scores(impostor)
    if g.size == 0 or i.size == 0:
        raise ValueError("need both genuine and impostor scores")
    return g, i


def _exceedance(sorted_finite: FloatArray, n_total: int, thresholds: FloatArray) -> FloatArray:
    """Share of a population (finite part given sorted) with score ``>= each threshold``."""
    above = sorted_finite.size - np.searchsorted(sorted_finite, thresholds, "left")
    return np.asarray(above / n_total, dtype=np.float64)


def roc(genuine: ArrayLike, impostor: ArrayLike) -> tuple[FloatArray, FloatArray, FloatArray]:
    """ROC points ``(far, tar, thresholds)`` with thresholds descending from ``+inf``.

    The first point (``t = +inf``) is ``(0, 0)``; each further threshold is a distinct finite
    score, so FAR and TAR are non-decreasing along the arrays.
    """
    g, i = _pair_scores(genuine, impostor)
    gs, is_ = np.sort(g[np.isfinite(g)]), np.sort(i[np.isfinite(i)])
    thresholds = np.concatenate([[np.inf], np.unique(np.concatenate([gs, is_]))[::-1]])
    return _exceedance(is_, i.size, thresholds), _exceedance(gs, g.size, thresholds), thresholds


def tar_at_far(genuine: ArrayLike, impostor: ArrayLike, far: float) -> dict[str, float]:
    """TAR at the threshold from :func:`fpir_threshold` applied to impostor scores.

    Returns ``{"threshold", "tar", "far_achieved"}``; same tie and step rules as FPIR.
    """
    _check_rate(far, "far")
    g, i = _pair_scores(genuine, impostor)
    t = _threshold_for_rate(i, far)
    return {
        "threshold": t,
        "tar": _share_at_or_above(g, t),
        "far_achieved": _share_at_or_above(i, t),
    }


def eer(genuine: ArrayLike, impostor: ArrayLike) -> float:
    """Equal error rate, linearly interpolated between adjacent operating points.

    ``FRR(t) - FAR(t)`` is non-decreasing in ``t``; between the last threshold where it is
    negative and the first where it is ``>= 0`` the crossing of the straight ROC segment with
    ``FAR = FRR`` is returned. Separable populations give exactly 0.
    """
    g, i = _pair_scores(genuine, impostor)
    gs, is_ = np.sort(g[np.isfinite(g)]), np.sort(i[np.isfinite(i)])
    thresholds = np.concatenate([[-np.inf], np.unique(np.concatenate([gs, is_])), [np.inf]])
    far = _exceedance(is_, i.size, thresholds)
    frr = 1.0 - _exceedance(gs, g.size, thresholds)
    diff = frr - far
    j = int(np.argmax(diff >= 0))  # exists: at +inf FAR is 0
    if diff[j] == 0 or j == 0:
        return float((far[j] + frr[j]) / 2)
    lam = -diff[j - 1] / (diff[j] - diff[j - 1])
    return float(far[j - 1] + lam * (far[j] - far[j - 1]))


@dataclass(frozen=True)
class KFoldResult:
    """Cross-validated verification accuracy (LFW "unrestricted" protocol style)."""

    mean: float
    std: float
    std_err: float
    thresholds: tuple[float, ...]
    fold_accuracies: tuple[float, ...]

    @property
    def n_folds(self) -> int:
        return len(self.fold_accuracies)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean": _clean(self.mean),
            "std": _clean(self.std),
            "std_err": _clean(self.std_err),
            "n_folds": self.n_folds,
            "thresholds": [_clean(t) for t in self.thresholds],
            "fold_accuracies": [_clean(a) for a in self.fold_accuracies],
        }


def _best_threshold(scores: FloatArray, labels: NDArray[np.bool_]) -> float:
    """Accuracy-maximising threshold on training pairs.

    Candidates split the sorted distinct scores; the threshold is placed midway between the
    last rejected and the first accepted score (it generalises better than sitting on a
    training score). Ties go to the *highest* threshold: for equal training accuracy the
    stricter setting makes fewer false matches. NaN scores are always "different".
    """
    finite = np.isfinite(scores)
    uniq = np.unique(scores[finite])
    if uniq.size == 0:
        return math.inf
    pos = np.sort(scores[finite & labels])
    neg = np.sort(scores[finite & ~labels])
    accepted_pos = np.concatenate([pos.size - np.searchsorted(pos, uniq, "left"), [0]])
    rejected_neg = np.concatenate([np.searchsorted(neg, uniq, "left"), [neg.size]])
    correct = accepted_pos + rejected_neg
    j = correct.size - 1 - int(np.argmax(correct[::-1]))
    if j == 0:
        return float(uniq[0])
    if j == uniq.size:
        return float(np.nextafter(uniq[-1], np.inf))
    mid = float((uniq[j - 1] + uniq[j]) / 2)
    return mid if mid > uniq[j - 1] else float(uniq[j])


def kfold_accuracy(
    scores: ArrayLike, labels: ArrayLike, folds: int | ArrayLike = 10
) -> KFoldResult:
    """k-fold verification accuracy: the threshold is chosen on the other folds, then scored
    on the held-out fold, so the reported accuracy never sees its own threshold.

    ``folds`` is either a number of contiguous, equal blocks (the LFW ``pairs.txt`` layout:
    10 consecutive sets of 300 matched + 300 mismatched pairs) or a fold id per pair.
    ``std`` is the sample standard deviation (``ddof=1``) over folds and ``std_err`` is
    ``std / sqrt(k)``, the figure the LFW protocol asks to be reported alongside the mean.
    """
    s = _scores(scores)
    y = np.asarray(labels).ravel().astype(bool)
    if s.size != y.size:
        raise ValueError(f"{s.size} scores but {y.size} labels")
    if isinstance(folds, int | np.integer):
        if not 2 <= folds <= s.size:
            raise ValueError("need 2 <= folds <= number of pairs")
        ids = np.empty(s.size, dtype=np.int64)
        for k, chunk in enumerate(np.array_split(np.arange(s.size), int(folds))):
            ids[chunk] = k
    else:
        ids = np.asarray(folds).ravel()
        if ids.size != s.size:
            raise ValueError(f"{ids.size} fold ids but {s.size} pairs")
    fold_ids = np.unique(ids)
    if fold_ids.size < 2:
        raise ValueError("need at least two folds")
    thresholds, accuracies = [], []
    for f in fold_ids:
        test = ids == f
        t = _best_threshold(s[~test], y[~test])
        with np.errstate(invalid="ignore"):
            predicted = s[test] >= t
        thresholds.append(t)
        accuracies.append(float(np.mean(predicted == y[test])))
    acc = np.asarray(accuracies)
    std = float(np.std(acc, ddof=1))
    return KFoldResult(
        mean=float(acc.mean()),
        std=std,
        std_err=std / math.sqrt(acc.size),
        thresholds=tuple(thresholds),
        fold_accuracies=tuple(accuracies),
    )


@dataclass(frozen=True)
class TarPoint:
    """TAR at one target FAR, with its interval and a sample-size verdict."""

    target_far: float
    threshold: float
    tar: float
    far_achieved: float
    ci: tuple[float, float]
    impostor_needed: int
    insufficient_samples: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "threshold": _clean(self.threshold),
            "tar": _clean(self.tar),
            "far_achieved": _clean(self.far_achieved),
            "ci": _clean_ci(self.ci),
            "insufficient_samples": self.insufficient_samples,
            "impostor_needed": self.impostor_needed,
        }


@dataclass(frozen=True)
class VerificationResult:
    """1:1 accuracy summary; ``to_dict()`` is JSON-safe."""

    n_genuine: int
    n_impostor: int
    failed_comparisons: int
    eer: float
    eer_ci: tuple[float, float]
    tar_at_far: dict[str, TarPoint]
    roc: dict[str, list[float]]
    score_histogram: dict[str, Any] | None = None
    kfold: KFoldResult | None = None
    confidence: float = 0.95
    n_boot: int = 1000
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_genuine": self.n_genuine,
            "n_impostor": self.n_impostor,
            "failed_comparisons": self.failed_comparisons,
            "eer": _clean(self.eer),
            "eer_ci": _clean_ci(self.eer_ci),
            "tar_at_far": {k: v.to_dict() for k, v in self.tar_at_far.items()},
            "roc": {k: [_clean(x) for x in v] for k, v in self.roc.items()},
            "score_histogram": self.score_histogram,
            "kfold": self.kfold.to_dict() if self.kfold else None,
            "confidence": self.confidence,
            "n_boot": self.n_boot,
            "seed": self.seed,
        }


def evaluate_verification(
    genuine: ArrayLike,
    impostor: ArrayLike,
    *,
    fars: Sequence[float] = DEFAULT_FARS,
    kfold: KFoldResult | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    roc_points: int | None = 200,
    histogram_bins: int = 50,
) -> VerificationResult:
    """EER and TAR-at-FAR with bootstrap intervals (genuine and impostor pairs resampled
    independently, thresholds re-derived per replicate). Pass a :func:`kfold_accuracy`
    result to carry it in the report; it needs the pair order, which scores alone lose."""
    _check_rate(confidence, "confidence")
    g, i = _pair_scores(genuine, impostor)
    targets = list(fars)
    for target in targets:
        _check_rate(target, "far")

    def statistic(gs: FloatArray, is_: FloatArray) -> FloatArray:
        values = [eer(gs, is_)]
        for target in targets:
            values.append(_share_at_or_above(gs, _threshold_for_rate(is_, target)))
        return np.asarray(values, dtype=np.float64)

    cis = _percentile_intervals(_bootstrap_replicates(statistic, [g, i], n_boot, seed), confidence)
    points: dict[str, TarPoint] = {}
    for j, target in enumerate(targets):
        base = tar_at_far(g, i, target)
        needed = samples_needed(target) if target > 0 else i.size + 1
        points[rate_key(target)] = TarPoint(
            target_far=target,
            threshold=base["threshold"],
            tar=base["tar"],
            far_achieved=base["far_achieved"],
            ci=cis[j + 1],
            impostor_needed=needed,
            insufficient_samples=i.size < needed,
        )
    far, tar, th = roc(g, i)
    keep = _thin(far, roc_points)
    return VerificationResult(
        n_genuine=int(g.size),
        n_impostor=int(i.size),
        failed_comparisons=int(np.count_nonzero(np.isnan(g)) + np.count_nonzero(np.isnan(i))),
        eer=eer(g, i),
        eer_ci=cis[0],
        tar_at_far=points,
        roc={"far": far[keep].tolist(), "tar": tar[keep].tolist(), "threshold": th[keep].tolist()},
        score_histogram=_histogram(g, i, histogram_bins, ("genuine", "impostor")),
        kfold=kfold,
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )


# --------------------------------------------------------------------------------------------
# Demographic differentials
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GroupMetrics:
    """FNIR and FPIR of one demographic group at the shared operating threshold."""

    group: str
    n_mated: int
    n_nonmated: int
    fnir: float
    fnir_ci: tuple[float, float]
    fpir: float
    fpir_ci: tuple[float, float]
    fnir_insufficient: bool
    fpir_insufficient: bool

    @property
    def insufficient_samples(self) -> bool:
        return self.fnir_insufficient or self.fpir_insufficient

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group,
            "n_mated": self.n_mated,
            "n_nonmated": self.n_nonmated,
            "fnir": _clean(self.fnir),
            "fnir_ci": _clean_ci(self.fnir_ci),
            "fpir": _clean(self.fpir),
            "fpir_ci": _clean_ci(self.fpir_ci),
            "fnir_insufficient": self.fnir_insufficient,
            "fpir_insufficient": self.fpir_insufficient,
            "insufficient_samples": self.insufficient_samples,
        }


@dataclass(frozen=True)
class DemographicResult:
    """Per-group rates at one global threshold plus highest/lowest ratios.

    Ratios only use groups with enough searches for that rate, are ``None`` when fewer than two
    groups qualify or the lowest rate is 0, and are point estimates (compare the per-group
    intervals before reading much into them).
    """

    threshold: float
    max_rank: int
    min_searches: int
    groups: dict[str, GroupMetrics]
    fpir_ratio: float | None
    fpir_highest: str | None
    fpir_lowest: str | None
    fnir_ratio: float | None
    fnir_highest: str | None
    fnir_lowest: str | None
    confidence: float = 0.95
    #: Per-group DET curves ``{group: {"fpir", "fnir", "threshold"}}`` (rank ``max_rank``),
    #: when asked for (``by_group(det_points=...)``): the report draws them with each group's
    #: operating point at ``threshold``. Empty otherwise, and then left out of ``to_dict``.
    det: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "threshold": _clean(self.threshold),
            "max_rank": self.max_rank,
            "min_searches": self.min_searches,
            "confidence": self.confidence,
            "groups": {k: v.to_dict() for k, v in self.groups.items()},
            "fpir_ratio": _clean(self.fpir_ratio),
            "fpir_highest": self.fpir_highest,
            "fpir_lowest": self.fpir_lowest,
            "fnir_ratio": _clean(self.fnir_ratio),
            "fnir_highest": self.fnir_highest,
            "fnir_lowest": self.fnir_lowest,
        }
        if self.det:
            out["det"] = {
                g: {k: [_clean(x) for x in v] for k, v in c.items()} for g, c in self.det.items()
            }
        return out


#: The group of identities with no label for an attribute: counted and shown, never compared
#: (a missing label is not a demographic; issue #17).
UNLABELLED = "unlabelled"


def _ratio(rates: Mapping[str, float]) -> tuple[float | None, str | None, str | None]:
    usable = {k: v for k, v in rates.items() if math.isfinite(v)}
    if len(usable) < 2:
        return None, None, None
    order = sorted(usable, key=lambda k: (usable[k], k))  # name breaks ties: hi != lo
    lo, hi = order[0], order[-1]
    ratio = usable[hi] / usable[lo] if usable[lo] > 0 else None
    return ratio, hi, lo


def _labels(values: ArrayLike | Sequence[Any], n: int, name: str) -> NDArray[np.str_]:
    labels = np.asarray([str(v) for v in np.asarray(values, dtype=object).ravel()], dtype=str)
    if labels.size != n:
        raise ValueError(f"{name} has {labels.size} labels, expected {n}")
    return labels


def by_group(
    mate_ranks: RankLike,
    mate_scores: ArrayLike,
    mated_groups: ArrayLike | Sequence[Any],
    nonmated_top_scores: ArrayLike,
    nonmated_groups: ArrayLike | Sequence[Any],
    threshold: float,
    *,
    max_rank: int = 1,
    min_searches: int = 100,
    n_boot: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
    det_points: int | None = None,
) -> DemographicResult:
    """FNIR and FPIR per demographic group at one *global* threshold.

    A deployed system runs one threshold for everybody, so differentials must be measured at
    that threshold rather than at per-group thresholds that equalise FPIR. A rate is flagged
    insufficient when its group has fewer than ``min_searches`` searches of that kind; flagged
    groups are left out of the ratios. Labels are compared as strings. The group
    :data:`UNLABELLED` (identities with no label) is reported but never compared: a missing
    label is not a demographic, so it is left out of the ratios and the summary's comparisons.

    ``det_points`` also computes each group's DET curve (FNIR at rank ``max_rank`` against
    FPIR as the threshold varies), thinned to about that many points: it shows whether another
    single threshold would narrow a differential, which one operating point cannot.
    """
    _check_max_rank(max_rank)
    r, s = _mated(mate_ranks, mate_scores)
    nm = _scores(nonmated_top_scores)
    g_m = _labels(mated_groups, r.size, "mated_groups")
    g_nm = _labels(nonmated_groups, nm.size, "nonmated_groups")

    def fnir_stat(mated: FloatArray) -> float:
        if mated.shape[0] == 0:
            return math.nan
        hits = _hits(mated[:, 0].astype(np.int64), mated[:, 1], threshold, max_rank)
        return 1.0 - float(np.count_nonzero(hits) / mated.shape[0])

    def fpir_stat(nonmated: FloatArray) -> float:
        return _share_at_or_above(nonmated, threshold)

    groups: dict[str, GroupMetrics] = {}
    for name in sorted(set(g_m.tolist()) | set(g_nm.tolist())):
        mated = np.column_stack([r[g_m == name].astype(np.float64), s[g_m == name]])
        nonmated = nm[g_nm == name]
        nan_ci = (math.nan, math.nan)
        groups[name] = GroupMetrics(
            group=name,
            n_mated=int(mated.shape[0]),
            n_nonmated=int(nonmated.size),
            fnir=fnir_stat(mated),
            fnir_ci=(
                bootstrap_ci(fnir_stat, mated, n_boot=n_boot, seed=seed, confidence=confidence)
                if mated.shape[0]
                else nan_ci
            ),
            fpir=fpir_stat(nonmated),
            fpir_ci=(
                bootstrap_ci(fpir_stat, nonmated, n_boot=n_boot, seed=seed, confidence=confidence)
                if nonmated.size
                else nan_ci
            ),
            fnir_insufficient=mated.shape[0] < min_searches,
            fpir_insufficient=nonmated.size < min_searches,
        )
    det: dict[str, dict[str, list[float]]] = {}
    if det_points is not None:
        for name, g in groups.items():
            if g.n_mated and g.n_nonmated:
                fp, fn, th = det_curve(
                    r[g_m == name], s[g_m == name], nm[g_nm == name], max_rank, det_points
                )
                det[name] = {"fpir": fp.tolist(), "fnir": fn.tolist(), "threshold": th.tolist()}
    compared = {k: v for k, v in groups.items() if k != UNLABELLED}
    fpir_ratio, fpir_hi, fpir_lo = _ratio(
        {k: v.fpir for k, v in compared.items() if not v.fpir_insufficient}
    )
    fnir_ratio, fnir_hi, fnir_lo = _ratio(
        {k: v.fnir for k, v in compared.items() if not v.fnir_insufficient}
    )
    return DemographicResult(
        threshold=threshold,
        max_rank=max_rank,
        min_searches=min_searches,
        groups=groups,
        fpir_ratio=fpir_ratio,
        fpir_highest=fpir_hi,
        fpir_lowest=fpir_lo,
        fnir_ratio=fnir_ratio,
        fnir_highest=fnir_hi,
        fnir_lowest=fnir_lo,
        confidence=confidence,
        det=det,
    )


def format_percent(value: float | None) -> str:
    """``0.021 -> "2.1%"``, ``0.00052 -> "0.052%"``: one decimal from 1% up, two significant
    digits below, so tables line up and small rates stay readable."""
    if value is None or not math.isfinite(value):
        return "n/a"
    pct = 100 * value
    if pct == 0:
        return "0%"
    return f"{pct:.1f}%" if abs(pct) >= 1 else f"{pct:.2g}%"


def _ci_text(ci: Sequence[float | None]) -> str:
    return f"{format_percent(ci[0])}–{format_percent(ci[1])}"


def _overlap(a: Sequence[float | None], b: Sequence[float | None]) -> bool | None:
    a_lo, a_hi, b_lo, b_hi = (*a, *b)
    if a_lo is None or a_hi is None or b_lo is None or b_hi is None:
        return None
    return a_lo <= b_hi and b_lo <= a_hi


def _comparison_sentence(d: Mapping[str, Any], rate: str, prefix: str, confidence: float) -> str:
    """One sentence comparing the groups with the highest and lowest rate (assumed present)."""
    groups = d["groups"]
    hi, lo, ratio = d[f"{rate}_highest"], d[f"{rate}_lowest"], d[f"{rate}_ratio"]
    gh, gl = groups[hi], groups[lo]
    if rate == "fpir":
        subject, event, short = "non-mated searches", "returned an innocent candidate", "FPIR"
    else:
        subject, event, short = "mated searches", "missed the true mate", "FNIR"
        short = f"rank-{d['max_rank']} FNIR"
    vh, vl = gh[rate], gl[rate]
    lead = f"{prefix}{subject}" if prefix else subject[0].upper() + subject[1:]
    if not vh:
        none = f"{prefix}no" if prefix else "No"
        return f"{none} {subject} in any compared group {event} ({short} 0%)."
    if ratio is None:
        text = f"{lead} for {hi} {event} in {format_percent(vh)} of cases, and none for {lo} did"
    else:
        text = f"{lead} for {hi} {event} {ratio:.3g} times as often as for {lo}"
    text += f" ({short} {format_percent(vh)} vs {format_percent(vl)})."
    ci_h, ci_l = gh[f"{rate}_ci"], gl[f"{rate}_ci"]
    overlap = _overlap(ci_h, ci_l)
    level = f"{100 * confidence:g}%"
    if overlap is True:
        text += (
            f" The {level} intervals overlap ({_ci_text(ci_h)} vs {_ci_text(ci_l)}),"
            " so this difference may be due to chance."
        )
    elif overlap is False:
        text += f" The {level} intervals ({_ci_text(ci_h)} vs {_ci_text(ci_l)}) do not overlap."
    return text


def plain_language_summary(group_results: DemographicResult | Mapping[str, Any]) -> str:
    """Sentences a non-specialist (an oversight board, a court) can read: which group gets
    more innocent candidates and more missed mates at the operating threshold, by how much,
    whether the intervals overlap, and which groups are too small to say anything about."""
    d = group_results.to_dict() if isinstance(group_results, DemographicResult) else group_results
    threshold = d["threshold"]
    threshold_text = "n/a" if threshold is None else f"{threshold:.4g}"
    confidence = float(d.get("confidence", 0.95))
    prefix = f"At threshold {threshold_text}, "
    sentences: list[str] = []
    for rate in ("fpir", "fnir"):
        if d[f"{rate}_highest"] is not None:
            sentences.append(_comparison_sentence(d, rate, "" if sentences else prefix, confidence))
    if not sentences:
        sentences.append(
            f"{prefix}fewer than two groups have enough searches "
            f"(at least {d['min_searches']} of a kind) to compare."
        )
    small = [
        g for g in d["groups"].values() if g["insufficient_samples"] and g["group"] != UNLABELLED
    ]
    if small:
        listed = "; ".join(
            f"{g['group']} ({g['n_mated']} mated, {g['n_nonmated']} non-mated; "
            + " and ".join(
                r
                for r, bad in (("FPIR", g["fpir_insufficient"]), ("FNIR", g["fnir_insufficient"]))
                if bad
            )
            + " not compared)"
            for g in small
        )
        sentences.append(
            f"Too few searches for a reliable estimate (fewer than {d['min_searches']} of a "
            f"kind): {listed}."
        )
    unlabelled = d["groups"].get(UNLABELLED)
    if unlabelled is not None:
        sentences.append(
            f"No label: {unlabelled['n_mated']} mated and {unlabelled['n_nonmated']} non-mated "
            f"searches ({UNLABELLED}), counted, not compared."
        )
    return " ".join(sentences)


__all__ = [
    "DEFAULT_FARS",
    "DEFAULT_FPIRS",
    "REPORTED_RANKS",
    "UNLABELLED",
    "DemographicResult",
    "FnirPoint",
    "GroupMetrics",
    "IdentificationResult",
    "KFoldResult",
    "TarPoint",
    "VerificationResult",
    "bootstrap_ci",
    "by_group",
    "cmc",
    "det_curve",
    "eer",
    "evaluate_identification",
    "evaluate_verification",
    "fnir_at_fpir",
    "fnir_at_threshold",
    "format_percent",
    "fpir_at_threshold",
    "fpir_threshold",
    "kfold_accuracy",
    "plain_language_summary",
    "rate_key",
    "roc",
    "samples_needed",
    "tar_at_far",
]
