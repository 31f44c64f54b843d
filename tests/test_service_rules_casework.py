"""Casework and oversight services own their rules: called directly, with no CLI or API in
between, each refuses a caller without the role (or a search under a case that may not be
searched) and writes ``<action>.refused`` to the audit log, and writes the record of what it
allows. Every test runs on SQLite and on PostgreSQL (the ``app`` fixture)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from tests import test_governance as gov
from tests.conftest import ADMIN, Clock

from retroface.context import AppContext
from retroface.core.access import SYSTEM, Principal
from retroface.core.errors import PermissionDeniedError
from retroface.core.status import CaseStatus
from retroface.eval.runner import Calibration
from retroface.governance.cases import CaseNotSearchableError
from retroface.storage.tables import AuditRecord, ThresholdRecord

team = gov.team  # the same accounts and enrolled gallery as test_governance.py


def records(app: AppContext, action: str) -> list[AuditRecord]:
    with app.db.session() as s:
        rows = list(
            s.scalars(
                select(AuditRecord).where(AuditRecord.action == action).order_by(AuditRecord.seq)
            )
        )
        s.expunge_all()
        return rows


def refused(app: AppContext, action: str, who: str) -> dict[str, Any]:
    """The details of ``who``'s only ``<action>.refused`` record."""
    rows = [r for r in records(app, f"{action}.refused") if r.actor == who]
    assert len(rows) == 1, f"expected one {action}.refused by {who}, found {len(rows)}"
    return rows[0].details


def test_case_service(app: AppContext, team: dict[str, Principal]) -> None:
    rita, olive, arthur = team["rita"], team["olive"], team["arthur"]
    with pytest.raises(PermissionDeniedError, match="operator"):
        gov.open_case(app, rita)
    why = refused(app, "case.open", "rita")
    assert why["reason"] == "forbidden" and why["needed"] == ["operator"]
    assert why["roles"] == ["reviewer"] and "needs the role operator" in why["message"]
    assert records(app, "case.open") == []  # nothing was opened

    gov.open_case(app, olive)
    assert [(r.actor, r.case_ref) for r in records(app, "case.open")] == [("olive", "C1")]
    with pytest.raises(PermissionDeniedError, match="authoriser"):
        app.cases.authorise(rita, "C1", True, "not mine to give")
    assert refused(app, "case.authorise", "rita")["needed"] == ["authoriser"]

    bea = app.users.add(ADMIN, "bea", "operator,authoriser", gov.PASSWORD)
    gov.open_case(app, bea, "C2")
    with pytest.raises(PermissionDeniedError, match="separation of duties"):
        app.cases.authorise(bea, "C2", True, "I approve my own request")
    why = refused(app, "case.authorise", "bea")
    assert "separation of duties" in why["message"]
    assert app.cases.show(arthur, "C2").status is CaseStatus.PENDING  # the refusal changed nothing

    app.cases.authorise(arthur, "C1", True, "necessary and proportionate")
    assert [r.case_ref for r in records(app, "case.approve")] == ["C1"]
    with pytest.raises(PermissionDeniedError):
        app.cases.list_cases(SYSTEM)  # the system holds no role
    assert refused(app, "case.list", "system")["reason"] == "forbidden"
    assert app.audit.verify().ok  # refusals are chained like every other record


def test_search_refused_for_its_case(
    app: AppContext, team: dict[str, Principal], data_dir: Path, clock: Clock
) -> None:
    olive, arthur = team["olive"], team["arthur"]
    image = gov.probe_bytes(data_dir)
    gov.open_case(app, olive, "PENDING")
    with pytest.raises(CaseNotSearchableError, match="awaiting authorisation"):
        app.searches.add_probe(olive, "PENDING", image, "p.jpg", gov.PROV)
    why = refused(app, "probe.add", "olive")
    assert why["reason"] == "forbidden" and "awaiting authorisation" in why["message"]
    assert records(app, "probe.add.refused")[0].case_ref == "PENDING"

    # an urgent case may be searched inside its window, not after it
    gov.open_case(app, olive, "U1", urgent=True)
    probe = app.searches.add_probe(olive, "U1", image, "p.jpg", gov.PROV)
    result = app.searches.search(olive, "U1", probe.probe_id)
    assert result.candidates[0].subject == "barack_obama"
    [run] = records(app, "search.run")
    assert (run.actor, run.case_ref, run.object_id) == ("olive", "U1", str(result.search_id))
    assert records(app, "probe.add")[0].case_ref == "U1"
    clock.advance(hours=49)
    with pytest.raises(CaseNotSearchableError, match="urgent window"):
        app.searches.search(olive, "U1", probe.probe_id)
    why = refused(app, "search.run", "olive")
    assert why["probe_id"] == probe.probe_id and "urgent window" in why["message"]

    # an authorisation that has expired, and one that was refused
    gov.open_case(app, olive, "C3")
    app.cases.authorise(arthur, "C3", True, "for one day", valid_days=1)
    probe3 = app.searches.add_probe(olive, "C3", image, "p.jpg", gov.PROV)
    clock.advance(days=2)
    with pytest.raises(CaseNotSearchableError, match="expired"):
        app.searches.search(olive, "C3", probe3.probe_id)
    gov.open_case(app, olive, "C4")
    app.cases.authorise(arthur, "C4", False, "not proportionate")
    with pytest.raises(CaseNotSearchableError, match="refused"):
        app.searches.add_probe(olive, "C4", image, "p.jpg", gov.PROV)
    refusals = {(r.action, r.case_ref) for r in records(app, "search.run.refused")}
    refusals |= {(r.action, r.case_ref) for r in records(app, "probe.add.refused")}
    assert refusals == {
        ("probe.add.refused", "PENDING"),
        ("search.run.refused", "U1"),
        ("search.run.refused", "C3"),
        ("probe.add.refused", "C4"),
    }
    assert len(records(app, "search.run")) == 1  # no refused attempt left a search behind


def test_search_service_roles(app: AppContext, team: dict[str, Principal], data_dir: Path) -> None:
    olive, rita, aud = team["olive"], team["rita"], team["aud"]
    gov.open_case(app, olive)
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    image = gov.probe_bytes(data_dir)
    with pytest.raises(PermissionDeniedError, match="operator"):
        app.searches.add_probe(rita, "C1", image, "p.jpg", gov.PROV)
    assert refused(app, "probe.add", "rita")["needed"] == ["operator"]
    sid = gov.run_search(app, olive, data_dir).search_id
    probe_id = records(app, "probe.add")[0].object_id
    with pytest.raises(PermissionDeniedError, match="operator"):
        app.searches.search(rita, "C1", int(probe_id or 0))
    assert refused(app, "search.run", "rita")["needed"] == ["operator"]

    app.searches.get_search(aud, sid)
    assert [(r.actor, r.object_id) for r in records(app, "search.view")] == [("aud", str(sid))]
    with pytest.raises(PermissionDeniedError):
        app.searches.export(rita, sid)
    assert refused(app, "search.export", "rita")["needed"] == ["auditor", "operator"]
    app.searches.export(aud, sid)
    assert [r.actor for r in records(app, "search.export")] == ["aud"]


def test_review_service(app: AppContext, team: dict[str, Principal], data_dir: Path) -> None:
    otto, olive, rita = team["otto"], team["olive"], team["rita"]
    gov.open_case(app, otto)
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    sid = gov.run_search(app, otto, data_dir).search_id

    with pytest.raises(PermissionDeniedError, match="reviewer"):
        app.reviews.decide(olive, sid, "no match", "not a reviewer")
    assert refused(app, "review.decide", "olive")["needed"] == ["reviewer"]
    with pytest.raises(PermissionDeniedError, match="reviewer"):
        app.reviews.queue(olive)
    assert refused(app, "review.queue", "olive")["reason"] == "forbidden"
    with pytest.raises(PermissionDeniedError, match="separation of duties"):
        app.reviews.decide(otto, sid, "no match", "my own search")
    [own] = [r for r in records(app, "review.decide.refused") if r.actor == "otto"]
    assert own.case_ref == "C1" and own.object_id == str(sid)
    assert "separation of duties" in own.details["message"]

    app.reviews.decide(rita, sid, "possible match", "same ears", candidate_rank=1)
    [decided] = records(app, "review.decide")
    assert (decided.actor, decided.object_id) == ("rita", str(sid))
    app.reviews.show(team["aud"], sid)
    assert [r.actor for r in records(app, "review.view")] == ["aud"]


def test_oversight_service(
    app: AppContext, team: dict[str, Principal], clock: Clock, tmp_path: Path
) -> None:
    olive, aud, admin = team["olive"], team["aud"], team["admin"]
    start, end = clock.now - timedelta(days=1), clock.now + timedelta(days=1)
    with pytest.raises(PermissionDeniedError, match="auditor or admin"):
        app.oversight.transparency(olive, start, end)
    assert refused(app, "report.transparency", "olive")["needed"] == ["admin", "auditor"]
    with pytest.raises(PermissionDeniedError):
        app.oversight.dpia(olive)
    assert refused(app, "report.dpia", "olive")["reason"] == "forbidden"

    html = tmp_path / "out" / "transparency.html"
    report = app.oversight.transparency(aud, start, end, html=html)
    assert report["report"] == "transparency" and html.stat().st_size > 1000
    [rec] = records(app, "report.transparency")
    assert rec.actor == "aud" and rec.object_id == str(html)
    assert rec.details["html"] == str(html) and rec.details["start"] == report["period"]["start"]
    dpia = app.oversight.dpia(admin, via="api")
    assert dpia["model"]["key"] == app.engine.identity.key
    [rec] = records(app, "report.dpia")
    assert (rec.actor, rec.details["via"], rec.details["html"]) == ("admin", "api", None)

    with pytest.raises(PermissionDeniedError):
        app.oversight.verify_audit(olive)
    assert refused(app, "audit.verify", "olive")["needed"] == ["admin", "auditor"]
    assert app.oversight.verify_audit(admin).ok
    assert records(app, "audit.verify") == []  # verifying reads nothing about people

    folder = tmp_path / "export"
    with pytest.raises(PermissionDeniedError, match="auditor"):
        app.oversight.export_audit(admin, folder)  # the log's custodian is the auditor
    assert refused(app, "audit.export", "admin")["needed"] == ["auditor"]
    assert not folder.exists()
    manifest = app.oversight.export_audit(aud, folder)
    [rec] = records(app, "audit.export")
    assert rec.actor == "aud" and rec.object_id == str(folder)
    assert rec.details["records"] == manifest["records"]
    assert app.audit.verify().ok


def _calibration(threshold: float) -> Calibration:
    return Calibration(
        model_key="arcface-test",
        threshold=threshold,
        target_fpir=0.01,
        achieved_fpir=0.008,
        fnir=0.02,
        n_mated=300,
        n_nonmated=1000,
        dataset_hash="ab" * 32,
        dataset="lfw protocol",
    )


def test_threshold_service(app: AppContext, team: dict[str, Principal]) -> None:
    olive, admin = team["olive"], team["admin"]
    with pytest.raises(PermissionDeniedError, match="admin"):
        app.thresholds.check_may_record(olive)
    with pytest.raises(PermissionDeniedError, match="admin"):
        app.thresholds.record(olive, _calibration(0.4))
    assert [r.actor for r in records(app, "threshold.calibrate.refused")] == ["olive", "olive"]
    with app.db.session() as s:
        assert s.scalar(select(func.count()).select_from(ThresholdRecord)) == 0

    first = app.thresholds.record(admin, _calibration(0.4), {"det_size": 640, "flip": True})
    second = app.thresholds.record(admin, _calibration(0.42), {"det_size": 640, "backend": "x"})
    with app.db.session() as s:
        rows = [(r.id, r.active, r.created_by) for r in s.scalars(select(ThresholdRecord))]
    assert sorted(rows) == [(first, False, "admin"), (second, True, "admin")]
    audits = records(app, "threshold.calibrate")
    assert [a.object_id for a in audits] == [str(first), str(second)]
    assert audits[1].details["deactivated"] == [first]
    assert audits[1].details["pipeline"] == {"det_size": 640}
    assert app.audit.verify().ok
