"""`retroface eval`: accuracy and fairness of the deployed pipeline, measured on public data.

Evaluations need no account (they touch no casework). ``eval calibrate`` changes the operating
threshold every later search records, so it needs the admin role and is audited.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from retroface.cli.common import console, err_console, fail, print_json, user_errors
from retroface.cli.session import state

if TYPE_CHECKING:
    from retroface.eval.embeddings_cache import EngineSpec, ProgressFn

app = typer.Typer(
    help="Accuracy evaluation: identify (1:N), verify (1:1), calibrate, accuracy-doc.",
    no_args_is_help=True,
)

_BACKEND_HELP = "Face backend (arcface or dlib); default: RETROFACE_BACKEND."


# --------------------------------------------------------------------------------------------
# Plumbing
# --------------------------------------------------------------------------------------------


@contextmanager
def _progress() -> Iterator[ProgressFn]:
    """A Rich progress bar on stderr (a line per 10% when stderr is not a terminal)."""
    if err_console.is_terminal:
        columns = (
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        with Progress(*columns, console=err_console, transient=True) as bar:
            tasks: dict[str, TaskID] = {}

            def update(label: str, done: int, total: int) -> None:
                if label not in tasks:
                    tasks[label] = bar.add_task(label, total=total)
                bar.update(tasks[label], completed=done, total=total)

            yield update
        return
    shown: dict[str, int] = {}  # label -> last printed count

    def lines(label: str, done: int, total: int) -> None:
        step = max(1, total // 10)
        prev = shown.get(label)
        if prev is not None and done < prev:
            prev = None  # the same label again (next backend or width): start over
        if prev is None or (done == total and prev != total) or done // step > prev // step:
            shown[label] = done
            print(f"{label}: {done}/{total}", file=sys.stderr, flush=True)

    yield lines


def _spec(backend: str | None, det_size: int | None, flip: bool | None) -> EngineSpec:
    from retroface.eval.embeddings_cache import EngineSpec
    from retroface.vision.engines import BACKENDS, engine_options

    s = state.ctx.settings
    name = backend or s.backend
    if name not in BACKENDS:
        fail(f"unknown backend {name!r}; choose one of {', '.join(BACKENDS)}")
    opts = engine_options(s, backend=name, det_size=det_size, flip=flip)
    return EngineSpec(**opts.to_dict())


def _cache_dir(no_cache: bool) -> Path | None:
    """``RETROFACE_EVAL_CACHE`` if set (CI can keep it between runs), else under the home."""
    from retroface.eval.embeddings_cache import CACHE_DIRNAME

    if no_cache:
        return None
    override = os.environ.get("RETROFACE_EVAL_CACHE")
    return Path(override) if override else state.ctx.home / CACHE_DIRNAME


def _evaluator(
    backend: str | None,
    det_size: int | None,
    flip: bool | None,
    workers: int | None,
    no_cache: bool,
    progress: ProgressFn,
) -> Any:
    from retroface.eval.runner import Evaluator

    ev = Evaluator(_spec(backend, det_size, flip), _cache_dir(no_cache), workers, progress)
    ev.engine  # noqa: B018 - build now: an unknown backend or missing weights fail before work
    return ev


def _pct(value: float | None) -> str:
    from retroface.eval.metrics import format_percent

    return format_percent(value)


def _ci(ci: Any) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "n/a"
    return f"{_pct(ci[0])}–{_pct(ci[1])}"


def _default_data_dir() -> Path:
    env = os.environ.get("RETROFACE_TEST_DATA")
    return Path(env) if env else Path.cwd().parent / "shared" / "data"


# Options shared by the commands (typer needs them as defaults)
_BACKEND = typer.Option(None, "--backend", help=_BACKEND_HELP)
_LIMIT = typer.Option(None, "--limit", min=2, help="Only the first N identity folders (by name).")
_N_BOOT = typer.Option(1000, "--n-boot", min=10, help="Bootstrap replicates for intervals.")
_WORKERS = typer.Option(None, "--workers", min=1, help="Embedding processes (default: cores).")
_NO_CACHE = typer.Option(
    False, "--no-cache", help="Do not read or write the embedding cache (operational images!)."
)
_DET_SIZE = typer.Option(None, "--det-size", help="Detector input size (default: settings).")
_FLIP = typer.Option(None, "--flip/--no-flip", help="Flip augmentation (default: settings).")


# --------------------------------------------------------------------------------------------
# identify
# --------------------------------------------------------------------------------------------


@app.command("identify")
def identify(
    dataset: Path = typer.Argument(..., help="Folder with one sub-folder of images per identity."),
    backend: str | None = _BACKEND,
    protocol: Path | None = typer.Option(
        None,
        "--protocol",
        help="CSV path,identity,role (gallery/mated/nonmated), paths relative to the CSV. "
        "Default: <parent>/<name>_1n_protocol.csv if present, else built from the folders.",
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    html: Path | None = typer.Option(None, "--html", help="Write an HTML report."),
    pdf: Path | None = typer.Option(None, "--pdf", help="Write a PDF report."),
    attributes: Path | None = typer.Option(
        None, "--attributes", help="CSV with an 'identity' column and attribute columns."
    ),
    degrade: str | None = typer.Option(
        None, "--degrade", help="Also search with probes degraded to these face widths: 40,24,16."
    ),
    limit: int | None = _LIMIT,
    exclude_identity: list[str] | None = typer.Option(
        None,
        "--exclude-identity",
        help="Leave an identity out (repeatable), e.g. a known label error; it is recorded.",
    ),
    n_boot: int = _N_BOOT,
    min_group: int = typer.Option(
        100, "--min-group", min=1, help="Searches a group needs before its rates are compared."
    ),
    workers: int | None = _WORKERS,
    no_cache: bool = _NO_CACHE,
    det_size: int | None = _DET_SIZE,
    flip: bool | None = _FLIP,
) -> None:
    """Open-set 1:N accuracy: rank-1/5/20, FNIR at FPIR 10%/1%/0.1%, failures, degradation."""
    from retroface.eval.dataset import resolve_protocol
    from retroface.eval.degrade import parse_widths
    from retroface.eval.runner import identify as run_identify

    widths: list[int] = []
    if degrade:
        try:
            widths = parse_widths(degrade)
        except ValueError as exc:
            fail(str(exc))
    if attributes is not None and not attributes.is_file():
        fail(f"{attributes}: no such file")
    with user_errors():
        proto = resolve_protocol(dataset, protocol, limit)
        if exclude_identity:
            proto = proto.without(exclude_identity, "--exclude-identity")
        with _progress() as progress:
            ev = _evaluator(backend, det_size, flip, workers, no_cache, progress)
            report = run_identify(
                ev,
                proto,
                degrade_widths=widths,
                attributes=attributes,
                n_boot=n_boot,
                min_group_searches=min_group,
            )
    data = report.to_dict()
    _write_reports(report, data, html, pdf)
    if json_out:
        print_json(data)
        return
    _print_identify(data)


def _report_content(report: Any, data: dict[str, Any]) -> Any:
    from retroface.eval.report import ReportContent

    demo = data.get("demographics") or {}
    first = next(iter(demo.values()), None)
    notes = list(data["notes"])
    for column, d in demo.items():
        notes.append(f"Attribute '{column}': {d['summary']}")
    if len(demo) > 1:
        notes.append(f"The demographic section shows the first attribute ({next(iter(demo))}).")
    q = data["quality_vs_miss"]["rank1"]
    notes.append(
        f"Probe quality verdict: flags {_pct(q['share_of_misses_flagged'])} of rank-1 misses "
        f"({q['misses_flagged']}/{q['misses']}) and {_pct(q['share_of_hits_flagged'])} of hits "
        f"({q['hits_flagged']}/{q['hits']})."
    )
    if report.degrade:
        notes.append(
            "Robustness: the first point is the undegraded run at the probes' median face width."
        )
        for p in data["degrade"]["points"]:
            dq = p["quality_vs_miss"]["rank1"]
            notes.append(
                f"Probes degraded to {p['face_width_px']} px: rank-1 {_pct(p['rank1'])}, FNIR "
                f"{_pct(p['fnir_at_fpir_0.01'].get('fnir'))} at FPIR 1%, "
                f"{p['failure_to_detect']['total']} probe(s) without a face; quality verdict "
                f"flags {_pct(dq['share_of_misses_flagged'])} of misses and "
                f"{_pct(dq['share_of_hits_flagged'])} of hits."
            )
    dataset = dict(data["dataset"]) | {
        "non-mated searches used for FPIR": data["nonmated"]["used_for_fpir_figures"],
        "of which leave-one-identity-out": data["nonmated"]["leave_one_identity_out"],
    }
    identification = report.result.to_dict()
    return ReportContent(
        title=f"1:N accuracy of {data['model']['backend']} on {Path(data['dataset']['path']).name}",
        identification=identification,
        demographics=first["result"] if first else None,
        # the first attribute's groups on each degraded probe set, at the same threshold
        demographics_more={
            f"probes degraded to {p['face_width_px']} px": next(iter(p["demographics"].values()))[
                "result"
            ]
            for p in (data.get("degrade") or {}).get("points", [])
            if p.get("demographics")
        },
        robustness=report.robustness(),
        dataset=dataset,
        model={k: v for k, v in data["model"].items() if k != "weights"},
        notes=notes,
    )


def _write_reports(report: Any, data: dict[str, Any], html: Path | None, pdf: Path | None) -> None:
    if not html and not pdf:
        return
    from retroface.eval.report import write_html, write_pdf

    content = _report_content(report, data)
    if html:
        write_html(content, html)
        err_console.print(f"HTML report written to {html}")
    if pdf:
        write_pdf(content, pdf)
        err_console.print(f"PDF report written to {pdf}")


def _print_identify(d: dict[str, Any]) -> None:
    ds, nm, fl = d["dataset"], d["nonmated"], d["failures"]
    console.print(
        f"[bold]{d['model']['key']}[/] on {ds['path']} ({ds['protocol']}): "
        f"{ds['gallery_images']:,} gallery images, {d['n_mated']:,} mated searches, "
        f"{nm['protocol']:,} non-mated + {nm['leave_one_identity_out']:,} leave-one-out = "
        f"{d['n_nonmated']:,} non-mated searches"
    )
    table = Table(title="Rank-k identification rate (no threshold)")
    for col in ("rank", "rate", "95% interval"):
        table.add_column(col, justify="right")
    for k in (1, 5, 20):
        table.add_row(str(k), _pct(d.get(f"rank{k}")), _ci(d["intervals"].get(f"rank{k}")))
    console.print(table)
    table = Table(title=f"FNIR at FPIR ({d['n_nonmated']:,} non-mated searches)")
    for col in ("FPIR", "threshold", "FNIR", "95% interval", "protocol only", "samples"):
        table.add_column(col, justify="right")
    for key, p in d["fnir_at_fpir"].items():
        po = p["protocol_only"]
        table.add_row(
            key,
            "n/a" if p["threshold"] is None else f"{p['threshold']:.4f}",
            _pct(p["fnir"]),
            _ci(p["ci"]),
            f"{_pct(po['fnir'])} (n={po['n_nonmated']:,}"
            + (", too few)" if po["insufficient_samples"] else ")"),
            f"too few (needs {p['nonmated_needed']:,})" if p["insufficient_samples"] else "ok",
        )
    console.print(table)
    console.print(
        f"failure to enrol: {fl['failure_to_enrol']} gallery image(s); failure to detect: "
        f"{fl['failure_to_detect_mated']} mated, {fl['failure_to_detect_nonmated']} non-mated"
    )
    _print_quality(d["quality_vs_miss"])
    if "degrade" in d:
        table = Table(title="Degraded probes (CCTV-like)")
        for col in (
            "face px",
            "rank-1",
            "95% interval",
            "FNIR @ FPIR 1%",
            "no face",
            "misses flagged",
        ):
            table.add_column(col, justify="right")
        for p in d["degrade"]["points"]:
            q = p["quality_vs_miss"]["rank1"]
            table.add_row(
                str(p["face_width_px"]),
                _pct(p["rank1"]),
                _ci(p["rank1_ci"]),
                _pct(p["fnir_at_fpir_0.01"].get("fnir")),
                str(p["failure_to_detect"]["total"]),
                _pct(q["share_of_misses_flagged"]),
            )
        console.print(table)
    for column, demo in (d.get("demographics") or {}).items():
        console.print(f"[bold]{column}[/]: {demo['summary']}")


def _print_quality(q: dict[str, Any]) -> None:
    r = q["rank1"]
    console.print(
        f"quality verdict vs rank-1 miss: {r['misses_flagged']}/{r['misses']} misses flagged "
        f"low quality ({_pct(r['share_of_misses_flagged'])}), {r['hits_flagged']}/{r['hits']} "
        f"hits wrongly flagged ({_pct(r['share_of_hits_flagged'])})"
    )


# --------------------------------------------------------------------------------------------
# verify
# --------------------------------------------------------------------------------------------


@app.command("verify")
def verify(
    pairs_or_dataset: Path = typer.Argument(
        ..., help="An LFW-format pairs file (images under lfw/ beside it) or a dataset folder."
    ),
    backend: str | None = _BACKEND,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    html: Path | None = typer.Option(None, "--html", help="Write an HTML report."),
    pdf: Path | None = typer.Option(None, "--pdf", help="Write a PDF report."),
    limit: int | None = _LIMIT,
    n_boot: int | None = typer.Option(
        None, "--n-boot", min=10, help="Bootstrap replicates (default 1000; 200 for all pairs)."
    ),
    max_impostors: int = typer.Option(
        1_000_000, "--max-impostors", min=0, help="All-pairs: sample impostors above this (0: all)."
    ),
    workers: int | None = _WORKERS,
    no_cache: bool = _NO_CACHE,
    det_size: int | None = _DET_SIZE,
    flip: bool | None = _FLIP,
) -> None:
    """1:1 accuracy: 10-fold pair accuracy, ROC, TAR at FAR 1e-2/1e-3/1e-4, EER."""
    from retroface.eval.dataset import identity_folders, load_pairs
    from retroface.eval.runner import verify_all_pairs, verify_pairs

    if not pairs_or_dataset.exists():
        fail(f"{pairs_or_dataset}: no such file or folder")
    with user_errors(), _progress() as progress:
        ev = _evaluator(backend, det_size, flip, workers, no_cache, progress)
        if pairs_or_dataset.is_file():
            root = pairs_or_dataset.resolve().parent / "lfw"
            allowed = [d.name for d in identity_folders(root, limit)] if limit else None
            pairs = load_pairs(pairs_or_dataset, root, allowed)
            report = verify_pairs(ev, pairs, n_boot=n_boot or 1000)
        else:
            report = verify_all_pairs(
                ev,
                pairs_or_dataset,
                limit=limit,
                max_impostors=max_impostors,
                n_boot=n_boot or 200,
            )
    data = report.to_dict()
    if html or pdf:
        from retroface.eval.report import ReportContent, write_html, write_pdf

        content = ReportContent(
            title=f"1:1 accuracy of {data['model']['backend']} ({report.mode})",
            verification=report.result,
            dataset=data["dataset"],
            model={k: v for k, v in data["model"].items() if k != "weights"},
            notes=report.notes,
        )
        if html:
            write_html(content, html)
            err_console.print(f"HTML report written to {html}")
        if pdf:
            write_pdf(content, pdf)
            err_console.print(f"PDF report written to {pdf}")
    if json_out:
        print_json(data)
        return
    console.print(
        f"[bold]{data['model']['key']}[/] ({report.mode}): {data['n_genuine']:,} genuine, "
        f"{data['n_impostor']:,} impostor pairs; EER {_pct(data['eer'])} [{_ci(data['eer_ci'])}]"
    )
    if data.get("kfold"):
        kf = data["kfold"]
        console.print(
            f"{kf['n_folds']}-fold accuracy {_pct(kf['mean'])} ± {_pct(kf['std_err'])} (s.e.)"
        )
    for key, p in data["tar_at_far"].items():
        note = (
            f" (too few impostors: needs {p['impostor_needed']:,})"
            if p["insufficient_samples"]
            else ""
        )
        console.print(f"TAR @ FAR {key}: {_pct(p['tar'])} [{_ci(p['ci'])}]{note}")
    console.print(f"failure to detect: {data['failures']['failure_to_detect']} image(s)")
    for note in report.notes:
        console.print(f"[dim]{note}[/]")


# --------------------------------------------------------------------------------------------
# calibrate
# --------------------------------------------------------------------------------------------


@app.command("calibrate")
def calibrate(
    dataset: Path = typer.Argument(..., help="Folder with one sub-folder of images per identity."),
    target_fpir: float = typer.Option(
        0.01, "--target-fpir", min=0.0, max=1.0, help="FPIR the threshold must not exceed."
    ),
    backend: str | None = _BACKEND,
    protocol: Path | None = typer.Option(None, "--protocol", help="Protocol CSV (see identify)."),
    attributes: Path | None = typer.Option(
        None,
        "--attributes",
        help="CSV with an 'identity' column and attribute columns: per-group FNIR/FPIR at the "
        "threshold are stored with it (and shown in the DPIA report).",
    ),
    min_group: int = typer.Option(
        100, "--min-group", min=1, help="Searches a group needs before its rates are compared."
    ),
    worst_group: bool = typer.Option(
        False,
        "--worst-group",
        help="Choose the threshold so that every group of --attributes meets the target FPIR "
        "(the worst group's), not only the average over everybody.",
    ),
    override_fairness: str | None = typer.Option(
        None,
        "--override-fairness",
        help="Record the threshold although its per-group differential exceeds the fairness "
        "limits (RETROFACE_FAIRNESS_MAX_*_RATIO): the justification, audited and published.",
    ),
    n_boot: int = _N_BOOT,
    ship: Path | None = typer.Option(
        None,
        "--ship",
        help="Write the model's shipped threshold record to this JSON file (maintainers: "
        "src/retroface/governance/operating_thresholds.json) instead of the database.",
    ),
    limit: int | None = _LIMIT,
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
    workers: int | None = _WORKERS,
    no_cache: bool = _NO_CACHE,
) -> None:
    """Set the operating threshold of a model for a target FPIR (admin; audited).

    Writes a new active ThresholdRecord (older active records of the model are deactivated)
    and its audit record in one transaction; searches then record the threshold they ran at.
    With ``--ship`` it writes the record the package ships for the model instead (no database,
    no account: it is a source file, reviewed like code).
    """
    from retroface.eval.dataset import resolve_protocol
    from retroface.eval.runner import calibrate as run_calibrate
    from retroface.eval.runner import calibration_evaluation, searches_for

    if attributes is not None and not attributes.is_file():
        fail(f"{attributes}: no such file")
    if worst_group and attributes is None:
        fail("--worst-group needs --attributes (the groups whose FPIR must meet the target)")
    with user_errors():
        actor = None
        if ship is None:
            actor = state.principal()
            state.ctx.thresholds.check_may_record(actor)  # before minutes of work, not after
        settings = state.ctx.settings if ship is None else None
        proto = resolve_protocol(dataset, protocol, limit)
        with _progress() as progress:
            ev = _evaluator(
                backend,
                settings.det_size if settings else None,
                settings.flip if settings else None,
                workers,
                no_cache,
                progress,
            )
            searches = searches_for(ev, proto)
        cal = run_calibrate(
            searches,
            proto,
            ev.model.key,
            target_fpir,
            worst_group_attributes=attributes if worst_group else None,
        )
        evaluation = calibration_evaluation(
            searches, proto, cal, attributes, min_searches=min_group, n_boot=n_boot
        )
        if ship is not None:
            command = _calibrate_command(
                dataset,
                target_fpir,
                backend,
                protocol,
                attributes,
                worst_group,
                min_group,
                n_boot,
                ship,
                limit,
            )
            _write_shipped(ship, cal, evaluation, ev.describe(), command)
            record_id = None
        else:
            assert actor is not None
            record_id = state.ctx.thresholds.record(
                actor, cal, ev.describe(), evaluation, override_fairness=override_fairness
            )
    data = {
        "threshold_record_id": record_id,
        "active": ship is None,
        **cal.to_dict(),
        "evaluation": evaluation,
    }
    if json_out:
        print_json(data)
        return
    where = f"record {record_id}" if record_id is not None else f"shipped in {ship}"
    console.print(
        f"threshold {cal.threshold:.4f} for {cal.model_key} ({where}): FPIR "
        f"{_pct(cal.achieved_fpir)} (target {cal.target_fpir:g}) on {cal.n_nonmated:,} "
        f"non-mated searches, FNIR {_pct(cal.fnir)} on {cal.n_mated:,} mated searches"
    )
    if cal.rule.get("rule") == "worst_group":
        console.print(
            f"worst-group rule: {cal.rule['worst_group'] or 'no group'} "
            f"({cal.rule['worst_attribute'] or '-'}) needs {cal.threshold:.4f}; the overall "
            f"rule would give {cal.rule['overall_threshold']:.4f}"
        )
    for key, p in evaluation["points"].items():
        if p["insufficient_samples"]:
            console.print(f"FPIR {key}: {p['why']}")
        else:
            console.print(f"FPIR {key}: threshold {p['threshold']:.4f}, FNIR {_pct(p['fnir'])}")
    for column, demo in (evaluation.get("demographics") or {}).items():
        console.print(f"[bold]{column}[/]: {demo['summary']}")


def _calibrate_command(
    dataset: Path,
    target_fpir: float,
    backend: str | None,
    protocol: Path | None,
    attributes: Path | None,
    worst_group: bool,
    min_group: int,
    n_boot: int,
    ship: Path,
    limit: int | None,
) -> str:
    """The command line that reproduces a shipped record (the paths as they were given)."""
    parts = ["retroface", "eval", "calibrate", str(dataset), "--target-fpir", f"{target_fpir:g}"]
    parts += ["--backend", backend] if backend else []
    parts += ["--protocol", str(protocol)] if protocol else []
    parts += ["--attributes", str(attributes)] if attributes else []
    parts += ["--worst-group"] if worst_group else []
    parts += ["--min-group", str(min_group), "--n-boot", str(n_boot)]
    parts += ["--limit", str(limit)] if limit else []
    return " ".join([*parts, "--ship", str(ship)])


def _write_shipped(
    path: Path,
    cal: Any,
    evaluation: dict[str, Any],
    pipeline: dict[str, Any],
    command: str,
) -> None:
    """Add or replace the model's entry in a shipped-thresholds JSON file (other models kept).

    Absolute paths are left out: the file ships in the package and says where the data came
    from by name, protocol hash and counts."""
    import json
    from datetime import UTC, datetime

    from retroface.governance.thresholds import PIPELINE_KEYS

    try:
        doc = json.loads(path.read_text("utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        fail(f"{path}: {exc}")
    doc.setdefault(
        "about",
        "Operating thresholds shipped with each model (retroface.governance.thresholds): "
        "written by `retroface eval calibrate --ship`; a calibration recorded in the "
        "database overrides them.",
    )
    proto = dict(evaluation.get("protocol") or {})
    proto["path"] = Path(str(proto.get("path", cal.dataset))).name
    source = str(proto.get("protocol", ""))
    if "/" in source:  # e.g. "file:/data/lfw_1n_protocol.csv": keep the kind and the name
        kind = source.split(":", 1)[0] + ":" if ":" in source else ""
        proto["protocol"] = kind + Path(source.split(":", 1)[-1]).name
    models = doc.setdefault("models", {})
    models[cal.model_key] = {
        "threshold": cal.threshold,
        "target_fpir": cal.target_fpir,
        "achieved_fpir": cal.achieved_fpir,
        "fnir": cal.fnir,
        "n_mated": cal.n_mated,
        "n_nonmated": cal.n_nonmated,
        "dataset": Path(cal.dataset).name,
        "dataset_hash": cal.dataset_hash,
        "pipeline": {k: pipeline[k] for k in PIPELINE_KEYS if k in pipeline},
        "command": command,
        "date": datetime.now(UTC).date().isoformat(),
        "evaluation": evaluation | {"protocol": proto},
    }
    path.write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------------
# accuracy-doc
# --------------------------------------------------------------------------------------------


@app.command("accuracy-doc")
def accuracy_doc(
    out: Path = typer.Option(Path("docs/accuracy.md"), "--out", help="Markdown file to write."),
    backends: str = typer.Option("arcface,dlib", "--backends", help="Comma-separated backends."),
    data: Path | None = typer.Option(
        None,
        "--data",
        help="Data folder with lfw/ (default: RETROFACE_TEST_DATA or ../shared/data).",
    ),
    degrade: str = typer.Option("40,24,16", "--degrade", help="Face widths for arcface ('' none)."),
    choices: bool = typer.Option(
        True, "--choices/--no-choices", help="Also measure pipeline choices (flip, detector size)."
    ),
    limit: int | None = _LIMIT,
    n_boot: int = _N_BOOT,
    workers: int | None = _WORKERS,
    json_path: Path | None = typer.Option(
        None, "--json-out", help="Also write all results as JSON."
    ),
) -> None:
    """Regenerate docs/accuracy.md from real runs on LFW (cached embeddings make reruns fast)."""
    from retroface.eval.accuracy_doc import DocOptions, build_accuracy_doc
    from retroface.eval.degrade import parse_widths

    names = [b.strip() for b in backends.split(",") if b.strip()]
    if not names:
        fail("no backends given")
    try:
        widths = parse_widths(degrade) if degrade.strip() else []
    except ValueError as exc:
        fail(str(exc))
    root = (data or _default_data_dir()).resolve()
    if not (root / "lfw").is_dir():
        fail(f"{root / 'lfw'} not found: pass --data or set RETROFACE_TEST_DATA")
    started = time.perf_counter()
    with user_errors(), _progress() as progress:
        opts = DocOptions(
            data=root,
            backends=names,
            degrade_widths=widths,
            choices=choices,
            limit=limit,
            n_boot=n_boot,
            workers=workers,
            cache_dir=_cache_dir(False),
            base_spec=_spec(None, None, None),
            progress=progress,
        )
        text, results = build_accuracy_doc(opts)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        import json

        json_path.write_text(json.dumps(results, indent=2, default=str) + "\n", encoding="utf-8")
    console.print(f"{out} written in {time.perf_counter() - started:.0f} s")
