"""Evaluation runner and `retroface eval`: protocols, searches, degradation, calibration.

Fast tests use tiny datasets: a synthetic tree in ``tmp_path`` (LFW images copied there, never
into the repository) or ``--limit`` on the shared LFW folder. Embeddings are cached in one
folder per test module (``RETROFACE_EVAL_CACHE``), so each image is embedded once. There is no
demographic label file in the shared data: the attribute test uses a *synthetic* split by the
first letter of the name, only to exercise the code path; its numbers mean nothing.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from collections.abc import Callable, Iterator
from html import unescape
from pathlib import Path

import numpy as np
import pytest
import typer
from sqlalchemy import select
from tests.conftest import ADMIN
from typer.testing import CliRunner

from retroface.cli import eval_cmds
from retroface.cli.session import state
from retroface.config import get_settings
from retroface.context import AppContext
from retroface.eval.dataset import build_protocol, load_pairs, load_protocol, resolve_protocol
from retroface.eval.degrade import DegradeSpec, degrade_image, parse_widths
from retroface.eval.embeddings_cache import EmbeddingSet
from retroface.eval.metrics import format_percent
from retroface.eval.runner import evaluate_searches, run_searches
from retroface.media.images import load_image
from retroface.storage.tables import AuditRecord, ThresholdRecord
from retroface.vision.engines import primary_face
from retroface.vision.types import FaceEngine, ModelIdentity

PASSWORD = "a long test password"
Run = Callable[..., tuple[int, str, str]]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def eval_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("eval-cache")


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, eval_cache: Path) -> Iterator[Run]:
    """Invoke ``retroface eval ...`` in-process; returns (exit code, stdout, stderr).

    The eval commands are mounted on a root app exactly as ``cli/main.py`` mounts them, so the
    test does not depend on that wiring. ``state`` is a module singleton: reset per call.
    """
    monkeypatch.setenv("RETROFACE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RETROFACE_EVAL_CACHE", str(eval_cache))
    monkeypatch.delenv("RETROFACE_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    root = typer.Typer()

    @root.callback()
    def _main(user: str | None = typer.Option(None, "--user")) -> None:
        state.user = user

    root.add_typer(eval_cmds.app, name="eval")

    def invoke(*args: str, ctx: AppContext | None = None) -> tuple[int, str, str]:
        state.__dict__.pop("ctx", None)
        if ctx is not None:
            state.__dict__["ctx"] = ctx
        state._principal = None
        result = CliRunner().invoke(root, list(args), catch_exceptions=False)
        # Rich wraps long error lines: compare messages with whitespace normalised
        return result.exit_code, result.stdout, " ".join(result.stderr.split())

    yield invoke
    state.__dict__.pop("ctx", None)
    state._principal = None
    state.user = None
    get_settings.cache_clear()


def _tree(root: Path, layout: dict[str, int]) -> Path:
    """A folder-per-identity tree of placeholder files (protocols never read the pixels)."""
    for name, n in layout.items():
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(1, n + 1):
            (folder / f"{name}_{i:04d}.jpg").write_bytes(b"not read")
    return root


@pytest.fixture(scope="module")
def small_lfw(data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 14-identity copy of part of LFW (8 with 2-3 images, 6 single) plus a pairs file."""
    src = data_dir / "lfw"
    base = tmp_path_factory.mktemp("small")
    out = base / "lfw"
    multi = [d for d in sorted(src.iterdir()) if len(list(d.iterdir())) >= 3][:8]
    single = [d for d in sorted(src.iterdir()) if len(list(d.iterdir())) == 1][:6]
    for d in multi + single:
        (out / d.name).mkdir(parents=True)
        for p in sorted(d.iterdir())[:3]:
            shutil.copy(p, out / d.name / p.name)
    lines = [f"{d.name}\t1\t2" for d in multi[:4]]
    lines += [f"{a.name}\t1\t{b.name}\t1" for a, b in zip(multi[4:], single[:4], strict=True)]
    (base / "pairs.txt").write_text("\n".join(lines) + "\n")
    return out


# ---------------------------------------------------------------------------- protocols


def test_build_protocol_exact_counts(tmp_path: Path) -> None:
    root = _tree(
        tmp_path / "ds",
        {"Ann": 3, "Bob": 2, "Cat": 1, "Dan": 1, "Eve": 1, "Fay": 0, "Gus": 1},
    )
    p = build_protocol(root)
    roles = {e.rel: e.role for e in p.entries}
    assert p.counts() == {"gallery": 4, "mated": 3, "nonmated": 2}
    assert roles["ds/Ann/Ann_0001.jpg"] == "gallery"
    assert roles["ds/Ann/Ann_0003.jpg"] == "mated"
    # singles sorted by name alternate: Cat gallery, Dan nonmated, Eve gallery, Gus nonmated
    assert [roles[f"ds/{n}/{n}_0001.jpg"] for n in ("Cat", "Dan", "Eve", "Gus")] == [
        "gallery",
        "nonmated",
        "gallery",
        "nonmated",
    ]
    # a protocol file with the same lines has the same hash, whatever the row order
    csv_path = tmp_path / "ds_1n_protocol.csv"
    with csv_path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "identity", "role"])
        for e in reversed(p.entries):
            w.writerow([e.rel, e.identity, e.role])
    assert load_protocol(csv_path).dataset_hash() == p.dataset_hash()
    assert resolve_protocol(root).source.startswith("file:")  # found beside the folder
    assert build_protocol(root, limit=2).counts() == {"gallery": 2, "mated": 3, "nonmated": 0}


def test_built_protocol_reproduces_the_shared_file(data_dir: Path) -> None:
    built = build_protocol(data_dir / "lfw")
    shipped = load_protocol(data_dir / "lfw_1n_protocol.csv")
    assert built.counts() == {"gallery": 1862, "mated": 3298, "nonmated": 1015}
    assert sorted(e.line() for e in built.entries) == sorted(e.line() for e in shipped.entries)
    assert built.dataset_hash() == shipped.dataset_hash()
    limited = resolve_protocol(data_dir / "lfw", limit=60)
    assert limited.source.startswith("file:")
    assert len(limited.identities) <= 60


def test_load_pairs_lfw_format(data_dir: Path) -> None:
    pairs = load_pairs(data_dir / "lfw_pairs.txt")
    assert len(pairs.pairs) == 1487 + 732
    assert pairs.fold_source.startswith("the file's 10")
    assert sum(s for *_, s in pairs.pairs) == 1487


# ---------------------------------------------------------------------------- searches


def _set(vectors: list[list[float] | None]) -> EmbeddingSet:
    n = len(vectors)
    emb = np.array([v or [0.0, 0.0, 0.0] for v in vectors], dtype=np.float32)
    emb /= np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
    found = np.array([v is not None for v in vectors])
    return EmbeddingSet(
        paths=[Path(f"img{i}.jpg") for i in range(n)],
        embeddings=emb,
        found=found,
        boxes=np.zeros((n, 4), np.float32),
        det_scores=np.ones(n, np.float32),
        acceptable=np.ones(n, bool),
        n_faces=found.astype(np.int32),
        errors={},
        model=ModelIdentity("test", "toy", "1", 3, "none"),
        variant="toy",
        computed=n,
        seconds=0.0,
    )


def test_run_searches_ranks_failures_and_leave_one_out() -> None:
    gallery = _set([[1, 0, 0], [0, 1, 0], None, [0, 0, 1]])  # C failed to enrol
    mated = _set([[0.9, 0.1, 0], [0.7, 0.6, 0.1], None, [0.5, 0.5, 0.5]])
    nonmated = _set([[0.2, 0.2, 1.0], None])
    s = run_searches(
        ["A", "B", "C", "D"], gallery, ["A", "B", "B", "C"], mated, ["E", "F"], nonmated
    )
    assert s.gallery_identities == 3 and s.gallery_templates == 3
    # A's probe: mate first; B's first probe is closer to A than to B: rank 2
    assert s.mate_rank.tolist() == [1, 2, 0, 0]
    assert s.mated_ftd.tolist() == [False, False, True, False]
    assert s.mated_fte.tolist() == [False, False, False, True]
    # leave one identity out: the best *other* identity's score; C (not enrolled): best of all
    assert s.loo_top[0] == pytest.approx(mated.embeddings[0] @ gallery.embeddings[1])
    assert s.loo_top[1] == pytest.approx(mated.embeddings[1] @ gallery.embeddings[0])
    assert np.isnan(s.loo_top[2])
    assert s.loo_top[3] == pytest.approx(float(mated.embeddings[3] @ gallery.embeddings[0]))
    assert s.nonmated_top[0] == pytest.approx(nonmated.embeddings[0] @ gallery.embeddings[3])
    assert np.isnan(s.nonmated_top[1]) and s.nonmated_ftd.tolist() == [False, True]
    r = evaluate_searches(s, n_boot=20)
    assert r.n_mated == 4 and r.n_nonmated == 2 + 4
    assert r.rank1 == pytest.approx(0.25)
    assert r.failure_to_detect == 2 and r.failure_to_enrol == 1  # probe images, each once
    assert evaluate_searches(s, augmented=False, n_boot=20).n_nonmated == 2


# ---------------------------------------------------------------------------- degradation


def test_parse_widths() -> None:
    assert parse_widths("40, 24,16") == [40, 24, 16]
    with pytest.raises(ValueError):
        parse_widths("40,x")


def test_degrade_makes_the_face_the_requested_width(engine: FaceEngine, data_dir: Path) -> None:
    paths = sorted((data_dir / "lfw").glob("A*/*_0001.jpg"))[:4]
    for path in paths:
        image = load_image(path)
        face = primary_face(engine.analyse(image), image.shape)
        assert face is not None
        for width in (40, 24):
            out = degrade_image(image, face.box, DegradeSpec(width))
            assert out.image.shape == image.shape  # scaled back up, as an exported still
            small = primary_face(engine.analyse(out.small), out.small.shape)
            assert small is not None, f"{path.name} at {width} px"
            assert 0.75 * width <= small.width <= 1.25 * width, (path.name, small.width)


# ---------------------------------------------------------------------------- commands


def test_identify_json(cli: Run, small_lfw: Path, tmp_path: Path) -> None:
    attrs = tmp_path / "synthetic_attributes.csv"
    names = sorted(d.name for d in small_lfw.iterdir())
    middle = names[len(names) // 2]  # synthetic: alphabetical halves, not a real attribute
    attrs.write_text(
        "identity,letter_split\n"
        + "".join(f"{n},{'first half' if n < middle else 'second half'}\n" for n in names)
    )
    html = tmp_path / "report.html"
    code, out, err = cli(
        "eval",
        "identify",
        str(small_lfw),
        "--json",
        "--n-boot",
        "50",
        "--workers",
        "1",
        "--degrade",
        "24",
        "--attributes",
        str(attrs),
        "--html",
        str(html),
    )
    assert code == 0, err
    d = json.loads(out)
    assert {"rank1", "rank5", "rank20", "fnir_at_fpir", "n_mated", "n_nonmated"} <= set(d)
    assert set(d["fnir_at_fpir"]) == {"0.1", "0.01", "0.001"}
    assert {"fnir", "threshold", "ci", "insufficient_samples"} <= set(d["fnir_at_fpir"]["0.01"])
    assert d["n_mated"] == 8 * 2
    assert d["nonmated"]["protocol"] == 3 and d["nonmated"]["leave_one_identity_out"] == 16
    assert d["n_nonmated"] == d["nonmated"]["used_for_fpir_figures"] == 19
    assert d["rank1"] >= 0.9
    assert d["degrade"]["points"][0]["face_width_px"] == 24
    assert "quality_vs_miss" in d["degrade"]["points"][0]
    demo = d["demographics"]["letter_split"]
    assert demo["summary"] and set(demo["insufficient_groups"]) == {"first half", "second half"}
    assert html.stat().st_size > 10_000
    # per-group DET curves in the report, clean and degraded, with the run's per-group numbers
    degraded = d["degrade"]["points"][0]["demographics"]["letter_split"]["result"]
    assert degraded["threshold"] == demo["result"]["threshold"]  # the deployed threshold
    captions = re.findall(r"<figcaption>(Per-group DET curves[^<]*)</figcaption>", html.read_text())
    assert len(captions) == 2
    for caption, result in zip(captions, (demo["result"], degraded), strict=True):
        assert set(result["det"]) == set(result["groups"])
        for g in result["groups"].values():
            assert (
                f"{g['group']}: FPIR {format_percent(g['fpir'])}, "
                f"FNIR {format_percent(g['fnir'])}" in unescape(caption)
            )
    assert "Demographic differentials: probes degraded to 24 px" in html.read_text()


def test_verify_pairs_and_folder(cli: Run, small_lfw: Path) -> None:
    code, out, err = cli(
        "eval", "verify", str(small_lfw.parent / "pairs.txt"), "--json", "--n-boot", "20"
    )
    assert code == 0, err
    d = json.loads(out)
    assert d["mode"] == "pairs" and d["n_genuine"] == 4 and d["n_impostor"] == 4
    assert set(d["tar_at_far"]) == {"0.01", "0.001", "0.0001"}
    assert d["kfold"]["n_folds"] == 8  # no LFW fold blocks: round-robin over 8 pairs
    code, out, err = cli("eval", "verify", str(small_lfw), "--json", "--n-boot", "20")
    assert code == 0, err
    d = json.loads(out)
    assert d["mode"] == "all-pairs" and d["n_genuine"] == 8 * 3
    assert d["eer"] is not None and d["eer"] < 0.1


def test_calibrate_writes_threshold_and_audit(
    cli: Run, app: AppContext, small_lfw: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app.users.ensure_admin("admin", PASSWORD)
    app.users.add(ADMIN, "op", "operator", PASSWORD, None)
    monkeypatch.setenv("RETROFACE_PASSWORD", PASSWORD)
    # 3 protocol + 16 leave-one-out non-mated searches: enough for FPIR 20% (needs 15)
    args = ["eval", "calibrate", str(small_lfw), "--target-fpir", "0.2", "--json"]
    code, _, err = cli("--user", "op", *args, ctx=app)
    assert code == 2 and "needs the role admin" in err
    code, out, err = cli("--user", "admin", *args, "--workers", "1", ctx=app)
    assert code == 0, err
    first = json.loads(out)
    assert first["achieved_fpir"] <= 0.2
    code, out, err = cli("--user", "admin", *args, ctx=app)
    assert code == 0, err
    second = json.loads(out)
    assert second["threshold"] == first["threshold"]  # same protocol, cached embeddings
    with app.db.session() as s:
        rows = list(s.scalars(select(ThresholdRecord).order_by(ThresholdRecord.id)))
        audits = list(
            s.scalars(select(AuditRecord).where(AuditRecord.action == "threshold.calibrate"))
        )
    assert [r.active for r in rows] == [False, True]  # the older record is deactivated
    latest = rows[-1]
    assert latest.id == second["threshold_record_id"] and latest.created_by == "admin"
    assert latest.model_key == app.engine.identity.key  # what searches look the record up by
    assert latest.dataset_hash == resolve_protocol(small_lfw).dataset_hash()
    assert (latest.n_mated, latest.n_nonmated) == (16, 19)
    assert latest.threshold == first["threshold"] and latest.target_fpir == 0.2
    assert [a.object_id for a in audits] == [str(r.id) for r in rows]
    assert audits[-1].actor == "admin"
    assert audits[-1].details["deactivated"] == [rows[0].id]
    assert app.audit.verify().ok
    code, _, err = cli("--user", "admin", "eval", "calibrate", str(small_lfw), ctx=app)
    assert code == 2 and "rule of three" in err  # 19 non-mated searches cannot show FPIR 1%


def test_dpia_shows_the_per_group_figures_of_the_calibration_run(
    cli: Run, app: AppContext, small_lfw: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DPIA report's per-group figures for the live threshold are those the calibration run
    measured and stored with it (issue #13), and a recorded calibration replaces the shipped
    threshold there; the change is audited with its per-group rates."""
    from retroface.governance.reports import render_dpia_html

    app.users.ensure_admin("admin", PASSWORD)
    monkeypatch.setenv("RETROFACE_PASSWORD", PASSWORD)
    before = app.oversight.dpia(ADMIN)["thresholds"]["operating"]
    assert before is not None and before["source"] == "shipped"
    attrs = data_dir / "lfw_attributes.csv"
    code, out, err = cli(
        "--user",
        "admin",
        "eval",
        "calibrate",
        str(small_lfw),
        "--target-fpir",
        "0.2",
        "--attributes",
        str(attrs),
        "--min-group",
        "5",
        "--n-boot",
        "50",
        "--json",
        ctx=app,
    )
    assert code == 0, err
    run = json.loads(out)
    measured = run["evaluation"]["demographics"]["sex"]
    assert set(measured["result"]["groups"]) <= {"female", "male"}
    live = app.oversight.dpia(ADMIN)["thresholds"]["operating"]
    assert live is not None
    assert (live["source"], live["record_id"]) == ("calibrated", run["threshold_record_id"])
    assert live["threshold"] == run["threshold"] == measured["result"]["threshold"]
    shown = live["demographics"]["sex"]
    assert shown["groups"] == list(measured["result"]["groups"].values())
    for key in ("fnir_ratio", "fpir_ratio", "fnir_highest", "fpir_highest"):
        assert shown[key] == measured["result"][key]
    assert shown["summary"] == measured["summary"]
    html = render_dpia_html(app.oversight.dpia(ADMIN))
    for g in shown["groups"]:
        assert f'<th scope="row">{g["group"]}</th>' in html
    with app.db.session() as s:
        audit = s.scalars(
            select(AuditRecord).where(AuditRecord.action == "threshold.calibrate")
        ).one()
    assert audit.details["demographics"]["sex"] == {
        g: {"fnir": m["fnir"], "fpir": m["fpir"]} for g, m in measured["result"]["groups"].items()
    }


def test_calibrate_by_the_worst_group(
    cli: Run, app: AppContext, small_lfw: Path, data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--worst-group``: every labelled group's FPIR within the target at the recorded
    threshold, the rule stored with the record and audited (issue #17)."""
    app.users.ensure_admin("admin", PASSWORD)
    monkeypatch.setenv("RETROFACE_PASSWORD", PASSWORD)
    args = ["eval", "calibrate", str(small_lfw), "--target-fpir", "0.2", "--json"]
    code, _, err = cli("--user", "admin", *args, "--worst-group", ctx=app)
    assert code == 2 and "--worst-group needs --attributes" in err
    attrs = ["--attributes", str(data_dir / "lfw_attributes.csv"), "--min-group", "5"]
    code, out, err = cli(
        "--user", "admin", *args, *attrs, "--n-boot", "50", "--worst-group", ctx=app
    )
    assert code == 0, err
    run = json.loads(out)
    rule = run["rule"]
    assert rule["rule"] == "worst_group" and run["threshold"] == rule["threshold"]
    assert run["threshold"] >= rule["overall_threshold"]
    # 2 non-mated searches of women cannot show FPIR 20% (15 needed): listed, not constraining
    assert rule["groups"]["sex"]["female"] == {"n_nonmated": 2, "insufficient_samples": True}
    groups = run["evaluation"]["demographics"]["sex"]["result"]["groups"]
    assert run["evaluation"]["rule"] == rule
    checked = [n for n, g in rule["groups"]["sex"].items() if not g["insufficient_samples"]]
    assert checked == ["male"] and all(groups[n]["fpir"] <= 0.2 for n in checked)
    with app.db.session() as s:
        audit = s.scalars(
            select(AuditRecord).where(AuditRecord.action == "threshold.calibrate")
        ).one()
    assert audit.details["rule"] == "worst_group"
    assert audit.details["demographics"]["sex"].keys() == groups.keys()


def test_calibrate_through_the_fairness_gate(
    cli: Run,
    make_app: Callable[..., AppContext],
    small_lfw: Path,
    data_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The CLI: a calibration whose differential exceeds the limit is refused (exit 2, audited)
    and goes through with ``--override-fairness``, which is stored with the record."""
    app = make_app(fairness_max_fnir_ratio=1.0, fairness_max_fpir_ratio=1.0)
    app.users.ensure_admin("admin", PASSWORD)
    monkeypatch.setenv("RETROFACE_PASSWORD", PASSWORD)
    args = ["eval", "calibrate", str(small_lfw), "--target-fpir", "0.2", "--n-boot", "50"]
    args += ["--attributes", str(data_dir / "lfw_attributes.csv"), "--min-group", "1", "--json"]
    code, out, err = cli("--user", "admin", *args, ctx=app)
    assert code == 2 and "exceeds the fairness limits" in err
    code, out, err = cli("--user", "admin", *args, "--override-fairness", "test data", ctx=app)
    assert code == 0, err
    run = json.loads(out)
    with app.db.session() as s:
        record = s.get(ThresholdRecord, run["threshold_record_id"])
        assert record is not None and record.evaluation is not None
        override = record.evaluation["fairness"]["override"]
        refused = s.scalars(
            select(AuditRecord).where(AuditRecord.action == "threshold.calibrate.refused")
        ).one()
    assert override == {"justification": "test data", "by": "admin"}
    assert refused.details["fairness"]["breaches"]


@pytest.mark.slow
def test_lfw_acceptance(cli: Run, data_dir: Path) -> None:
    """The default backend on the full LFW protocol (minutes: embeds 6,175 images)."""
    code, out, err = cli("eval", "identify", str(data_dir / "lfw"), "--json", "--n-boot", "200")
    assert code == 0, err
    d = json.loads(out)
    assert d["n_mated"] == 3298 and d["nonmated"]["protocol"] == 1015
    assert d["rank1"] >= 0.993
    assert d["fnir_at_fpir"]["0.01"]["fnir"] <= 0.025
    assert not d["fnir_at_fpir"]["0.001"]["insufficient_samples"]


def test_unlabelled_identities_are_counted_but_never_compared(tmp_path: Path) -> None:
    """Issue #17: identities with no label formed a group "unknown" which the summary then
    compared with a real group, as if it were a demographic. They are shown, never compared."""
    from retroface.eval.runner import Searches, demographics

    def arr(values: list[float]) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    no = np.zeros(6, dtype=bool)
    # at t=0.5: Ann (female) one miss of two, Bob (male) none; Zed (no label) misses both;
    # leave-one-out + non-mated tops: female 1/3 above, male 0/3, unlabelled 3/3
    s = Searches(
        mated_identity=["Ann", "Ann", "Bob", "Bob", "Zed", "Zed"],
        mate_rank=np.asarray([1, 1, 1, 1, 1, 1], dtype=np.int64),
        mate_score=arr([0.9, 0.3, 0.8, 0.7, 0.2, 0.1]),
        mated_ftd=no,
        mated_fte=no,
        mated_acceptable=~no,
        loo_top=arr([0.6, 0.1, 0.2, 0.3, 0.9, 0.9]),
        nonmated_identity=["Fay", "Max", "Uma"],
        nonmated_top=arr([0.1, 0.2, 0.8]),
        nonmated_ftd=np.zeros(3, dtype=bool),
        gallery_templates=3,
        gallery_identities=3,
    )
    attrs = tmp_path / "attributes.csv"
    attrs.write_text("identity,sex\nAnn,female\nBob,male\nFay,female\nMax,male\nZed,\n")
    d = demographics(s, attrs, 0.5, min_searches=1, n_boot=20)["sex"]
    groups = d["result"]["groups"]
    assert set(groups) == {"female", "male", "unlabelled"}  # counted and shown
    assert (groups["unlabelled"]["n_mated"], groups["unlabelled"]["n_nonmated"]) == (2, 3)
    assert groups["unlabelled"]["fnir"] == 1.0 and groups["unlabelled"]["fpir"] == 1.0
    r = d["result"]
    # the highest rates are the unlabelled ones, yet only real groups are compared
    assert (r["fnir_highest"], r["fnir_lowest"]) == ("female", "male")
    assert (r["fpir_highest"], r["fpir_lowest"]) == ("female", "male")
    assert "unlabelled" not in d["insufficient_groups"]
    summary = d["summary"]
    assert "for unlabelled" not in summary and "as for unlabelled" not in summary
    assert "unknown" not in summary
    assert "No label: 2 mated and 3 non-mated searches (unlabelled), counted, not compared." in (
        summary
    )
