"""``docs/accuracy.md``, generated from real runs so the published figures can be reproduced.

Every number in the document comes from :mod:`retroface.eval.runner` on the shared LFW data;
nothing is typed in by hand. Embeddings are cached, so regenerating after a wording or metric
change takes seconds, not the ~20 CPU-minutes of the first run.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import platform
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retroface import __version__
from retroface.core.errors import InvalidInputError
from retroface.eval.dataset import PairList, identity_folders, load_pairs, resolve_protocol
from retroface.eval.embeddings_cache import EngineSpec, ProgressFn
from retroface.eval.metrics import format_percent
from retroface.eval.report import accuracy_markdown
from retroface.eval.runner import (
    Evaluator,
    IdentifyReport,
    VerifyReport,
    identify,
    verify_all_pairs,
    verify_pairs,
)
from retroface.vision.weights import ModelUnavailableError

#: LFW images checked by eye to show someone other than their label. Kept in the protocol (it is
#: the published one); the document shows how much each one moves the figures.
KNOWN_LFW_LABEL_ERRORS = {
    "Carlos_Ruckauf": "his only image, Carlos_Ruckauf_0001.jpg, shows Eduardo Duhalde",
    "Raul_Ibanez": "Raul_Ibanez_0001.jpg is the same photograph as Carlos_Beltran_0001.jpg",
    "Noer_Muis": "the same man as Noer_Moeis, under a second spelling",
}


#: Per-identity labels beside ``lfw/`` (evaluation only): per-group figures when present.
ATTRIBUTES_FILE = "lfw_attributes.csv"


@dataclass
class DocOptions:
    data: Path  # folder holding lfw/, lfw_pairs.txt and lfw_1n_protocol.csv
    backends: Sequence[str] = ("arcface", "dlib")
    degrade_widths: Sequence[int] = (40, 24, 16)
    choices: bool = True
    limit: int | None = None
    n_boot: int = 1000
    workers: int | None = None
    cache_dir: Path | None = None
    base_spec: EngineSpec = field(default_factory=EngineSpec)
    progress: ProgressFn | None = None
    all_pairs_max_impostors: int = 1_000_000
    all_pairs_n_boot: int = 200


@dataclass
class BackendRun:
    name: str
    identification: IdentifyReport | None = None
    pairs: VerifyReport | None = None
    all_pairs: VerifyReport | None = None
    without_label_errors: IdentifyReport | None = None
    error: str = ""


def _pairs_or_none(ev: Evaluator, pairs: PairList, opts: DocOptions) -> VerifyReport | None:
    try:
        return verify_pairs(ev, pairs, n_boot=opts.n_boot)
    except InvalidInputError:  # a --limit subset may hold no different-person pair
        return None


def _spec(opts: DocOptions, backend: str, **changes: Any) -> EngineSpec:
    base = opts.base_spec
    spec = replace(
        base,
        backend=backend,
        models_dir=base.models_dir if backend == "arcface" else None,
    )
    return replace(spec, **changes)


def _pct(value: float | None) -> str:
    return format_percent(value)


def _ci(ci: Sequence[float | None] | None) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return ""
    return f" [{_pct(ci[0])}–{_pct(ci[1])}]"


def _fnir(report: IdentifyReport, key: str, plain: bool = False) -> str:
    result = report.plain if plain else report.result
    p = result.fnir_at_fpir[key]
    if p.insufficient_samples:
        return f"n/a (n={result.n_nonmated:,})"
    return f"{_pct(p.fnir)}{_ci(p.ci)}"


def build_accuracy_doc(opts: DocOptions) -> tuple[str, dict[str, Any]]:
    """Run every evaluation the document needs; return the markdown and the raw results."""
    lfw = opts.data / "lfw"
    protocol = resolve_protocol(lfw, None, opts.limit)
    allowed = [d.name for d in identity_folders(lfw, opts.limit)] if opts.limit else None
    pairs = load_pairs(opts.data / "lfw_pairs.txt", lfw, allowed)
    runs: list[BackendRun] = []
    for backend in opts.backends:
        run = BackendRun(backend)
        runs.append(run)
        ev = Evaluator(_spec(opts, backend), opts.cache_dir, opts.workers, opts.progress)
        try:
            ev.engine  # noqa: B018 - fails here when the backend is not installed
        except (ModelUnavailableError, ValueError) as exc:
            run.error = str(exc)
            continue
        widths = list(opts.degrade_widths) if backend == "arcface" else []
        attributes = opts.data / ATTRIBUTES_FILE
        run.identification = identify(
            ev,
            protocol,
            degrade_widths=widths,
            attributes=attributes if attributes.is_file() else None,
            n_boot=opts.n_boot,
        )
        errors = [i for i in KNOWN_LFW_LABEL_ERRORS if i in protocol.identities]
        if errors:
            run.without_label_errors = identify(
                ev, protocol.without(errors, "known label errors"), n_boot=min(opts.n_boot, 200)
            )
        try:
            run.pairs = verify_pairs(ev, pairs, n_boot=opts.n_boot)
        except InvalidInputError:  # a --limit subset may hold no different-person pair
            run.pairs = None
        run.all_pairs = verify_all_pairs(
            ev,
            lfw,
            limit=opts.limit,
            max_impostors=opts.all_pairs_max_impostors,
            n_boot=min(opts.n_boot, opts.all_pairs_n_boot),
        )
    choices: list[tuple[str, IdentifyReport, VerifyReport | None]] = []
    arcface = next((r for r in runs if r.name == "arcface" and r.identification), None)
    if opts.choices and arcface is not None:
        assert arcface.identification is not None
        choices.append(("default (detector 640, no flip)", arcface.identification, arcface.pairs))
        for label, changes in (
            ("flip augmentation on", {"flip": True}),
            ("detector input 1280", {"det_size": 1280}),
        ):
            ev = Evaluator(
                _spec(opts, "arcface", **changes), opts.cache_dir, opts.workers, opts.progress
            )
            choices.append(
                (label, identify(ev, protocol, n_boot=opts.n_boot), _pairs_or_none(ev, pairs, opts))
            )
    per_identity = Counter(e.identity for e in protocol.role("mated"))
    described = protocol.describe() | {"largest_identity": per_identity.most_common(1)[0]}
    text = render(opts, described, runs, choices)
    results = {
        "runs": {
            r.name: {
                "error": r.error or None,
                "identification": r.identification.to_dict() if r.identification else None,
                "pairs": r.pairs.to_dict() if r.pairs else None,
                "all_pairs": r.all_pairs.to_dict() if r.all_pairs else None,
            }
            for r in runs
        },
        "choices": {
            label: {"identification": i.to_dict(), "pairs": v.to_dict() if v else None}
            for label, i, v in choices
        },
    }
    return text, results


# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def render(
    opts: DocOptions,
    dataset: dict[str, Any],
    runs: Sequence[BackendRun],
    choices: Sequence[tuple[str, IdentifyReport, VerifyReport | None]],
) -> str:
    ok = [r for r in runs if r.identification is not None]
    date = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d")
    limited = f" (first {opts.limit} identities only)" if opts.limit else ""
    out: list[str] = [
        "# Accuracy",
        "",
        f"Generated by `retroface eval accuracy-doc` (retroface {__version__}, {date}, "
        f"{platform.machine()}, {os.cpu_count()} CPUs) on the shared LFW data{limited}. "
        "Do not edit by hand: change the code or the data and regenerate. Every figure is the "
        "whole pipeline's (detection, primary face, alignment, embedding, exact search), with "
        "failures to detect and to enrol counted as errors, never dropped.",
        "",
        "**Read these numbers as an upper bound.** LFW is posed-ish press photos, one centred "
        "face per image, 250×250 px: far easier than the CCTV stills a retrospective search "
        "starts from. The degraded-probe curve below is the closer guide for such probes, and "
        "any deployment must be re-measured on data like its own (`retroface eval identify` "
        "on a folder per identity; `retroface eval calibrate` to set the threshold).",
        "",
        "## Data and protocol",
        "",
        f"- Open-set 1:N: `{Path(str(dataset['protocol']).removeprefix('file:')).name}` — "
        f"{dataset['gallery_images']:,} gallery images (one per identity with 2+ images, plus "
        "single-image distractors), "
        f"{dataset['mated_searches']:,} mated searches, "
        f"{dataset['nonmated_searches_protocol']:,} non-mated searches; protocol sha256 "
        f"`{str(dataset['dataset_hash'])[:16]}…`.",
        "- FPIR 0.1% needs at least 3,000 non-mated searches (rule of three) and the protocol "
        "has about 1,000, so every FNIR-at-FPIR figure below uses the protocol's non-mated "
        "searches **plus leave-one-identity-out searches**: each mated probe searched against "
        "the gallery without its own identity, whose top score is a non-mated sample. The "
        "protocol-only figures are listed beside them. The added samples re-use mated probe "
        f"images ({_largest_identity(dataset)}), so intervals are somewhat optimistic.",
        "- 1:1: `lfw_pairs.txt` (10-fold accuracy with the file's View 2 folds; its different "
        "pairs are too few for FAR below 1%), and all pairs of `lfw/` (every same-identity "
        "pair genuine, a uniform sample of the different-identity pairs impostor) for TAR at "
        "FAR 0.1% and 0.01%.",
        "- Models (backend/name@version#weight hashes; the version carries the pipeline "
        "revision): "
        + ", ".join(f"`{r.identification.model['key']}`" for r in ok if r.identification)
        + ".",
        "- Intervals: 95% percentile bootstrap "
        f"({opts.n_boot} replicates; {min(opts.n_boot, opts.all_pairs_n_boot)} for all pairs).",
        "",
    ]
    if ok:
        ident = {r.name: r.identification for r in ok}
        block = accuracy_markdown(ident)
        out += [block.replace("## 1:N identification", "## 1:N identification (LFW, open set)")]
        rows = []
        for r in ok:
            rep = r.identification
            assert rep is not None
            nm, fl = rep.nonmated_counts(), rep.failures
            rows.append(
                [
                    r.name,
                    f"{nm['protocol']:,} + {nm['leave_one_identity_out']:,} = "
                    f"{nm['used_for_fpir_figures']:,}",
                    _fnir(rep, "0.1", plain=True),
                    _fnir(rep, "0.01", plain=True),
                    str(fl["failure_to_enrol"]),
                    f"{fl['failure_to_detect_mated']} + {fl['failure_to_detect_nonmated']}",
                ]
            )
        out += [
            _table(
                [
                    "Backend",
                    "Non-mated used (protocol + leave-one-out)",
                    "FNIR @ FPIR 0.1, protocol only",
                    "FNIR @ FPIR 0.01, protocol only",
                    "Failure to enrol (gallery images)",
                    "Failure to detect (mated + non-mated)",
                ],
                rows,
            ),
            "",
            "Protocol only: the protocol file's own non-mated searches, without the "
            "leave-one-out additions (too few for FPIR 0.1%).",
            "",
        ]
        out += _label_noise(ok)
        pairs = {r.name: r.pairs for r in ok if r.pairs}
        out += [
            accuracy_markdown(pairs).replace(
                "## 1:1 verification", "## 1:1 verification: `lfw_pairs.txt`"
            )
        ]
        all_pairs = {r.name: r.all_pairs for r in ok if r.all_pairs}
        block = accuracy_markdown(all_pairs).replace(
            "## 1:1 verification", "## 1:1 verification: all pairs of `lfw/`"
        )
        out += [block]
        notes = [n for r in ok if r.all_pairs for n in r.all_pairs.notes[:2]]
        out += [f"- {n}" for n in dict.fromkeys(notes)] + [""]
    for r in runs:
        if r.error:
            out += [f"Backend `{r.name}` was not measured: {r.error}", ""]
    arc = next((r.identification for r in ok if r.name == "arcface"), None)
    if arc is not None and arc.degrade:
        out += _degrade_section(arc)
    if choices:
        out += _choices_section(choices)
    out += _quality_section(ok)
    out += _operating_section(ok)
    out += _demographics_section(ok)
    out += [
        "## Reproduce",
        "",
        "```",
        "retroface eval accuracy-doc --out docs/accuracy.md     # this file (cached: fast)",
        "retroface eval identify ../shared/data/lfw --json --degrade 40,24,16 --html lfw.html",
        "retroface eval verify ../shared/data/lfw_pairs.txt --json",
        "python bench/eval_lfw.py                                 # JSON in bench/results/",
        "```",
        "",
        "Embeddings are cached under `$RETROFACE_HOME/eval-cache` (plain `.npz`, unencrypted: "
        "for public evaluation data only; `--no-cache` for anything else).",
        "",
    ]
    return "\n".join(out)


def _largest_identity(dataset: dict[str, Any]) -> str:
    name, n = dataset.get("largest_identity", ("", 0))
    total = int(dataset.get("mated_searches", 0)) or 1
    if not n:
        return "each identity's probes are correlated"
    return f"the largest identity, {name}, has {n} probes, {100 * n / total:.1f}% of them"


def _label_noise(runs: Sequence[BackendRun]) -> list[str]:
    """How much the known LFW label errors move the figures (the sensitivity, not a fix)."""
    rows = []
    for r in runs:
        a, b = r.identification, r.without_label_errors
        if a is None or b is None:
            continue
        rows.append(
            [
                r.name,
                f"{_pct(a.result.rank1)} → {_pct(b.result.rank1)}",
                f"{_fnir(a, '0.01')} → {_fnir(b, '0.01')}",
                f"{_fnir(a, '0.001')} → {_fnir(b, '0.001')}",
            ]
        )
    if not rows:
        return []
    listed = "; ".join(f"{k}: {v}" for k, v in KNOWN_LFW_LABEL_ERRORS.items())
    first = next(r.identification for r in runs if r.identification is not None)
    n_nonmated = first.result.n_nonmated
    allowed = math.floor(0.001 * n_nonmated)
    return [
        "### Label errors in LFW",
        "",
        f"Label errors found while checking the worst errors by eye: {listed}. A "
        "mislabelled gallery image is the *same person* as another identity's probes, so "
        "those probes miss at rank 1 and, searched with their own identity left out, give "
        "very high 'non-mated' scores (as does a non-mated probe whose person is in the "
        "gallery under another name). At "
        f"FPIR 0.1% only {allowed} of the {n_nonmated:,} non-mated searches may exceed the "
        "threshold, so a handful of such scores decide it. The figures above keep the "
        "published protocol; without these identities they become:",
        "",
        _table(["Backend", "Rank-1", "FNIR @ FPIR 1%", "FNIR @ FPIR 0.1%"], rows),
        "",
    ]


def _degrade_section(rep: IdentifyReport) -> list[str]:
    rows = [
        [
            f"undegraded (median {rep.median_face_width:.0f} px)" if rep.median_face_width else "",
            f"{_pct(rep.result.rank1)}{_ci(rep.result.intervals.get('rank1'))}",
            _fnir(rep, "0.01"),
            str(
                rep.failures["failure_to_detect_mated"] + rep.failures["failure_to_detect_nonmated"]
            ),
            *_quality_cells(rep.to_dict()["quality_vs_miss"]),
        ]
    ]
    for p in rep.degrade:
        d = p.to_dict()
        op = p.result.fnir_at_fpir["0.01"]
        rows.append(
            [
                f"{p.face_width} px",
                f"{_pct(p.result.rank1)}{_ci(p.result.intervals.get('rank1'))}",
                "n/a" if op.insufficient_samples else f"{_pct(op.fnir)}{_ci(op.ci)}",
                str(d["failure_to_detect"]["total"]),
                *_quality_cells(d["quality_vs_miss"]),
            ]
        )
    return [
        "## Small, compressed probes (arcface)",
        "",
        "Each probe (mated and non-mated; the gallery is untouched) is shrunk until its "
        "detected face box is F pixels wide, blurred (Gaussian, sigma 0.8 px), JPEG-compressed "
        "at quality 30 and scaled back up to its original size, like an enlarged CCTV still. "
        "FNIR at FPIR 1% uses a threshold re-derived from the degraded non-mated searches.",
        "",
        _table(
            [
                "Probe face width",
                "Rank-1",
                "FNIR @ FPIR 1%",
                "No face found (probes)",
                *QUALITY_HEADER,
            ],
            rows,
        ),
        "",
        "The quality columns ask whether the probe quality verdict (`face.quality.acceptable`) "
        "warns the operator: the share of rank-1 misses it flags (higher is better) and the "
        "share of hits it flags needlessly (lower is better), over probes with a face found; "
        "lift is their ratio (how much likelier a miss is flagged than a hit). Probes without "
        "a face found count as misses in the rates and are not in these shares.",
        "",
        *_lift_verdict(rep),
        *_calibrated_verdict(rep),
    ]


def _calibrated_verdict(rep: IdentifyReport) -> list[str]:
    """Coverage of the probe quality model's "poor" verdict, per width (when fitted)."""
    runs = [("undegraded", rep.to_dict()["quality_vs_miss"])] + [
        (f"{p.face_width} px", p.to_dict()["quality_vs_miss"]) for p in rep.degrade
    ]
    rows = []
    for name, q in runs:
        v = q.get("verdict_poor")
        if v is None:
            continue
        rows.append(
            [
                name,
                f"{_pct(v['share_of_misses_flagged'])} ({v['misses_flagged']}/{v['misses']})",
                f"{_pct(v['share_of_hits_flagged'])} ({v['hits_flagged']}/{v['hits']})",
                _pct(v["mean_predicted_chance"]),
                _pct(v["observed_rank1"]),
            ]
        )
    if not rows:
        return []
    return [
        "### The calibrated verdict: chance of finding the mate",
        "",
        "Each probe face also gets an expected chance of finding its mate from the probe "
        "quality model (`retroface.vision.probe_quality`, fitted by "
        "`python bench/fit_probe_quality.py` on these searches with identity-disjoint folds) "
        "and a verdict good / fair / poor on that chance. Here the shipped model is applied "
        "to every search (in-sample: `python bench/fit_probe_quality.py` prints the "
        "out-of-fold figures).",
        "",
        _table(
            [
                "Probe face width",
                "Rank-1 misses rated poor",
                "Hits rated poor",
                "Mean predicted chance",
                "Observed rank-1 (face found)",
            ],
            rows,
        ),
        "",
    ]


def _lift_verdict(rep: IdentifyReport) -> list[str]:
    """One sentence on whether the quality verdict separates misses from hits when degraded."""
    lifts = []
    for p in rep.degrade:
        r = p.to_dict()["quality_vs_miss"]["rank1"]
        if r["share_of_misses_flagged"] is not None and r["share_of_hits_flagged"]:
            lifts.append(r["share_of_misses_flagged"] / r["share_of_hits_flagged"])
    if not lifts:
        return []
    if all(0.8 <= v <= 1.25 for v in lifts):
        return [
            "At every degraded width the verdict flags misses and hits alike (lift "
            f"{min(lifts):.2g}–{max(lifts):.2g}): it says the probe is degraded, not which "
            "searches will fail. Treat a flag as 'expect a weak candidate list', and a "
            "missing flag as no assurance.",
            "",
        ]
    return [
        f"Across degraded widths the verdict flags misses {min(lifts):.2g}–{max(lifts):.2g} "
        "times as often as hits.",
        "",
    ]


def _quality_cells(q: dict[str, Any]) -> list[str]:
    r = q["rank1"]
    miss, hit = r["share_of_misses_flagged"], r["share_of_hits_flagged"]
    lift = f"{miss / hit:.2g}" if miss is not None and hit else "n/a"
    return [
        f"{_pct(miss)} ({r['misses_flagged']}/{r['misses']})",
        f"{_pct(hit)} ({r['hits_flagged']}/{r['hits']})",
        lift,
    ]


QUALITY_HEADER = [
    "Rank-1 misses flagged low quality",
    "Hits flagged low quality",
    "Lift (1 = no information)",
]


def _choices_section(
    choices: Sequence[tuple[str, IdentifyReport, VerifyReport | None]],
) -> list[str]:
    rows = []
    for label, rep, ver in choices:
        kf = ver.result.kfold if ver else None
        rows.append(
            [
                label,
                f"{_pct(rep.result.rank1)}{_ci(rep.result.intervals.get('rank1'))}",
                _fnir(rep, "0.01"),
                _fnir(rep, "0.001"),
                f"{_pct(kf.mean)} ± {_pct(kf.std_err)}" if kf else "—",
                str(
                    rep.failures["failure_to_enrol"]
                    + rep.failures["failure_to_detect_mated"]
                    + rep.failures["failure_to_detect_nonmated"]
                ),
            ]
        )
    return [
        "## Pipeline choices measured (arcface)",
        "",
        "Same protocol and pairs; one setting changed at a time.",
        "",
        _table(
            [
                "Pipeline",
                "Rank-1",
                "FNIR @ FPIR 1%",
                "FNIR @ FPIR 0.1%",
                "Pairs 10-fold accuracy",
                "Failures (enrol + detect)",
            ],
            rows,
        ),
        "",
        *_choices_notes(choices),
    ]


def _choices_notes(choices: Sequence[tuple[str, IdentifyReport, VerifyReport | None]]) -> list[str]:
    """What the table says, in words: whether a change is outside the default's interval."""
    if not choices:
        return []
    _, base, _ = choices[0]
    lo, hi = base.result.intervals.get("rank1", (math.nan, math.nan))
    b1 = base.result.rank1 if base.result.rank1 is not None else math.nan
    f_old = base.result.fnir_at_fpir["0.01"].fnir
    notes = []
    for label, rep, _ in choices[1:]:
        r1 = rep.result.rank1 if rep.result.rank1 is not None else math.nan
        f_new = rep.result.fnir_at_fpir["0.01"].fnir
        same = r1 == b1 and f_new == f_old
        inside = lo <= r1 <= hi
        if same:
            text = "gives exactly the default's rank-1 and FNIR"
        else:
            text = (
                f"moves rank-1 from {_pct(b1)} to {_pct(r1)} "
                f"({'inside' if inside else 'outside'} the default's interval) "
                f"and FNIR @ FPIR 1% from {_pct(f_old)} to {_pct(f_new)}"
            )
        if "flip" in label:
            text += (
                "; it embeds each crop twice (the crop and its mirror), one more recogniser "
                "pass per face"
                + (
                    ", so it stays off by default (`RETROFACE_FLIP=1` turns it on)"
                    if inside
                    else ""
                )
            )
        if "1280" in label and same:
            text += (
                ": LFW's 250×250 photos are smaller than either input and never enlarged, so "
                "the detector sees the same pixels; the size matters for large frames with "
                "small faces (`RETROFACE_DET_SIZE`; see `docs/face-engine.md` for its cost)"
            )
        notes.append(f"- {label[0].upper() + label[1:]} {text}.")
    return [*notes, ""]


def _operating_section(runs: Sequence[BackendRun]) -> list[str]:
    """The operating threshold each model ships with, beside this run's FPIR-1%/0.1% points."""
    from retroface.governance.thresholds import shipped_threshold

    rows = []
    for r in runs:
        if r.identification is None:
            continue
        d = r.identification.to_dict()
        points = d["fnir_at_fpir"]
        shipped = shipped_threshold(d["model"]["key"])
        cells = [
            "n/a" if p is None or p.get("threshold") is None else f"{p['threshold']:.4f}"
            for p in (points.get("0.01"), points.get("0.001"))
        ]
        rows.append(
            [
                r.name,
                *cells,
                "none shipped" if shipped is None else f"{shipped.value:.4f} ({shipped.produced})",
            ]
        )
    if not rows:
        return []
    return [
        "## Operating threshold",
        "",
        _table(["Backend", "Threshold @ FPIR 1%", "Threshold @ FPIR 0.1%", "Shipped"], rows),
        "",
        "Searches list only candidates at or above the shipped threshold (FPIR 1% on this "
        "protocol, `src/retroface/governance/operating_thresholds.json`, written by `retroface "
        "eval calibrate DATASET --attributes CSV --ship FILE`) unless a calibration on the "
        "force's own data is recorded, or the case is authorised for investigation mode (see "
        "docs/governance.md). Impostor scores run higher on in-the-wild photographs (issue #13 "
        "measured the FPIR-1% threshold at 0.42 on such data): re-calibrate on your own images. "
        "That protocol enrols one image per subject, where a subject's fused template (how "
        "searches score a subject with several images, docs/fairness.md) is its one template; on "
        "a gallery with two images per subject the FPIR-1% threshold measured 0.3594 scored by "
        "fused template and 0.3576 by best image (0.3491 with one image): a deployer whose "
        "subjects have several images calibrates on their own gallery (`retroface eval "
        "calibrate`, which scores such identities as searches do). "
        "The FPIR 0.1% point is set by a handful of label errors (see above) and is not used.",
        "",
    ]


def _demographics_section(runs: Sequence[BackendRun]) -> list[str]:
    """Per-group FNIR/FPIR at each backend's FPIR-1% threshold, from ``lfw_attributes.csv``."""
    out = ["## Demographic differentials at the operating threshold", ""]
    measured = False
    for r in runs:
        demo = (r.identification.demographics if r.identification else None) or {}
        for column, d in demo.items():
            measured = True
            res = d["result"]
            rows = [
                [
                    g["group"],
                    f"{g['n_mated']:,}",
                    f"{_pct(g['fnir'])}{_ci(g['fnir_ci'])}",
                    f"{g['n_nonmated']:,}",
                    f"{_pct(g['fpir'])}{_ci(g['fpir_ci'])}",
                ]
                for g in res["groups"].values()
            ]
            ratio = ", ".join(
                f"{rate.upper()} ratio {res[f'{rate}_ratio']:.2f} "
                f"({res[f'{rate}_highest']} / {res[f'{rate}_lowest']})"
                for rate in ("fnir", "fpir")
                if res[f"{rate}_ratio"] is not None
            )
            out += [
                f"**{r.name}**, by `{column}`, at threshold {res['threshold']:.4f} (FPIR 1% "
                f"overall){': ' + ratio if ratio else ''}.",
                "",
                _table(
                    ["Group", "Mated", "Rank-1 FNIR", "Non-mated", "FPIR"],
                    rows,
                ),
                "",
                d["summary"],
                "",
            ]
    if not measured:
        return [
            *out,
            f"Not measured: no `{ATTRIBUTES_FILE}` beside `lfw/`. `retroface eval identify "
            "DATASET --attributes labels.csv` (an `identity` column plus one column per "
            "attribute) reports FNIR and FPIR per group at the one operating threshold.",
            "",
        ]
    return [
        *out,
        f"Labels: `{ATTRIBUTES_FILE}` (sex of each LFW identity), used for evaluation only; "
        "no search reads them. Identities without a label are counted as `unlabelled` and never "
        "compared. Non-mated searches include the leave-one-identity-out ones, grouped by the "
        "probe's identity; brackets are 95% bootstrap intervals.",
        "",
    ]


def _quality_section(runs: Sequence[BackendRun]) -> list[str]:
    rows = []
    for r in runs:
        if r.identification is None:
            continue
        q = r.identification.to_dict()["quality_vs_miss"]
        rows.append([r.name, *_quality_cells(q), str(q["flagged_low_quality"])])
    if not rows:
        return []
    return [
        "## Probe quality verdict on undegraded LFW probes",
        "",
        _table(
            ["Backend", *QUALITY_HEADER, "Mated probes flagged"],
            rows,
        ),
        "",
    ]
