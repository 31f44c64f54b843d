"""Issue #11 findings 3, 5, 7 and the crashed-job part of 11, each reproduced first.

3: bulk deletions and enrolments whose id lists outgrew the audit ``object_id`` column failed
   (retention stopped for good at ~100 due items; enrolment at image ids >= 100,000).
5: a lapsed urgent case could be approved afterwards and searched again.
7: an account holding reviewer + auditor read the first decision, then submitted its own.
11: a job whose runner was killed stayed ``running`` and could not be cancelled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from tests.conftest import ADMIN, Clock, add_team, enrol_people

from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import NotFoundError, PermissionDeniedError
from retroface.core.roles import Role
from retroface.core.status import CaseStatus, JobStatus
from retroface.gallery.enrol import items_from_paths
from retroface.jobs.local import LocalJobRunner
from retroface.jobs.store import JobStore
from retroface.search.service import ProbeProvenance
from retroface.storage.db import Database
from retroface.storage.tables import (
    AuditRecord,
    Case,
    Probe,
    ProbeFace,
    ReferenceImage,
    SearchRecord,
    Subject,
)

PASSWORD = "a long test password"
PROV = ProbeProvenance("CCTV", "exported from shop DVR, exhibit AB/1")


@pytest.fixture
def team(app: AppContext, data_dir: Path) -> dict[str, Principal]:
    users = {
        "admin": "admin",
        "olive": "operator",
        "arthur": "authoriser",
        "rita": "reviewer",
        "rob": "reviewer",
        "ra": "reviewer,auditor",
        "aud": "auditor",
    }
    team = add_team(app, users, PASSWORD)
    enrol_people(app, data_dir)
    return team


def _open(app: AppContext, who: Principal, ref: str, urgent: bool = False) -> None:
    app.cases.open(
        who,
        ref,
        "robbery",
        "identify the robbery suspect",
        "serious violent offence; the CCTV still is the only lead",
        urgent=urgent,
    )


def _probe(data_dir: Path) -> bytes:
    """A probe image that is not in the gallery, so its file is the probe's alone."""
    return (data_dir / "lfw" / "Vladimir_Putin" / "Vladimir_Putin_0002.jpg").read_bytes()


def _records(app: AppContext, action: str) -> list[AuditRecord]:
    with app.db.session() as s:
        return list(s.scalars(select(AuditRecord).where(AuditRecord.action == action)))


def _count(app: AppContext, table: type) -> int:
    with app.db.session() as s:
        return int(s.scalar(select(func.count()).select_from(table)) or 0)


# ---------------------------------------------------------------------- finding 3


def test_retention_deletes_150_due_probes_and_searches(
    app: AppContext, team: dict[str, Principal], data_dir: Path, clock: Clock
) -> None:
    _open(app, team["olive"], "C1")
    app.cases.authorise(team["arthur"], "C1", True, "proportionate", valid_days=365)
    probe = app.searches.add_probe(team["olive"], "C1", _probe(data_dir), "p.jpg", PROV)
    app.searches.search(team["olive"], "C1", probe.probe_id)
    # 149 more probes and searches, cheaply: rows copied from the real ones (same image)
    with app.db.session() as s:
        p = s.get(Probe, probe.probe_id)
        rec = s.scalars(select(SearchRecord)).one()
        assert p is not None
        for _ in range(149):
            copy = Probe(
                case_id=p.case_id,
                content_hash=p.content_hash,
                media_type=p.media_type,
                original_name=p.original_name,
                source=p.source,
                how_obtained=p.how_obtained,
                width=p.width,
                height=p.height,
                uploaded_by=p.uploaded_by,
                created_at=p.created_at,
            )
            s.add(copy)
            s.flush()
            s.add(
                SearchRecord(
                    case_id=rec.case_id,
                    probe_id=copy.id,
                    probe_hash=rec.probe_hash,
                    user_id=rec.user_id,
                    started_at=rec.started_at,
                    ended_at=rec.ended_at,
                    gallery_version=rec.gallery_version,
                    model_key=rec.model_key,
                    top_k=rec.top_k,
                    label=rec.label,
                    review_status=rec.review_status,
                )
            )
    clock.advance(days=400)
    report = app.retention.run(ADMIN)
    assert (report.probes_deleted, report.searches_deleted) == (150, 150)
    assert _count(app, Probe) == 0 and _count(app, SearchRecord) == 0
    (probes_rec,) = _records(app, "retention.probe_delete")
    assert sorted(probes_rec.details["ids"]) == sorted(report.probes)
    assert probes_rec.details["count"] == 150 and len(probes_rec.object_id or "") <= 20
    (searches_rec,) = _records(app, "retention.search_delete")
    assert len(searches_rec.details["ids"]) == 150
    assert app.audit.verify().ok


def test_enrolment_with_image_ids_beyond_100000(
    app: AppContext, data_dir: Path, database_url: str
) -> None:
    with app.db.session() as s:
        placeholder = Subject(reference="placeholder", created_by="test")
        s.add(placeholder)
        s.flush()
        # an explicit id: the next ones follow it on SQLite; PostgreSQL's sequence is moved too
        s.add(
            ReferenceImage(
                id=149_990, subject_id=placeholder.id, content_hash="0" * 64, width=1, height=1
            )
        )
        if database_url.startswith("postgresql"):
            s.execute(
                text("SELECT setval(pg_get_serial_sequence('reference_images', 'id'), 149990)")
            )
    lfw = sorted(p for p in (data_dir / "lfw").iterdir() if p.is_dir())[:34]
    summary = app.enroller().run(ADMIN, items_from_paths(lfw))
    assert summary.enrolled >= 30, summary
    ids = [i for r in _records(app, "gallery.enrol") for i in r.details["image_ids"]]
    assert len(ids) == summary.enrolled and min(ids) > 149_990
    # a full batch of 32 six-digit ids joined by commas was 223 characters: over the old cap
    assert max(len(r.details["image_ids"]) for r in _records(app, "gallery.enrol")) == 32
    assert app.audit.verify().ok


# ---------------------------------------------------------------------- finding 5


def test_lapsed_urgent_case_cannot_be_revived(
    app: AppContext, team: dict[str, Principal], data_dir: Path, clock: Clock
) -> None:
    _open(app, team["olive"], "U1", urgent=True)
    probe = app.searches.add_probe(team["olive"], "U1", _probe(data_dir), "p.jpg", PROV)
    sid = app.searches.search(team["olive"], "U1", probe.probe_id).search_id
    probe_file = app.blobs.path_for(probe.sha256)
    clock.advance(hours=49)
    # no retention run: the first touch after the lapse purges
    with pytest.raises(PermissionDeniedError, match="urgent window"):
        app.cases.authorise(team["arthur"], "U1", True, "approved late")
    assert _count(app, Probe) == 0 and _count(app, ProbeFace) == 0
    assert _count(app, SearchRecord) == 0
    assert not probe_file.exists()
    assert [r.case_ref for r in _records(app, "case.authorise.refused")] == ["U1"]
    with pytest.raises(PermissionDeniedError, match="deleted"):
        app.searches.search(team["olive"], "U1", probe.probe_id)
    with pytest.raises(PermissionDeniedError):
        app.searches.add_probe(team["olive"], "U1", _probe(data_dir), "p.jpg", PROV)
    assert app.cases.show(team["olive"], "U1").status == CaseStatus.EXPIRED
    with pytest.raises(PermissionDeniedError, match="cannot be authorised"):
        app.cases.authorise(team["arthur"], "U1", True, "approved later still")
    assert app.retention.run(ADMIN).urgent_cases_expired == []  # nothing left to do
    with pytest.raises(NotFoundError):
        app.searches.export(team["olive"], sid)


def test_lapsed_urgent_search_is_purged_when_viewed(
    app: AppContext, team: dict[str, Principal], data_dir: Path, clock: Clock
) -> None:
    _open(app, team["olive"], "U3", urgent=True)
    probe = app.searches.add_probe(team["olive"], "U3", _probe(data_dir), "p.jpg", PROV)
    sid = app.searches.search(team["olive"], "U3", probe.probe_id).search_id
    clock.advance(hours=49)
    with pytest.raises(NotFoundError):
        app.searches.get_search(team["olive"], sid)
    assert _count(app, Probe) == 0 and _count(app, SearchRecord) == 0
    assert not app.blobs.path_for(probe.sha256).exists()


def test_lapsed_urgent_case_purged_by_the_serve_scheduler(
    make_app: object, data_dir: Path, clock: Clock
) -> None:
    from fastapi.testclient import TestClient

    from retroface.api.app import create_app

    app: AppContext = make_app(retention_interval_minutes=0.002)  # type: ignore[operator]
    team = add_team(app, {"admin": "admin", "olive": "operator"}, PASSWORD)
    _open(app, team["olive"], "U2", urgent=True)
    app.searches.add_probe(team["olive"], "U2", _probe(data_dir), "p.jpg", PROV)
    clock.advance(hours=49)
    with TestClient(create_app(app)):
        deadline = time.monotonic() + 60
        while _count(app, Probe) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert _count(app, Probe) == 0
    with app.db.session() as s:
        assert s.scalar(select(Case.status).where(Case.reference == "U2")) == CaseStatus.EXPIRED
    assert [r.actor for r in _records(app, "case.purge")] == ["system"]


# ---------------------------------------------------------------------- finding 7


def test_reviewer_who_is_also_auditor_stays_blind(
    app: AppContext, team: dict[str, Principal], data_dir: Path, tmp_path: Path
) -> None:
    _open(app, team["olive"], "C1")
    # the probe is nobody enrolled: only investigation mode lists candidates to review (#13)
    app.cases.authorise(team["arthur"], "C1", True, "proportionate", investigation_mode=True)
    probe = app.searches.add_probe(team["olive"], "C1", _probe(data_dir), "p.jpg", PROV)
    sid = app.searches.search(team["olive"], "C1", probe.probe_id).search_id
    app.reviews.decide(team["rita"], sid, "possible match", "same ears", candidate_rank=1)
    sheet = app.reviews.show(team["ra"], sid)
    assert sheet.reviews == [] and sheet.hidden == 1
    assert app.searches.export(team["ra"], sid).review.decisions == []
    assert "same ears" not in app.searches.get_search(team["ra"], sid).model_dump_json()
    # ra sees nothing, so ra may decide
    app.reviews.decide(team["ra"], sid, "no match", "different nose")

    # an auditor who saw the decisions and later holds reviewer may not review that search
    sid2 = app.searches.search(team["olive"], "C1", probe.probe_id).search_id
    app.reviews.decide(team["rita"], sid2, "no match", "not him")
    seen = app.reviews.show(team["aud"], sid2)
    assert [r.note for r in seen.reviews] == ["not him"]
    promoted = Principal(team["aud"].id, "aud", frozenset({Role.AUDITOR, Role.REVIEWER}))
    with pytest.raises(PermissionDeniedError, match="blind"):
        app.reviews.decide(promoted, sid2, "no match", "agree")

    # nor may a reviewer + auditor who exported the audit log (it holds the first decision)
    sid3 = app.searches.search(team["olive"], "C1", probe.probe_id).search_id
    app.reviews.decide(team["rita"], sid3, "inconclusive", "blurred")
    app.oversight.export_audit(team["ra"], tmp_path / "audit-export")
    with pytest.raises(PermissionDeniedError, match="blind"):
        app.reviews.decide(team["ra"], sid3, "no match", "agree")
    refused = _records(app, "review.decide.refused")
    assert sorted(r.actor for r in refused) == ["aud", "ra"]
    app.reviews.decide(team["rob"], sid3, "inconclusive", "blurred too")


def test_blindness_on_the_api_routes(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    from fastapi.testclient import TestClient

    from retroface.api.app import create_app

    _open(app, team["olive"], "C1")
    # the probe is nobody enrolled: only investigation mode lists candidates to review (#13)
    app.cases.authorise(team["arthur"], "C1", True, "proportionate", investigation_mode=True)
    probe = app.searches.add_probe(team["olive"], "C1", _probe(data_dir), "p.jpg", PROV)
    sid = app.searches.search(team["olive"], "C1", probe.probe_id).search_id
    app.reviews.decide(team["rita"], sid, "possible match", "same ears", candidate_rank=1)
    with TestClient(create_app(app)) as client:

        def login(name: str) -> dict[str, str]:
            r = client.post("/api/v1/auth/token", json={"username": name, "password": PASSWORD})
            assert r.status_code == 200, r.text
            return {"Authorization": "Bearer " + r.json()["access_token"]}

        ra, aud = login("ra"), login("aud")
        sheet = client.get(f"/api/v1/reviews/{sid}", headers=ra).json()
        assert sheet["reviews"] == [] and sheet["hidden"] == 1
        for url in (f"/api/v1/searches/{sid}", f"/api/v1/searches/{sid}/export"):
            r = client.get(url, headers=ra)
            assert r.status_code == 200 and "same ears" not in r.text, r.text
        assert client.get(f"/api/v1/reviews/{sid}", headers=aud).json()["reviews"][0]["note"] == (
            "same ears"
        )
        assert client.get("/api/v1/audit/export", headers=ra).status_code == 200
        r = client.post(
            f"/api/v1/reviews/{sid}", headers=ra, json={"decision": "no match", "note": "no"}
        )
        assert r.status_code == 403 and "blind" in r.json()["error"]["message"]


# ---------------------------------------------------------------------- finding 11 (jobs)

_CRASHING_RUNNER = """
import sys, time
from retroface.storage.db import Database
from retroface.jobs.store import JobStore
from retroface.jobs.local import LocalJobRunner

runner = LocalJobRunner(JobStore(Database(sys.argv[1])))

def forever(payload, progress):
    while True:
        progress(1, 2)
        time.sleep(0.05)

runner.register("forever", forever)
print(runner.submit("forever", {}, "test"), runner.submit("forever", {}, "test"), flush=True)
time.sleep(600)
"""


def test_job_of_a_killed_runner_can_be_cancelled(db: Database, database_url: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_RUNNER, database_url],
        stdout=subprocess.PIPE,
        env=env,
        text=True,
    )
    try:
        assert proc.stdout is not None
        running, queued = map(int, proc.stdout.readline().split())
        store = JobStore(db)
        deadline = time.monotonic() + 60
        while store.get(running).progress == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get(running).status == JobStatus.RUNNING
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert store.get(running).status == JobStatus.RUNNING  # the crash left it so
    cancelled = store.cancel(running)
    assert cancelled.status == JobStatus.CANCELLED and "interrupted" in (cancelled.error or "")
    # the next local runner to start marks what the dead one still held
    LocalJobRunner(store)
    left = store.get(queued)
    assert left.status == JobStatus.FAILED and "interrupted" in (left.error or "")
