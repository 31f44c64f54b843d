"""Accuracy reports: self-contained HTML, PDF, and markdown tables for ``docs/accuracy.md``.

Reports are built from result objects *or* their ``to_dict()`` form, so a report can be
re-rendered later from stored JSON without re-running an evaluation. HTML and PDF share one
section/table model, so the two formats can never disagree about a number. Sample sizes,
intervals and "too few samples" flags are always shown next to the rates: an accuracy figure
without them cannot be checked by the people it is meant to reassure.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from matplotlib.backends.backend_pdf import PdfPages
from matplotlib.figure import Figure

from retroface import __version__
from retroface.eval import plots
from retroface.eval.metrics import (
    UNLABELLED,
    DemographicResult,
    IdentificationResult,
    VerificationResult,
    format_percent,
    plain_language_summary,
)
from retroface.eval.plots import PathLike

TEMPLATE = "report.html.j2"

CONVENTIONS = (
    "Scores are similarities; a candidate is returned when its score is at or above the threshold.",
    "FPIR (false positive identification rate): share of non-mated searches (subject not "
    "enrolled) that return any candidate at or above the threshold. FNIR (false negative "
    "identification rate): share of mated searches whose true mate is not returned at rank R "
    "or better at or above the threshold (R = 1 unless stated). Searches that failed face "
    "detection or whose mate failed enrolment count as misses (ISO/IEC 19795-1, NIST FRTE 1:N).",
    "Thresholds for a target FPIR (or FAR) are set just above the highest non-mated (impostor) "
    "score that must be excluded, so the achieved rate never exceeds the target; ties are "
    "excluded together. The achieved rate is shown because it moves in steps of 1/n.",
    "Intervals are percentile bootstrap intervals; mated and non-mated searches (genuine and "
    "impostor pairs) are resampled independently and thresholds are re-derived per resample.",
    "Rule of three: with n searches and no errors, the 95% upper bound on an error rate is about "
    "3/n, so a rate p is marked 'insufficient samples' below 3/p searches and should not be "
    "quoted.",
)

Result = Mapping[str, Any]


def _as_dict(result: Any) -> dict[str, Any]:
    to_dict = getattr(result, "to_dict", None)
    return dict(to_dict()) if callable(to_dict) else dict(result)


def _num(value: Any, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:.{digits}g}"


def _threshold(value: float | None) -> str:
    """Thresholds from :func:`fpir_threshold` sit one ulp above an observed score; print them
    as "> score" so a reader re-applying the printed number gets the same decisions."""
    if value is None or not math.isfinite(value):
        return "n/a"
    below = float(np.nextafter(value, -np.inf))
    if float(f"{below:.8g}") == below and float(f"{value:.8g}") != value:
        return f"> {below:.8g}"
    return f"{value:.8g}"


def _ci(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "n/a"
    return f"{format_percent(ci[0])}–{format_percent(ci[1])}"


def _value(value: Any) -> str:
    if isinstance(value, Mapping | list | tuple):
        return json.dumps(value, default=str, ensure_ascii=False)
    return _num(value) if isinstance(value, int | float) else str(value)


@dataclass
class Table:
    """A plain table shared by the HTML, PDF and text renderers."""

    header: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)
    numeric_columns: set[int] = field(default_factory=set)
    warn_rows: set[int] = field(default_factory=set)

    def text(self) -> str:
        """Monospace rendering (PDF pages, logs)."""
        widths = [
            max(len(str(r[i])) for r in [self.header, *self.rows]) for i in range(len(self.header))
        ]

        def line(cells: Sequence[str]) -> str:
            return "  ".join(
                c.rjust(w) if i in self.numeric_columns else c.ljust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            ).rstrip()

        out = [self.caption] if self.caption else []
        out += [line(self.header), "  ".join("-" * w for w in widths)]
        out += [line(r) for r in self.rows]
        for note in self.notes:
            out += textwrap.wrap(note, 100, initial_indent="  ", subsequent_indent="  ")
        return "\n".join(out)


@dataclass
class Section:
    id: str
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    figures: list[tuple[str, Callable[[], Figure]]] = field(default_factory=list)
    highlight: bool = False


@dataclass
class ReportContent:
    """Everything a report can show; every part is optional.

    Results may be result objects or their ``to_dict()`` output. ``robustness`` is
    ``{"face_width_px": [...], "rank1": [...], "ci": [[lo, hi], ...]}`` (``ci`` optional).
    ``dataset`` and ``model`` are free-form key/value descriptions (name, version, weights hash,
    licence, number of subjects, capture conditions, ...).
    """

    title: str = "retroface accuracy report"
    identification: IdentificationResult | Result | None = None
    verification: VerificationResult | Result | None = None
    demographics: DemographicResult | Result | None = None
    #: the same groups on other probes, e.g. ``{"probes degraded to 40 px": result}``
    demographics_more: Mapping[str, DemographicResult | Result] = field(default_factory=dict)
    robustness: Result | None = None
    dataset: Result | None = None
    model: Result | None = None
    notes: Sequence[str] = ()
    generated_at: str | None = None


# --------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------


def _key_values(title: str, section_id: str, values: Result) -> Section:
    rows = [[str(k), _value(v)] for k, v in values.items()]
    return Section(section_id, title, tables=[Table(["Field", "Value"], rows)])


def _operating_threshold(ident: Result, demo: Result | None) -> float | None:
    """Threshold to mark on score plots: the deployed one if known, else the lowest
    target FPIR that the sample size supports."""
    if demo is not None and demo.get("threshold") is not None:
        return float(demo["threshold"])
    usable = [
        (float(k), p["threshold"])
        for k, p in ident.get("fnir_at_fpir", {}).items()
        if not p.get("insufficient_samples") and p.get("threshold") is not None
    ]
    return min(usable)[1] if usable else None


def _operating_points(
    points: dict[str, Any], rate: str, achieved: str, needed: str, noun: str
) -> tuple[list[list[str]], set[int]]:
    """Rows for FNIR-at-FPIR or TAR-at-FAR tables, and the indices lacking samples."""
    rows: list[list[str]] = []
    warn: set[int] = set()
    for i, (key, p) in enumerate(points.items()):
        insufficient = bool(p.get("insufficient_samples"))
        if insufficient:
            warn.add(i)
        rows.append(
            [
                key,
                _threshold(p.get("threshold")),
                format_percent(p.get(rate)),
                _ci(p.get("ci")),
                format_percent(p.get(achieved)),
                f"insufficient samples: needs ≥ {p[needed]:,} {noun}" if insufficient else "ok",
            ]
        )
    return rows, warn


def _identification_section(d: Result, demo: Result | None) -> Section:
    level = f"{100 * float(d.get('confidence', 0.95)):g}%"
    sizes = Table(
        ["Quantity", "Count"],
        [
            ["Mated searches", _num(d["n_mated"])],
            ["Non-mated searches", _num(d["n_nonmated"])],
            ["Gallery size", _num(d.get("gallery_size"))],
            ["Failure to detect (searches)", _num(d.get("failure_to_detect", 0))],
            ["Failure to enrol (mates)", _num(d.get("failure_to_enrol", 0))],
        ],
        caption="Sample sizes",
        numeric_columns={1},
    )
    intervals = d.get("intervals", {})
    rank_rows = [
        [f"Rank {k}", format_percent(d.get(f"rank{k}")), _ci(intervals.get(f"rank{k}"))]
        for k in (1, 5, 20)
        if d.get(f"rank{k}") is not None
    ]
    ranks = Table(
        ["Rank", "Identification rate", f"{level} interval"],
        rank_rows,
        caption="Rank-k identification rate (no threshold)",
        notes=["Share of mated searches with the true mate at rank k or better; failures count."],
        numeric_columns={1, 2},
    )
    rank_r = d.get("fnir_max_rank", 1)
    fnir_rows, warn = _operating_points(
        d.get("fnir_at_fpir", {}), "fnir", "fpir_achieved", "nonmated_needed", "non-mated"
    )
    fnir = Table(
        [
            "Target FPIR",
            "Threshold",
            f"FNIR (rank {rank_r})",
            f"{level} interval",
            "Achieved FPIR",
            "Sample size",
        ],
        fnir_rows,
        caption="FNIR at fixed FPIR (open-set)",
        notes=[
            "Rows marked insufficient have fewer non-mated searches than the rule of three "
            "requires (3 / FPIR); their FNIR cannot be quoted at that FPIR."
        ],
        numeric_columns={1, 2, 3, 4},
        warn_rows=warn,
    )
    section = Section("identification", "1:N identification", tables=[sizes, ranks, fnir])
    cmc = d.get("cmc") or []
    if cmc:
        section.figures.append(("CMC curve", lambda: plots.cmc_figure(cmc)))
    det = d.get("det") or {}
    if det.get("fpir"):
        targets = [float(k) for k in d.get("fnir_at_fpir", {})]
        section.figures.append(
            (
                f"DET curve (rank-{rank_r} FNIR vs FPIR, log-log); dotted lines mark target FPIRs",
                lambda: plots.det_figure((det["fpir"], det["fnir"]), fpir_targets=targets),
            )
        )
    hist = d.get("score_histogram")
    if hist:
        threshold = _operating_threshold(d, demo)
        section.figures.append(
            (
                "Scores of found mates vs top-1 scores of non-mated searches",
                lambda: plots.score_histogram_counts_figure(
                    hist["edges"],
                    hist["mated"],
                    hist["nonmated"],
                    threshold=threshold,
                    labels=("mated", "non-mated top-1"),
                ),
            )
        )
    return section


def _verification_section(d: Result) -> Section:
    level = f"{100 * float(d.get('confidence', 0.95)):g}%"
    summary = Table(
        ["Quantity", "Value"],
        [
            ["Genuine pairs", _num(d["n_genuine"])],
            ["Impostor pairs", _num(d["n_impostor"])],
            ["Failed comparisons", _num(d.get("failed_comparisons", 0))],
            ["EER", format_percent(d.get("eer"))],
            [f"EER {level} interval", _ci(d.get("eer_ci"))],
        ],
        caption="Sample sizes and equal error rate",
        numeric_columns={1},
    )
    rows, warn = _operating_points(
        d.get("tar_at_far", {}), "tar", "far_achieved", "impostor_needed", "impostor"
    )
    tar = Table(
        ["Target FAR", "Threshold", "TAR", f"{level} interval", "Achieved FAR", "Sample size"],
        rows,
        caption="TAR at fixed FAR",
        numeric_columns={1, 2, 3, 4},
        warn_rows=warn,
    )
    section = Section("verification", "1:1 verification", tables=[summary, tar])
    kfold = d.get("kfold")
    if kfold:
        section.tables.append(
            Table(
                ["Quantity", "Value"],
                [
                    ["Folds", _num(kfold["n_folds"])],
                    ["Mean accuracy", format_percent(kfold["mean"])],
                    ["Standard deviation", format_percent(kfold["std"])],
                    ["Standard error", format_percent(kfold["std_err"])],
                ],
                caption="k-fold accuracy (threshold chosen on the other folds)",
                notes=["Per-fold thresholds: " + ", ".join(_num(t) for t in kfold["thresholds"])],
                numeric_columns={1},
            )
        )
    roc = d.get("roc") or {}
    if roc.get("far"):
        section.figures.append(("ROC curve", lambda: plots.roc_figure((roc["far"], roc["tar"]))))
    hist = d.get("score_histogram")
    if hist:
        section.figures.append(
            (
                "Genuine vs impostor scores",
                lambda: plots.score_histogram_counts_figure(
                    hist["edges"], hist["genuine"], hist["impostor"]
                ),
            )
        )
    return section


def _group_det_caption(d: Result) -> str:
    """The DET figure's caption: each group's operating point in words, so the dots can be
    checked against the table (and a reader without the image still gets the numbers)."""
    points = "; ".join(
        f"{g['group']}: FPIR {format_percent(g['fpir'])}, FNIR {format_percent(g['fnir'])}"
        for g in d["groups"].values()
        if g["group"] != UNLABELLED and g["group"] in d.get("det", {})
    )
    return (
        f"Per-group DET curves (rank-{d.get('max_rank', 1)} FNIR vs FPIR, log axes); dots "
        f"mark each group's operating point at the threshold {_threshold(d.get('threshold'))}"
        f" — {points}"
    )


def _demographics_section(d: Result, probes: str = "") -> Section:
    level = f"{100 * float(d.get('confidence', 0.95)):g}%"
    rows, warn = [], set()
    for i, g in enumerate(d["groups"].values()):
        if g["insufficient_samples"]:
            warn.add(i)
        flags = [
            name
            for name, bad in (("FPIR", g["fpir_insufficient"]), ("FNIR", g["fnir_insufficient"]))
            if bad
        ]
        rows.append(
            [
                str(g["group"]),
                _num(g["n_mated"]),
                _num(g["n_nonmated"]),
                format_percent(g["fpir"]),
                _ci(g["fpir_ci"]),
                format_percent(g["fnir"]),
                _ci(g["fnir_ci"]),
                "no label: not compared"
                if g["group"] == UNLABELLED
                else (f"too few for {' and '.join(flags)}" if flags else "ok"),
            ]
        )
    table = Table(
        [
            "Group",
            "Mated",
            "Non-mated",
            "FPIR",
            f"FPIR {level} interval",
            f"FNIR (rank {d.get('max_rank', 1)})",
            f"FNIR {level} interval",
            "Sample size",
        ],
        rows,
        caption=f"Per-group error rates at the global threshold {_threshold(d.get('threshold'))}",
        notes=[
            f"FPIR max/min ratio: {_num(d.get('fpir_ratio'), 3)} "
            f"({d.get('fpir_highest') or 'n/a'} vs {d.get('fpir_lowest') or 'n/a'}); "
            f"FNIR max/min ratio: {_num(d.get('fnir_ratio'), 3)} "
            f"({d.get('fnir_highest') or 'n/a'} vs {d.get('fnir_lowest') or 'n/a'}). "
            f"Groups with fewer than {d.get('min_searches')} searches of a kind, and "
            f"identities with no label ({UNLABELLED}), are left out of the ratios."
        ],
        numeric_columns={1, 2, 3, 4, 5, 6},
        warn_rows=warn,
    )
    figures: list[tuple[str, Callable[[], Figure]]] = [
        ("Per-group FPIR and FNIR", lambda: plots.group_bars_figure(d))
    ]
    if d.get("det"):
        figures.append((_group_det_caption(d), lambda: plots.group_det_figure(d)))
    slug = "".join(c if c.isalnum() else "-" for c in probes.lower()).strip("-")
    return Section(
        f"demographics-{slug}" if slug else "demographics",
        f"Demographic differentials: {probes}" if probes else "Demographic differentials",
        paragraphs=[plain_language_summary(d)],
        tables=[table],
        figures=figures,
        highlight=True,
    )


def _robustness_section(d: Result) -> Section:
    widths, rates = list(d["face_width_px"]), list(d["rank1"])
    ci = d.get("ci")
    rows = [
        [_num(w), format_percent(r), _ci(ci[i]) if ci else "n/a"]
        for i, (w, r) in enumerate(zip(widths, rates, strict=True))
    ]
    return Section(
        "robustness",
        "Robustness to face size",
        tables=[Table(["Face width (px)", "Rank-1", "Interval"], rows, numeric_columns={0, 1, 2})],
        figures=[
            (
                "Rank-1 identification rate vs probe face width",
                lambda: plots.robustness_figure(widths, rates, ci=ci),
            )
        ],
    )


def build_sections(content: ReportContent) -> list[Section]:
    """The report as format-neutral sections (used by both HTML and PDF output)."""
    sections: list[Section] = []
    if content.model:
        sections.append(_key_values("System under test", "model", content.model))
    if content.dataset:
        sections.append(_key_values("Dataset", "dataset", content.dataset))
    demo = _as_dict(content.demographics) if content.demographics is not None else None
    if content.identification is not None:
        sections.append(_identification_section(_as_dict(content.identification), demo))
    if content.verification is not None:
        sections.append(_verification_section(_as_dict(content.verification)))
    if demo is not None:
        sections.append(_demographics_section(demo))
    for probes, more in content.demographics_more.items():
        sections.append(_demographics_section(_as_dict(more), probes))
    if content.robustness is not None:
        sections.append(_robustness_section(content.robustness))
    sections.append(Section("conventions", "Definitions and conventions", list(CONVENTIONS)))
    return sections


def _generated_at(content: ReportContent) -> str:
    if content.generated_at:
        return content.generated_at
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


# --------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------


def _template() -> jinja2.Template:
    source = resources.files("retroface.eval").joinpath("templates", TEMPLATE).read_text("utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    return env.from_string(source)


def render_html(content: ReportContent) -> str:
    """The report as one self-contained HTML document (figures embedded as base64 PNG)."""
    sections = []
    for s in build_sections(content):
        sections.append(
            {
                "id": s.id,
                "title": s.title,
                "paragraphs": s.paragraphs,
                "highlight": s.highlight,
                "tables": s.tables,
                "figures": [
                    {
                        "caption": caption,
                        "png_base64": base64.b64encode(plots.figure_png(make())).decode("ascii"),
                    }
                    for caption, make in s.figures
                ],
            }
        )
    return _template().render(
        title=content.title,
        version=__version__,
        generated_at=_generated_at(content),
        notes=list(content.notes),
        sections=sections,
    )


def write_html(content: ReportContent, path: PathLike) -> Path:
    """Write :func:`render_html` output to ``path`` (UTF-8) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(content), encoding="utf-8")
    return out


# --------------------------------------------------------------------------------------------
# PDF
# --------------------------------------------------------------------------------------------

_A4 = (8.27, 11.69)
_LINES_PER_PAGE = 72
_WRAP = 105
_FIT_CHARS = 118  # monospace characters that fit the text width at 7 pt


def _text_lines(content: ReportContent, sections: Sequence[Section]) -> list[str]:
    lines = [content.title, f"Generated {_generated_at(content)} by retroface {__version__}", ""]
    for note in content.notes:
        lines += [*textwrap.wrap(note, _WRAP), ""]
    for s in sections:
        lines += [s.title.upper(), ""]
        for p in s.paragraphs:
            lines += [*textwrap.wrap(p, _WRAP), ""]
        for t in s.tables:
            lines += t.text().splitlines()  # not wrapped: the page font shrinks to fit instead
            lines.append("")
    return lines


def _text_page(lines: Sequence[str]) -> Figure:
    fig = Figure(figsize=_A4)
    top, step = 0.96, 0.92 / _LINES_PER_PAGE
    widest = max((len(line) for line in lines), default=0)
    size = min(7.0, 7.0 * _FIT_CHARS / max(widest, 1))
    for i, line in enumerate(lines):
        fig.text(0.06, top - i * step, line, family="monospace", fontsize=size, va="top")
    return fig


def write_pdf(content: ReportContent, path: PathLike) -> Path:
    """Write the report as PDF: text pages with every table, then one page per figure."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    sections = build_sections(content)
    lines = _text_lines(content, sections)
    metadata = {"Title": content.title, "Creator": f"retroface {__version__}"}
    with PdfPages(out, metadata=metadata) as pdf:
        for start in range(0, len(lines), _LINES_PER_PAGE):
            pdf.savefig(_text_page(lines[start : start + _LINES_PER_PAGE]))
        for s in sections:
            for caption, make in s.figures:
                fig = make()
                fig.text(0.01, 0.005, f"{s.title}: {caption}", fontsize=7, color="0.35")
                pdf.savefig(fig)
    return out


# --------------------------------------------------------------------------------------------
# Markdown for docs/accuracy.md
# --------------------------------------------------------------------------------------------


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], numeric_from: int) -> str:
    align = ["---" if i < numeric_from else "---:" for i in range(len(header))]
    lines = [
        "| " + " | ".join(_md_escape(h) for h in header) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _md_rate(value: float | None, ci: Sequence[float | None] | None) -> str:
    if value is None:
        return "n/a"
    return (
        f"{format_percent(value)} [{_ci(ci)}]"
        if ci and ci[0] is not None
        else format_percent(value)
    )


def _part(entry: Any, name: str, marker: str) -> dict[str, Any] | None:
    entry = _as_dict(entry)
    if marker in entry:
        return entry
    part = entry.get(name)
    return _as_dict(part) if part is not None else None


def _sorted_rates(keys: set[str]) -> list[str]:
    return sorted(keys, key=lambda k: -float(k))


def accuracy_markdown(results_by_backend: Mapping[str, Any]) -> str:
    """Markdown tables comparing backends, for ``docs/accuracy.md``.

    Each value is ``{"identification": ..., "verification": ...}`` (result objects or dicts;
    either part optional), or directly one identification/verification dict. Rates show the
    bootstrap interval in brackets; operating points without enough samples read "n/a".
    """
    ident = {
        b: p for b, v in results_by_backend.items() if (p := _part(v, "identification", "rank1"))
    }
    verif = {b: p for b, v in results_by_backend.items() if (p := _part(v, "verification", "eer"))}
    blocks: list[str] = []
    if ident:
        fpirs = _sorted_rates({k for d in ident.values() for k in d.get("fnir_at_fpir", {})})
        rank_r = {d.get("fnir_max_rank", 1) for d in ident.values()}
        header = ["Backend", "Mated", "Non-mated", "Rank-1", "Rank-5", "Rank-20"]
        header += [f"FNIR @ FPIR {k}" for k in fpirs]
        rows = []
        for backend, d in ident.items():
            iv = d.get("intervals", {})
            row = [backend, _num(d["n_mated"]), _num(d["n_nonmated"])]
            row += [_md_rate(d.get(f"rank{k}"), iv.get(f"rank{k}")) for k in (1, 5, 20)]
            for k in fpirs:
                p = d.get("fnir_at_fpir", {}).get(k)
                if p is None:
                    row.append("—")
                elif p.get("insufficient_samples"):
                    row.append(f"n/a (needs ≥ {p['nonmated_needed']:,} non-mated)")
                else:
                    row.append(_md_rate(p.get("fnir"), p.get("ci")))
            rows.append(row)
        ranks_note = ", ".join(str(r) for r in sorted(rank_r))
        blocks.append(
            "## 1:N identification\n\n"
            + _md_table(header, rows, numeric_from=1)
            + f"\n\nFNIR at rank {ranks_note}: share of mated searches whose mate is not returned "
            "at that rank at or above the threshold that gives the stated FPIR. Brackets: "
            "bootstrap intervals. n/a: fewer non-mated searches than the rule of three "
            "(3 / FPIR) requires."
        )
    if verif:
        fars = _sorted_rates({k for d in verif.values() for k in d.get("tar_at_far", {})})
        header = ["Backend", "Genuine", "Impostor", "EER"]
        header += [f"TAR @ FAR {k}" for k in fars] + ["k-fold accuracy"]
        rows = []
        for backend, d in verif.items():
            row = [backend, _num(d["n_genuine"]), _num(d["n_impostor"])]
            row.append(_md_rate(d.get("eer"), d.get("eer_ci")))
            for k in fars:
                p = d.get("tar_at_far", {}).get(k)
                if p is None:
                    row.append("—")
                elif p.get("insufficient_samples"):
                    row.append(f"n/a (needs ≥ {p['impostor_needed']:,} impostor)")
                else:
                    row.append(_md_rate(p.get("tar"), p.get("ci")))
            kf = d.get("kfold")
            row.append(
                f"{format_percent(kf['mean'])} ± {format_percent(kf['std_err'])} "
                f"({kf['n_folds']} folds)"
                if kf
                else "—"
            )
            rows.append(row)
        blocks.append(
            "## 1:1 verification\n\n"
            + _md_table(header, rows, numeric_from=1)
            + "\n\nBrackets: bootstrap intervals. k-fold accuracy: mean ± standard error, "
            "threshold chosen on the other folds (LFW protocol)."
        )
    return "\n\n".join(blocks) + "\n" if blocks else ""


__all__ = [
    "CONVENTIONS",
    "ReportContent",
    "Section",
    "Table",
    "accuracy_markdown",
    "build_sections",
    "render_html",
    "write_html",
    "write_pdf",
]
