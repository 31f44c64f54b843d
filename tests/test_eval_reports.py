"""Plots, HTML/PDF reports and the accuracy markdown render and carry the key numbers."""

from __future__ import annotations

import base64
import json
import re
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from retroface.eval import plots
from retroface.eval.metrics import (
    DemographicResult,
    IdentificationResult,
    VerificationResult,
    by_group,
    evaluate_identification,
    evaluate_verification,
    format_percent,
    kfold_accuracy,
)
from retroface.eval.report import (
    ReportContent,
    accuracy_markdown,
    render_html,
    write_html,
    write_pdf,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def identification() -> IdentificationResult:
    rng = np.random.default_rng(1)
    quality = rng.normal(0.6, 0.15, 400)
    ranks = np.where(quality > 0.35, 1, np.where(quality > 0.2, rng.integers(2, 30, 400), 0))
    return evaluate_identification(
        ranks, quality, rng.normal(0.2, 0.1, 1000), n_boot=100, gallery_size=5000
    )


@pytest.fixture(scope="module")
def verification() -> VerificationResult:
    rng = np.random.default_rng(2)
    genuine, impostor = rng.normal(0.6, 0.15, 300), rng.normal(0.2, 0.1, 300)
    scores = np.concatenate([genuine, impostor]).reshape(2, 10, 30).transpose(1, 0, 2).ravel()
    labels = np.tile(np.repeat([1, 0], 30), 10)  # 10 folds of 30 matched + 30 mismatched
    kfold = kfold_accuracy(scores, labels, folds=10)
    return evaluate_verification(genuine, impostor, n_boot=100, kfold=kfold)


@pytest.fixture(scope="module")
def demographics() -> DemographicResult:
    rng = np.random.default_rng(3)
    return by_group(
        np.ones(300, dtype=int),
        rng.normal(0.6, 0.15, 300),
        rng.choice(["women", "men", "small<group>"], 300, p=[0.5, 0.45, 0.05]),
        rng.normal(0.2, 0.1, 600),
        rng.choice(["women", "men", "small<group>"], 600, p=[0.5, 0.45, 0.05]),
        0.4,
        n_boot=100,
        det_points=100,
    )


def _is_png(path: Path) -> bool:
    return path.read_bytes()[:8] == PNG_MAGIC


# ---------------------------------------------------------------------------- plots


def test_plots_render(
    tmp_path: Path,
    identification: IdentificationResult,
    verification: VerificationResult,
    demographics: DemographicResult,
) -> None:
    rng = np.random.default_rng(0)
    det = identification.det
    written = [
        plots.plot_cmc(identification.cmc, tmp_path / "cmc.png", formats=("svg",)),
        plots.plot_cmc({"a": identification.cmc, "b": [0.5] * 20}, tmp_path / "cmc2.png"),
        plots.plot_det((det["fpir"], det["fnir"]), tmp_path / "det.png", fpir_targets=(0.1, 0.01)),
        plots.plot_roc(
            {"model": (verification.roc["far"], verification.roc["tar"])}, tmp_path / "roc.png"
        ),
        plots.plot_score_histograms(
            rng.normal(0.6, 0.1, 200), rng.normal(0.2, 0.1, 2000), tmp_path / "h.png", threshold=0.4
        ),
        plots.plot_group_bars(demographics, tmp_path / "groups.png"),
        plots.plot_robustness(
            [16, 24, 32, 48, 64],
            [0.1, 0.35, 0.6, 0.8, 0.9],
            tmp_path / "rob.png",
            ci=[(0.05, 0.15), (0.3, 0.4), (0.55, 0.65), (0.75, 0.85), (0.85, 0.95)],
        ),
    ]
    for path in written:
        assert path.exists()
        assert path.stat().st_size > 2048, path
        assert _is_png(path), path
    svg = tmp_path / "cmc.svg"
    assert svg.stat().st_size > 2048
    assert b"<svg" in svg.read_bytes()[:1000]


def test_plots_leave_pyplot_alone(tmp_path: Path) -> None:
    before = "matplotlib.pyplot" in sys.modules
    plots.plot_cmc([0.5, 0.7, 0.9], tmp_path / "c.png")
    # this module never imports pyplot itself (other tests in the process might)
    assert ("matplotlib.pyplot" in sys.modules) == before


def test_group_bars_from_dict(tmp_path: Path, demographics: DemographicResult) -> None:
    stored = json.loads(json.dumps(demographics.to_dict()))
    assert _is_png(plots.plot_group_bars(stored, tmp_path / "g.png"))


def test_group_det_curves_pass_through_each_group_s_operating_point(
    demographics: DemographicResult, tmp_path: Path
) -> None:
    """Each group's DET curve holds the rates the table reports at the threshold, and the dot
    drawn on it is exactly that point; unlabelled identities are never drawn as a group."""
    d = json.loads(json.dumps(demographics.to_dict()))
    assert set(d["det"]) == set(d["groups"])
    for name, c in d["det"].items():
        g = d["groups"][name]
        th = np.asarray(c["threshold"])
        assert np.all(np.diff(th) > 0)
        # the (thinned) curve brackets the operating point: a lower threshold returns at least
        # as many candidates, a higher one misses at least as many mates
        below, above = th < d["threshold"], th >= d["threshold"]
        assert below.any() and above.any()
        lo, hi = int(np.flatnonzero(below)[-1]), int(np.flatnonzero(above)[0])
        assert c["fpir"][lo] >= g["fpir"] >= c["fpir"][hi]
        assert c["fnir"][lo] <= g["fnir"] <= c["fnir"][hi]
    d["groups"]["unlabelled"] = dict(d["groups"]["men"], group="unlabelled")
    d["det"]["unlabelled"] = d["det"]["men"]
    fig = plots.group_det_figure(d)
    ax = fig.axes[0]
    dots = {ln.get_gid(): ln for ln in ax.lines if (ln.get_gid() or "").startswith("operating")}
    drawn = {name for name, g in d["groups"].items() if g["fpir"] > 0 and g["fnir"] > 0}
    assert set(dots) == {f"operating-point:{n}" for n in drawn - {"unlabelled"}}
    for name in drawn - {"unlabelled"}:
        x, y = dots[f"operating-point:{name}"].get_data()
        assert (float(x[0]), float(y[0])) == (d["groups"][name]["fpir"], d["groups"][name]["fnir"])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    assert not any("unlabelled" in t.get_text() for t in ax.get_legend().get_texts())
    assert _is_png(plots.plot_group_det(d, tmp_path / "gdet.png"))


def test_group_det_only_when_asked_for() -> None:
    """Stored evaluations (threshold records) stay small: no curves unless asked for; asked
    for without thinning, the curve holds the operating point itself."""
    rng = np.random.default_rng(5)
    groups = rng.choice(["a", "b"], 200)
    r = by_group(
        np.ones(200, dtype=int),
        rng.normal(0.6, 0.15, 200),
        groups,
        rng.normal(0.2, 0.1, 400),
        rng.choice(["a", "b"], 400),
        0.4,
        n_boot=10,
    )
    assert r.det == {} and "det" not in r.to_dict()
    full = by_group(
        np.ones(200, dtype=int),
        rng.normal(0.6, 0.15, 200),
        groups,
        rng.normal(0.2, 0.1, 400),
        rng.choice(["a", "b"], 400),
        0.4,
        n_boot=10,
        det_points=10_000,
    )
    for name, c in full.det.items():
        i = int(np.searchsorted(np.asarray(c["threshold"]), 0.4))
        assert (c["fpir"][i], c["fnir"][i]) == pytest.approx(
            (full.groups[name].fpir, full.groups[name].fnir)
        )


# ---------------------------------------------------------------------------- HTML


class _Collector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.images: list[str] = []
        self.text: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_title = tag == "title"
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        self.text.append(data)


def _content(
    identification: IdentificationResult,
    verification: VerificationResult,
    demographics: DemographicResult,
) -> ReportContent:
    return ReportContent(
        title="Accuracy of test-model on toy-set",
        identification=identification,
        # a stored (JSON round-tripped) result renders the same way as the object
        verification=json.loads(json.dumps(verification.to_dict())),
        demographics=demographics,
        robustness={"face_width_px": [16, 32, 64], "rank1": [0.2, 0.6, 0.9]},
        dataset={"name": "toy-set", "subjects": 1234, "<script>alert(1)</script>": "escaped"},
        model={"backend": "arcface", "weights_sha256": "abc123"},
        generated_at="2025-01-01 00:00 UTC",
    )


def test_html_report(
    tmp_path: Path,
    identification: IdentificationResult,
    verification: VerificationResult,
    demographics: DemographicResult,
) -> None:
    content = _content(identification, verification, demographics)
    path = write_html(content, tmp_path / "report" / "report.html")
    html = path.read_text(encoding="utf-8")
    parser = _Collector()
    parser.feed(html)
    parser.close()
    assert parser.title == "Accuracy of test-model on toy-set"
    assert {"table", "figure", "section"} <= set(parser.tags)
    # self-contained: every image is an embedded PNG
    # CMC, DET, mated/non-mated scores, ROC, genuine/impostor scores, groups, group DET,
    # robustness
    assert len(parser.images) == 8
    for src in parser.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG_MAGIC
    assert "http://" not in html and "https://" not in html
    text = " ".join(parser.text)
    d = identification.to_dict()
    assert f"{100 * d['rank1']:.1f}%" in text
    assert "1,000" in text and "400" in text and "5,000" in text  # sample sizes
    fnir = d["fnir_at_fpir"]["0.01"]["fnir"]
    assert f"{100 * fnir:.1f}%" in text
    assert "insufficient samples: needs ≥ 3,000 non-mated" in text  # FPIR 0.001 with n=1000
    v = verification.to_dict()
    assert f"{100 * v['eer']:.1f}%" in text
    assert "toy-set" in text and "abc123" in text
    assert "innocent candidate" in text  # plain-language demographic summary
    # the per-group DET, its caption giving each group's operating point as the table does
    caption = next(t for t in parser.text if t.startswith("Per-group DET curves"))
    for g in demographics.groups.values():
        assert f"{g.group}: FPIR {format_percent(g.fpir)}, FNIR {format_percent(g.fnir)}" in (
            caption.replace("&lt;", "<").replace("&gt;", ">")
        )
    # user-supplied strings are escaped, never injected as markup
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "script" not in parser.tags
    assert render_html(content) == html


def test_html_report_parts_are_optional(identification: IdentificationResult) -> None:
    html = render_html(ReportContent(identification=identification.to_dict()))
    assert "1:N identification" in html
    assert "1:1 verification" not in html
    assert "Definitions and conventions" in html


def test_pdf_report(
    tmp_path: Path,
    identification: IdentificationResult,
    verification: VerificationResult,
    demographics: DemographicResult,
) -> None:
    path = write_pdf(_content(identification, verification, demographics), tmp_path / "r.pdf")
    data = path.read_bytes()
    assert data.startswith(b"%PDF")
    assert len(data) > 20_000
    pages = re.search(rb"/Count (\d+)", data)
    assert pages is not None
    assert int(pages.group(1)) >= 8  # text page(s) with the tables + one page per figure
    assert data.rstrip().endswith(b"%%EOF")


# ---------------------------------------------------------------------------- markdown


def test_accuracy_markdown(
    identification: IdentificationResult, verification: VerificationResult
) -> None:
    md = accuracy_markdown(
        {
            "arcface": {"identification": identification, "verification": verification},
            "dlib|resnet": {"identification": identification.to_dict()},
        }
    )
    lines = md.splitlines()
    assert "## 1:N identification" in lines and "## 1:1 verification" in lines
    header = next(line for line in lines if line.startswith("| Backend | Mated"))
    assert "FNIR @ FPIR 0.1 | FNIR @ FPIR 0.01 | FNIR @ FPIR 0.001" in header
    rows = [line for line in lines if line.startswith("| arcface") or line.startswith("| dlib")]
    assert len(rows) == 3  # two identification rows, one verification row
    assert rows[1].startswith("| dlib\\|resnet |")  # pipes in names do not break the table
    d = identification.to_dict()
    assert f"| {100 * d['rank1']:.1f}% [" in rows[0]
    assert "n/a (needs ≥ 3,000 non-mated)" in rows[0]
    assert "(10 folds)" in rows[2]
    cells = [len(re.findall(r"(?<!\\)\|", line)) for line in [header, *rows[:2]]]
    assert len(set(cells)) == 1
    assert accuracy_markdown({}) == ""


def test_det_plot_without_errors_renders(tmp_path: Path) -> None:
    """A perfect small run has no DET point on log axes; the plot says so instead of failing."""
    from retroface.eval.plots import plot_det

    out = plot_det((np.array([0.0, 0.0]), np.array([0.0, 0.1])), tmp_path / "det.png")
    assert out.stat().st_size > 2000
