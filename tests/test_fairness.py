"""Fairness at the operating point (issue #17): the worst-group threshold rule, the fairness gate
on threshold changes (refusal, audited override, published in the reports), and that no
search-time code reads a protected attribute."""

from __future__ import annotations

import ast
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select
from tests.conftest import ADMIN

from retroface.context import AppContext
from retroface.core.errors import ConflictError
from retroface.eval.metrics import by_group, fpir_at_threshold, fpir_threshold
from retroface.eval.runner import Calibration, worst_group_rule
from retroface.governance.reports import (
    dpia,
    render_dpia_html,
    render_transparency_html,
    transparency,
)
from retroface.storage.tables import AuditRecord, ThresholdRecord

SRC = Path(__file__).resolve().parents[1] / "src" / "retroface"


def _nonmated(seed: int = 0) -> tuple[np.ndarray, list[str], dict[str, dict[str, str]]]:
    """Two groups of 1,000 non-mated searches: group "b"'s impostor scores run higher (as the
    female group's did on LFW), and 10 unlabelled ones."""
    rng = np.random.default_rng(seed)
    a = rng.normal(0.20, 0.05, 1000)
    b = rng.normal(0.26, 0.05, 1000)
    u = rng.normal(0.20, 0.05, 10)
    ids = [f"a{i}" for i in range(1000)] + [f"b{i}" for i in range(1000)]
    ids += [f"u{i}" for i in range(10)]
    labels = {"sex": {**{f"a{i}": "a" for i in range(1000)}, **{f"b{i}": "b" for i in range(1000)}}}
    return np.concatenate([a, b, u]), ids, labels


def test_the_worst_group_threshold_meets_the_target_for_every_group() -> None:
    scores, ids, labels = _nonmated()
    target = 0.01
    group = np.array([labels["sex"].get(i, "") for i in ids])
    overall = fpir_threshold(scores, target)
    # the average rule lets group b's false positives run above the target
    assert fpir_at_threshold(scores[group == "b"], overall) > target
    rule = worst_group_rule(scores, ids, labels, target)
    t = rule["threshold"]
    assert rule["rule"] == "worst_group" and rule["worst_group"] == "b"
    assert rule["overall_threshold"] == pytest.approx(overall) and t > overall
    for g in ("a", "b"):
        assert fpir_at_threshold(scores[group == g], t) <= target
    assert fpir_at_threshold(scores, t) <= target
    # the lowest such threshold: group b's own one (no stricter than needed)
    assert t == pytest.approx(fpir_threshold(scores[group == "b"], target))
    # unlabelled identities are no group: they do not set the threshold
    assert "" not in rule["groups"]["sex"] and set(rule["groups"]["sex"]) == {"a", "b"}


def test_a_group_too_small_to_show_the_target_does_not_set_the_threshold() -> None:
    scores, ids, labels = _nonmated()
    labels["sex"].update({f"u{i}": "c" for i in range(10)})  # 10 < 300 needed for FPIR 1%
    rule = worst_group_rule(scores, ids, labels, 0.01)
    assert rule["groups"]["sex"]["c"] == {"n_nonmated": 10, "insufficient_samples": True}
    assert rule["worst_group"] == "b"


def _evaluation(fnir_b: float) -> dict[str, Any]:
    """An evaluation as ``calibration_evaluation`` stores it, from the real per-group metrics:
    group a misses 1% of its mates, group b ``fnir_b``; FPIR equal (1%)."""
    n = 1000
    ranks = np.ones(2 * n, dtype=np.int64)
    scores = np.full(2 * n, 0.8)
    scores[: int(0.01 * n)] = 0.1
    scores[n : n + int(fnir_b * n)] = 0.1
    groups = ["a"] * n + ["b"] * n
    nm = np.full(2 * n, 0.1)
    nm[:10] = 0.9
    nm[n : n + 10] = 0.9
    result = by_group(ranks, scores, groups, nm, groups, 0.5, n_boot=50)
    return {"points": {}, "demographics": {"sex": {"result": result.to_dict(), "summary": ""}}}


def _cal(app: AppContext) -> Calibration:
    key = app.engine.identity.key
    return Calibration(key, 0.5, 0.01, 0.01, 0.02, 2000, 2000, "0" * 64, "force photographs")


def _audits(app: AppContext, action: str) -> list[dict[str, Any]]:
    with app.db.session() as s:
        return [
            dict(d)
            for d in s.scalars(select(AuditRecord.details).where(AuditRecord.action == action))
        ]


def test_the_fairness_gate_refuses_a_differential_above_the_limit(app: AppContext) -> None:
    with pytest.raises(ConflictError, match="FNIR ratio by sex 3"):
        app.thresholds.record(ADMIN, _cal(app), evaluation=_evaluation(0.03))
    with pytest.raises(ConflictError):  # a blank justification is none
        app.thresholds.record(ADMIN, _cal(app), evaluation=_evaluation(0.03), override_fairness=" ")
    with app.db.session() as s:
        assert s.scalar(select(ThresholdRecord.id)) is None
    refused = _audits(app, "threshold.calibrate.refused")
    assert len(refused) == 2
    (breach,) = refused[0]["fairness"]["breaches"]
    assert (breach["attribute"], breach["rate"], breach["highest"]) == ("sex", "fnir", "b")
    assert breach["ratio"] == pytest.approx(3.0) and breach["limit"] == 1.5
    assert refused[0]["demographics"]["sex"]["b"]["fnir"] == pytest.approx(0.03)
    # within the limits the change goes through, recorded as checked
    record_id = app.thresholds.record(ADMIN, _cal(app), evaluation=_evaluation(0.012))
    (audit,) = _audits(app, "threshold.calibrate")
    assert audit["fairness"]["checked"] and audit["fairness"]["breaches"] == []
    assert audit["fairness"]["override"] is None and record_id


def test_the_limit_is_a_setting(make_app: Any) -> None:
    app = make_app(fairness_max_fnir_ratio=4.0)
    assert app.thresholds.record(ADMIN, _cal(app), evaluation=_evaluation(0.03))


def test_an_admin_override_is_audited_and_published(app: AppContext, clock: Any) -> None:
    start = clock() - timedelta(hours=1)
    why = "interim: the only model available; human review of every candidate"
    record_id = app.thresholds.record(
        ADMIN, _cal(app), evaluation=_evaluation(0.03), override_fairness=why
    )
    (audit,) = _audits(app, "threshold.calibrate")
    assert audit["fairness"]["override"] == {"justification": why, "by": ADMIN.username}
    assert audit["fairness"]["breaches"][0]["rate"] == "fnir"
    with app.db.session() as s:
        stored = s.get(ThresholdRecord, record_id)
        assert stored is not None and stored.active
        assert stored.evaluation["fairness"]["override"]["justification"] == why
    report = transparency(app, start, clock() + timedelta(hours=1))
    (row,) = report["threshold_changes"]
    assert row["record_id"] == record_id and row["fairness_override"]["justification"] == why
    assert why in render_transparency_html(report)
    d = dpia(app)
    assert d["thresholds"]["records"][0]["fairness_override"]["justification"] == why
    assert why in render_dpia_html(d)
    # a period without the change lists none
    later = transparency(app, clock() + timedelta(hours=1), clock() + timedelta(hours=2))
    assert later["threshold_changes"] == []


# ------------------------------------------------------------------ no protected attribute


#: Packages on the search path: enrolment, probe handling, detection/embedding, search, review.
SEARCH_TIME = ("search", "vision", "gallery", "media", "api", "web", "jobs")
#: What reads protected attributes: the attributes CSV and the per-group evaluation functions.
ATTRIBUTE_API = {
    "read_attributes",
    "demographics",
    "by_group",
    "worst_group_rule",
    "calibration_evaluation",
    "lfw_attributes",
}


def _offences(source: str, where: str) -> list[str]:
    """Imports of the evaluation package, names of its attribute readers, and mentions of a
    person's sex in one module's source."""
    out: list[str] = []
    for node in ast.walk(ast.parse(source)):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("retroface.eval"):
            out.append(f"{at} imports {node.module}")
        elif isinstance(node, ast.Import) and any(
            a.name.startswith("retroface.eval") for a in node.names
        ):
            out.append(f"{at} imports retroface.eval")
        elif isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            if name in ATTRIBUTE_API or name.lower() in {"sex", "gender", "ethnicity"}:
                out.append(f"{at} names {name}")
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and ("attributes.csv" in node.value or node.value.lower() in {"sex", "gender"})
        ):
            out.append(f"{at} says {node.value!r}")
    return out


def test_no_search_time_code_reads_a_protected_attribute() -> None:
    """The labels are for evaluation only: no module on the search path imports the evaluation
    package's attribute readers, names them, or names a person's sex (issue #17)."""
    files = [p for pkg in SEARCH_TIME for p in sorted((SRC / pkg).rglob("*.py"))]
    assert len(files) > 20
    offenders = [o for p in files for o in _offences(p.read_text("utf-8"), str(p.relative_to(SRC)))]
    assert offenders == []


def test_the_attribute_check_would_catch_a_reader() -> None:
    """The walk above finds what it looks for (a test that cannot fail proves nothing)."""
    bad = (
        "from retroface.eval.runner import read_attributes\n"
        "x = person.sex\n"
        "y = load('lfw_attributes.csv')\n"
    )
    assert len(_offences(bad, "bad.py")) == 3
    assert _offences("from retroface.search.service import SearchService\n", "ok.py") == []
