"""Evaluation plots, drawn on bare :class:`matplotlib.figure.Figure` objects.

``pyplot`` is never imported: it keeps global figure state and picks a GUI backend, which leaks
memory in long-running services and breaks on headless servers. Figures are rendered with the
Agg canvas (SVG/PDF through matplotlib's own format dispatch), so this module is safe to call
from worker threads and web handlers.

Every ``*_figure`` function returns a figure (used by the HTML/PDF report); every ``plot_*``
function draws the same figure, writes it to ``path`` and returns the path.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from numpy.typing import ArrayLike

from retroface.eval.metrics import UNLABELLED, DemographicResult, FloatArray, format_percent

PathLike: TypeAlias = str | os.PathLike[str]
#: One curve, or several keyed by label (e.g. one per backend).
Curve: TypeAlias = ArrayLike | Mapping[str, ArrayLike]
XYCurve: TypeAlias = tuple[ArrayLike, ArrayLike] | Mapping[str, tuple[ArrayLike, ArrayLike]]

FIGSIZE = (6.4, 4.4)
CMC_TITLE = "CMC (rank-k identification rate)"
DET_TITLE = "DET (rank-1, open-set)"
ROC_TITLE = "ROC (1:1 verification)"
DPI = 150


def _new_figure(figsize: tuple[float, float] = FIGSIZE) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _floats(values: ArrayLike) -> FloatArray:
    """``None`` (how JSON results spell NaN) becomes NaN."""
    return np.asarray(values, dtype=np.float64).ravel()


def save_figure(fig: Figure, path: PathLike, *, formats: Sequence[str] = ()) -> Path:
    """Write ``fig`` in the format given by ``path``'s suffix, plus any extra ``formats``
    (e.g. ``("svg",)``) next to it with the same stem. Returns ``path``."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, metadata=_metadata(out.suffix.lstrip(".")))
    for fmt in formats:
        extra = out.with_suffix("." + fmt.lstrip("."))
        if extra != out:
            fig.savefig(extra, metadata=_metadata(fmt.lstrip(".")))
    return out


def _metadata(fmt: str) -> dict[str, Any]:
    # Drop creation dates so identical results give identical files (diffable, hashable).
    if fmt.lower() == "svg":
        return {"Date": None}
    if fmt.lower() == "pdf":
        return {"CreationDate": None}
    if fmt.lower() == "png":
        return {"Software": "retroface"}
    return {}


def figure_png(fig: Figure, dpi: int = DPI) -> bytes:
    """PNG bytes of a figure, for embedding in HTML reports."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": "retroface"})
    return buf.getvalue()


def _curves(curves: Curve, default_label: str) -> dict[str, FloatArray]:
    if isinstance(curves, Mapping):
        return {str(k): _floats(v) for k, v in curves.items()}
    return {default_label: _floats(curves)}


def _xy_curves(curves: XYCurve, default_label: str) -> dict[str, tuple[FloatArray, FloatArray]]:
    if isinstance(curves, Mapping):
        return {str(k): (_floats(v[0]), _floats(v[1])) for k, v in curves.items()}
    return {default_label: (_floats(curves[0]), _floats(curves[1]))}


def _finish(ax: Axes, title: str | None, legend: bool) -> None:
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.35)
    ax.grid(True, which="minor", alpha=0.12)
    if legend:
        ax.legend(loc="best", fontsize="small")


# --------------------------------------------------------------------------------------------
# Identification
# --------------------------------------------------------------------------------------------


def cmc_figure(curves: Curve, *, title: str | None = CMC_TITLE) -> Figure:
    """CMC curve(s); ``curves[k-1]`` is the hit rate at rank ``k``."""
    fig = _new_figure()
    ax = fig.add_subplot()
    data = _curves(curves, "identification rate")
    for label, rates in data.items():
        ranks = np.arange(1, rates.size + 1)
        ax.plot(ranks, rates, marker="o", markersize=3, drawstyle="steps-post", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("Rank")
    ax.set_ylabel("Share of mated searches with mate at rank ≤ k")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=1)
    _finish(ax, title, legend=len(data) > 1)
    return fig


def _log_positive(x: FloatArray, y: FloatArray) -> tuple[FloatArray, FloatArray]:
    keep = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    return x[keep], y[keep]


def det_figure(
    curves: XYCurve,
    *,
    fpir_targets: Sequence[float] = (),
    title: str | None = DET_TITLE,
) -> Figure:
    """Log-log DET: FNIR against FPIR as the threshold varies.

    ``curves`` is ``(fpir, fnir)`` or ``{label: (fpir, fnir)}``. Zero rates have no place on
    log axes and are dropped (the curve ends where the data stop resolving the rate).
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    data = _xy_curves(curves, "DET")
    xs: list[float] = []
    ys: list[float] = []
    for label, (fpir, fnir) in data.items():
        x, y = _log_positive(fpir, fnir)
        order = np.lexsort((-y, x))  # at equal FPIR, step down to the best FNIR
        ax.plot(x[order], y[order], drawstyle="steps-post", label=label)
        xs.extend(x.tolist())
        ys.extend(y.tolist())
    if not xs:  # no operating point with both error rates above zero: nothing fits log axes
        ax.text(
            0.5,
            0.5,
            "No operating point with both error rates above zero",
            transform=ax.transAxes,
            ha="center",
            va="center",
        )
    else:
        for target in fpir_targets:
            ax.axvline(target, color="0.5", linestyle=":", linewidth=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(min([*xs, *fpir_targets]) / 2, 1.0)
        ax.set_ylim(min(ys) / 2, 1.05)
    ax.set_xlabel("FPIR (share of non-mated searches returning a candidate)")
    ax.set_ylabel("FNIR (share of mated searches missing the mate)")
    _finish(ax, title, legend=len(data) > 1)
    return fig


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------


def roc_figure(curves: XYCurve, *, title: str | None = ROC_TITLE) -> Figure:
    """TAR against FAR on a log FAR axis (operational thresholds live at small FAR).

    ``curves`` is ``(far, tar)`` or ``{label: (far, tar)}``.
    """
    fig = _new_figure()
    ax = fig.add_subplot()
    data = _xy_curves(curves, "ROC")
    lows: list[float] = []
    for label, (far, tar) in data.items():
        keep = np.isfinite(far) & np.isfinite(tar) & (far > 0)
        ax.plot(far[keep], tar[keep], drawstyle="steps-post", label=label)
        if np.any(keep):
            lows.append(float(far[keep].min()))
    ax.set_xscale("log")
    if lows:
        ax.set_xlim(min(lows) / 2, 1.0)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("FAR (share of impostor pairs accepted)")
    ax.set_ylabel("TAR (share of genuine pairs accepted)")
    _finish(ax, title, legend=len(data) > 1)
    return fig


def score_histogram_counts_figure(
    edges: ArrayLike,
    positive_counts: ArrayLike,
    negative_counts: ArrayLike,
    *,
    threshold: float | None = None,
    labels: tuple[str, str] = ("genuine", "impostor"),
    log: bool = False,
    title: str | None = "Score distributions",
) -> Figure:
    """Histogram from pre-binned counts (as stored in results), each population normalised to
    shares so populations of very different sizes stay comparable."""
    fig = _new_figure()
    ax = fig.add_subplot()
    e = _floats(edges)
    for counts, label, colour in (
        (_floats(positive_counts), labels[0], "tab:blue"),
        (_floats(negative_counts), labels[1], "tab:red"),
    ):
        total = counts.sum()
        shares = counts / total if total > 0 else counts
        ax.stairs(shares, e, fill=True, alpha=0.35, color=colour, label=f"{label} (n={total:.0f})")
        ax.stairs(shares, e, color=colour)
    if threshold is not None and math.isfinite(threshold):
        ax.axvline(threshold, color="black", linestyle="--", label=f"threshold {threshold:.4g}")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("Similarity score")
    ax.set_ylabel("Share of population per bin")
    _finish(ax, title, legend=True)
    return fig


def score_histogram_figure(
    genuine: ArrayLike,
    impostor: ArrayLike,
    *,
    threshold: float | None = None,
    bins: int = 50,
    labels: tuple[str, str] = ("genuine", "impostor"),
    log: bool = False,
    title: str | None = "Score distributions",
) -> Figure:
    """Genuine (or mated) vs impostor (or non-mated top-1) scores with the operating
    threshold; the overlap is where errors come from. Non-finite scores are left out."""
    g, i = _floats(genuine), _floats(impostor)
    g, i = g[np.isfinite(g)], i[np.isfinite(i)]
    both = np.concatenate([g, i])
    edges = np.histogram_bin_edges(both if both.size else np.zeros(1), bins=bins)
    return score_histogram_counts_figure(
        edges,
        np.histogram(g, bins=edges)[0],
        np.histogram(i, bins=edges)[0],
        threshold=threshold,
        labels=labels,
        log=log,
        title=title,
    )


# --------------------------------------------------------------------------------------------
# Demographics and robustness
# --------------------------------------------------------------------------------------------


def _err(value: float | None, ci: Sequence[float | None]) -> tuple[float, float, float]:
    v = math.nan if value is None else float(value)
    lo = v if ci[0] is None else float(ci[0])
    hi = v if ci[1] is None else float(ci[1])
    if not math.isfinite(v):
        return 0.0, 0.0, 0.0
    return v, max(v - lo, 0.0), max(hi - v, 0.0)


def group_bars_figure(
    demographics: DemographicResult | Mapping[str, Any],
    *,
    title: str | None = None,
) -> Figure:
    """FPIR and FNIR per group with interval error bars at the shared threshold.

    Groups with too few searches are hatched and faded so nobody reads them as evidence.
    """
    d = demographics.to_dict() if isinstance(demographics, DemographicResult) else demographics
    groups = list(d["groups"].values())
    fig = _new_figure((max(6.4, 1.1 * len(groups) + 3.0), 4.4))
    axes = fig.subplots(1, 2)
    names = [str(g["group"]) for g in groups]
    x = np.arange(len(groups))
    for ax, rate, label, colour in (
        (axes[0], "fpir", "FPIR (innocent candidate returned)", "tab:red"),
        (axes[1], "fnir", "FNIR (true mate missed)", "tab:blue"),
    ):
        values, lower, upper = [], [], []
        for g in groups:
            v, lo, hi = _err(g[rate], g[f"{rate}_ci"])
            values.append(v)
            lower.append(lo)
            upper.append(hi)
        bars = ax.bar(x, values, color=colour, alpha=0.75)
        ax.errorbar(x, values, yerr=[lower, upper], fmt="none", ecolor="black", capsize=4)
        for bar, g, v, u in zip(bars, groups, values, upper, strict=True):
            if g[f"{rate}_insufficient"]:
                bar.set_hatch("//")
                bar.set_alpha(0.3)
            n = g["n_nonmated"] if rate == "fpir" else g["n_mated"]
            ax.annotate(
                f"{format_percent(v)}\nn={n}",
                (bar.get_x() + bar.get_width() / 2, v + u),
                xytext=(0, 3),
                textcoords="offset points",
                ha="center",
                va="bottom",
                fontsize="x-small",
            )
        rotate = len(names) > 4 or max((len(n) for n in names), default=0) > 12
        ax.set_xticks(x, names, rotation=30 if rotate else 0, ha="right" if rotate else "center")
        ax.set_ylabel(label)
        top = max((v + u for v, u in zip(values, upper, strict=True)), default=0.0)
        ax.set_ylim(0, top * 1.3 if top > 0 else 1.0)
        ax.grid(True, axis="y", alpha=0.35)
    threshold = d.get("threshold")
    fig.suptitle(
        title
        or (
            f"Per-group error rates at threshold {threshold:.4g}"
            if threshold is not None
            else "Per-group error rates"
        )
    )
    return fig


def group_det_figure(
    demographics: DemographicResult | Mapping[str, Any],
    *,
    title: str | None = None,
) -> Figure:
    """Each group's DET curve (FNIR against FPIR, log-log) with its operating point: the
    rates at the one shared threshold, as the per-group table gives them.

    Identities with no label are not a group and are not drawn; groups with too few searches
    are drawn dashed. A curve to the lower left of another is better at *every* threshold; the
    vertical distance between the curves at the operating FPIR is the FNIR gap a single
    threshold cannot close.
    """
    d = demographics.to_dict() if isinstance(demographics, DemographicResult) else demographics
    fig = _new_figure()
    ax = fig.add_subplot()
    curves = d.get("det") or {}
    xs: list[float] = []
    ys: list[float] = []
    for name, c in curves.items():
        if name == UNLABELLED:
            continue
        g = d["groups"][name]
        x, y = _log_positive(_floats(c["fpir"]), _floats(c["fnir"]))
        order = np.lexsort((-y, x))
        (line,) = ax.plot(
            x[order],
            y[order],
            drawstyle="steps-post",
            linestyle="--" if g["insufficient_samples"] else "-",
            label=f"{name} (n={g['n_mated']:,} mated, {g['n_nonmated']:,} non-mated)",
        )
        xs.extend(x.tolist())
        ys.extend(y.tolist())
        fp, fn = g["fpir"], g["fnir"]
        if fp is not None and fn is not None and fp > 0 and fn > 0:
            ax.plot(
                [fp],
                [fn],
                marker="o",
                markersize=8,
                color=line.get_color(),
                markeredgecolor="black",
                linestyle="none",
                gid=f"operating-point:{name}",
            )
            xs.append(fp)
            ys.append(fn)
    if not xs:
        ax.text(
            0.5,
            0.5,
            "No group with both error rates above zero",
            transform=ax.transAxes,
            ha="center",
            va="center",
        )
    else:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(min(xs) / 2, 1.0)
        ax.set_ylim(min(ys) / 2, 1.05)
    ax.set_xlabel("FPIR (share of non-mated searches returning a candidate)")
    ax.set_ylabel(f"FNIR (rank {d.get('max_rank', 1)}: mate missed)")
    threshold = d.get("threshold")
    _finish(
        ax,
        title
        or (
            f"Per-group DET; dots: operating threshold {threshold:.4g}"
            if threshold is not None
            else "Per-group DET"
        ),
        legend=bool(xs),
    )
    return fig


def robustness_figure(
    face_widths: ArrayLike,
    rank1: ArrayLike,
    *,
    ci: Sequence[Sequence[float | None]] | None = None,
    label: str | None = None,
    title: str | None = "Rank-1 identification rate vs face size",
) -> Figure:
    """Rank-1 rate against probe face width in pixels: how fast accuracy collapses on small
    CCTV faces. ``ci`` is one ``(lo, hi)`` pair per width, drawn as a band."""
    fig = _new_figure()
    ax = fig.add_subplot()
    w, r = _floats(face_widths), _floats(rank1)
    order = np.argsort(w)
    ax.plot(w[order], r[order], marker="o", label=label or "rank-1")
    if ci is not None:
        band = np.asarray([[math.nan if v is None else v for v in pair] for pair in ci], float)
        ax.fill_between(w[order], band[order, 0], band[order, 1], alpha=0.25, label="interval")
    if w.size and np.all(w > 0):
        ax.set_xscale("log", base=2)
        ax.set_xticks(w[order], [f"{v:g}" for v in w[order]])
        ax.minorticks_off()
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Face width (px)")
    ax.set_ylabel("Rank-1 identification rate")
    _finish(ax, title, legend=ci is not None or label is not None)
    return fig


# --------------------------------------------------------------------------------------------
# Writers
# --------------------------------------------------------------------------------------------


def plot_cmc(
    curves: Curve, path: PathLike, *, title: str | None = CMC_TITLE, formats: Sequence[str] = ()
) -> Path:
    """Write a CMC plot (see :func:`cmc_figure`)."""
    return save_figure(cmc_figure(curves, title=title), path, formats=formats)


def plot_det(
    curves: XYCurve,
    path: PathLike,
    *,
    fpir_targets: Sequence[float] = (),
    title: str | None = DET_TITLE,
    formats: Sequence[str] = (),
) -> Path:
    """Write a log-log DET plot (see :func:`det_figure`)."""
    fig = det_figure(curves, fpir_targets=fpir_targets, title=title)
    return save_figure(fig, path, formats=formats)


def plot_roc(
    curves: XYCurve, path: PathLike, *, title: str | None = ROC_TITLE, formats: Sequence[str] = ()
) -> Path:
    """Write a ROC plot (see :func:`roc_figure`)."""
    return save_figure(roc_figure(curves, title=title), path, formats=formats)


def plot_score_histograms(
    genuine: ArrayLike,
    impostor: ArrayLike,
    path: PathLike,
    *,
    threshold: float | None = None,
    bins: int = 50,
    labels: tuple[str, str] = ("genuine", "impostor"),
    log: bool = False,
    formats: Sequence[str] = (),
) -> Path:
    """Write genuine/impostor score histograms (see :func:`score_histogram_figure`)."""
    fig = score_histogram_figure(
        genuine, impostor, threshold=threshold, bins=bins, labels=labels, log=log
    )
    return save_figure(fig, path, formats=formats)


def plot_group_bars(
    demographics: DemographicResult | Mapping[str, Any],
    path: PathLike,
    *,
    title: str | None = None,
    formats: Sequence[str] = (),
) -> Path:
    """Write the per-group FPIR/FNIR bar chart (see :func:`group_bars_figure`)."""
    return save_figure(group_bars_figure(demographics, title=title), path, formats=formats)


def plot_group_det(
    demographics: DemographicResult | Mapping[str, Any],
    path: PathLike,
    *,
    title: str | None = None,
    formats: Sequence[str] = (),
) -> Path:
    """Write the per-group DET curves (see :func:`group_det_figure`)."""
    return save_figure(group_det_figure(demographics, title=title), path, formats=formats)


def plot_robustness(
    face_widths: ArrayLike,
    rank1: ArrayLike,
    path: PathLike,
    *,
    ci: Sequence[Sequence[float | None]] | None = None,
    label: str | None = None,
    formats: Sequence[str] = (),
) -> Path:
    """Write the rank-1 vs face width curve (see :func:`robustness_figure`)."""
    fig = robustness_figure(face_widths, rank1, ci=ci, label=label)
    return save_figure(fig, path, formats=formats)


__all__ = [
    "cmc_figure",
    "det_figure",
    "figure_png",
    "group_bars_figure",
    "group_det_figure",
    "plot_cmc",
    "plot_det",
    "plot_group_bars",
    "plot_group_det",
    "plot_robustness",
    "plot_roc",
    "plot_score_histograms",
    "robustness_figure",
    "roc_figure",
    "save_figure",
    "score_histogram_counts_figure",
    "score_histogram_figure",
]
