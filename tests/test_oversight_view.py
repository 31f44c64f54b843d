"""The oversight view: monthly figures for an ethics panel or a regulator, exact and anonymous.

One realistic month of casework (March 2026) after a quieter February, on SQLite and PostgreSQL,
with real images and the real face model: cases granted, refused, urgent (one authorised after
searching, one lapsed), searches (one with no candidate), a probe too blurred to be of use and one
with no face at all, two blind reviews (one agreed, one disputed and settled by a third reviewer),
a disclosure, and retention runs that delete one probe late and the rest on time. The figures are
asserted exactly; the serialised view must name no user, case or subject; the role is enforced
by the service (audited) and by the API, where an oversight account reaches nothing else.
"""

from __future__ import annotations

import io
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageFilter
from sqlalchemy import func, literal, select, text
from tests.conftest import ADMIN, Clock, add_team, enrol_people
from typer.testing import CliRunner, Result

from retroface.api.app import create_app
from retroface.cli import report_cmds
from retroface.cli.session import state
from retroface.config import get_settings
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import InvalidInputError, PermissionDeniedError
from retroface.gallery.enrol import items_from_paths
from retroface.governance.oversight_figures import month_bounds, reason_category
from retroface.governance.views import OversightFigures
from retroface.media.images import decode_image
from retroface.search.service import ProbeProvenance
from retroface.storage.db import Database
from retroface.storage.sqlfunc import utc_month
from retroface.storage.tables import AuditRecord, User, UTCDateTime
from retroface.vision.types import Face, FaceEngine

PASSWORD = "a long test password"
PROV = ProbeProvenance("CCTV", "exported from shop DVR, exhibit AB/1")
TEAM = {
    "admin": "admin",
    "olive": "operator",
    "arthur": "authoriser",
    "rita": "reviewer",
    "ronan": "reviewer",
    "ruth": "reviewer",
    "audrey": "auditor",
    "ovid": "oversight",
}
CASES = ("PREV/7/26", "CR/11/26", "CR/12/26", "URG/13/26", "URG/14/26", "CR/15/26")
EXTRA = ("alex_lacamoire", "lin_manuel_miranda")
SUBJECTS = ("barack_obama", "joe_biden", "kit_harington", "rose_leslie", "obama", "biden", *EXTRA)
FEB = datetime(2026, 2, 20, 9, 0, tzinfo=UTC)
MAR = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


def _jpeg(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=92)
    return buf.getvalue()


@pytest.fixture(scope="session")
def probes(engine: FaceEngine, data_dir: Path) -> dict[str, tuple[bytes, list[Face]]]:
    """The probe images and their faces, analysed once (these tests are about counting)."""
    obama = Image.open(data_dir / "people/barack_obama/obama2.jpg").convert("RGB")
    images = {
        "feb": (data_dir / "people/joe_biden/biden2.jpg").read_bytes(),
        "lfw1": (data_dir / "lfw/Joseph_Biden/Joseph_Biden_0001.jpg").read_bytes(),
        "obama": (data_dir / "people/barack_obama/obama2.jpg").read_bytes(),
        # the same photograph, blurred past use: the quality check must say so
        "blurred": _jpeg(obama.filter(ImageFilter.GaussianBlur(10))),
        # a corner of it with no face at all
        "noface": _jpeg(obama.crop((0, 0, 100, 100))),
        "lfw2": (data_dir / "lfw/Joseph_Biden/Joseph_Biden_0002.jpg").read_bytes(),
        "lfw3": (data_dir / "lfw/Joseph_Biden/Joseph_Biden_0003.jpg").read_bytes(),
    }
    out = {k: (v, engine.analyse(decode_image(v))) for k, v in images.items()}
    assert [f.quality.acceptable for f in out["blurred"][1]] == [False]
    assert out["noface"][1] == []
    return out


@dataclass
class Month:
    app: AppContext
    clock: Clock
    team: dict[str, Principal]
    searches: dict[str, int]
    faces: dict[str, list[Face]]  # per probe uploaded, in upload order


@pytest.fixture
def month(
    make_app: Callable[..., AppContext],
    clock: Clock,
    data_dir: Path,
    probes: dict[str, tuple[bytes, list[Face]]],
) -> Month:
    clock.now = FEB
    app = make_app(probe_retention_days=10)  # a short period, so a month sees probes deleted
    team = add_team(app, TEAM, PASSWORD)
    enrol_people(app, data_dir)
    # two more subjects: one kept until 3 March (erased late, on the 4th), one an admin removes
    extra = list(items_from_paths([data_dir / "people" / p for p in EXTRA]))
    kept = datetime(2026, 3, 3, 9, 0, tzinfo=UTC)
    extra = [replace(i, retention_until=kept) if i.subject == EXTRA[0] else i for i in extra]
    assert app.enroller().run(ADMIN, extra).enrolled > 0
    olive, arthur = team["olive"], team["arthur"]
    faces: dict[str, list[Face]] = {}

    def open_case(ref: str, offence: str, urgent: bool = False) -> None:
        app.cases.open(
            olive,
            ref,
            offence,
            f"identify the suspect in {ref}",
            "serious offence; the image is the only lead and no less intrusive means exist",
            urgent=urgent,
        )

    def probe(case: str, name: str) -> int:
        data, found = probes[name]
        faces[name] = found
        return app.searches.add_probe(olive, case, data, f"{name}.jpg", PROV, faces=found).probe_id

    def search(case: str, probe_id: int, threshold: float | None = None) -> int:
        result = app.searches.search(olive, case, probe_id, 0, top_k=5, threshold=threshold)
        return result.search_id

    # February: one granted case, one search
    open_case(CASES[0], "robbery")
    app.cases.authorise(arthur, CASES[0], True, "necessary and proportionate")
    searches = {"S0": search(CASES[0], probe(CASES[0], "feb"))}

    # March
    clock.now = MAR
    open_case(CASES[1], "robbery")
    clock.advance(hours=2)
    app.cases.authorise(arthur, CASES[1], True, "necessary and proportionate")
    p1 = probe(CASES[1], "lfw1")
    searches["S1"] = search(CASES[1], p1)
    searches["S2"] = search(CASES[1], probe(CASES[1], "obama"))
    searches["S5"] = search(CASES[1], p1, threshold=0.99)  # nobody is that close: no candidate
    probe(CASES[1], "blurred")
    probe(CASES[1], "noface")
    open_case(CASES[2], "burglary")
    clock.advance(hours=1)
    app.cases.authorise(arthur, CASES[2], False, "not proportionate")
    with pytest.raises(PermissionDeniedError):  # refused: no probe may be added
        app.searches.add_probe(olive, CASES[2], probes["lfw1"][0], "x.jpg", PROV)
    open_case(CASES[3], "robbery", urgent=True)
    searches["S3"] = search(CASES[3], probe(CASES[3], "lfw2"))  # before authorisation
    clock.advance(hours=3)
    app.cases.authorise(arthur, CASES[3], True, "urgent use confirmed")
    open_case(CASES[4], "burglary", urgent=True)  # its window will lapse
    searches["S4"] = search(CASES[4], probe(CASES[4], "lfw3"))
    open_case(CASES[5], "kidnap")  # awaiting a decision
    rita, ronan, ruth = team["rita"], team["ronan"], team["ruth"]
    app.reviews.decide(rita, searches["S1"], "possible match", "same features", 1)
    app.reviews.decide(ronan, searches["S1"], "possible match", "agree", 1)
    app.reviews.decide(rita, searches["S2"], "no match", "different ears")
    app.reviews.decide(ronan, searches["S2"], "possible match", "similar", 1)
    app.reviews.decide(ruth, searches["S2"], "no match", "tiebreak: different person")
    app.searches.export(olive, searches["S1"])
    clock.now = datetime(2026, 3, 3, 10, 0, tzinfo=UTC)
    app.gallery.erase(ADMIN, EXTRA[1], "no longer wanted")
    return Month(app, clock, team, searches, faces)


def _held_quality(m: Month, names: list[str]) -> tuple[int, int]:
    found = [f for n in names for f in m.faces[n]]
    good = sum(f.quality.acceptable for f in found)
    return good, len(found) - good


def test_month_bounds_and_reason_words() -> None:
    bounds = month_bounds(datetime(2026, 1, 31, 23, 59, tzinfo=UTC), 3)
    assert [f"{b:%Y-%m-%d}" for b in bounds] == [
        "2025-11-01",
        "2025-12-01",
        "2026-01-01",
        "2026-02-01",
    ]
    for bad in (0, 61, True):
        with pytest.raises(InvalidInputError):
            month_bounds(datetime(2026, 1, 1, tzinfo=UTC), bad)
    assert reason_category("blurred: sharpness 22 (minimum 30)") == "blurred"


def test_utc_month_ignores_the_session_time_zone(db: Database) -> None:
    """Late on the last day of a month UTC is that month, whatever the database session's zone
    (PostgreSQL formats ``timestamptz`` in it: Kiritimati is UTC+14, so without the conversion
    this would read 2026-03)."""
    late = literal(datetime(2026, 2, 28, 23, 30, tzinfo=UTC), UTCDateTime())
    with db.session() as s:
        if db.engine.dialect.name == "postgresql":
            s.execute(text("SET LOCAL TIME ZONE 'Pacific/Kiritimati'"))
        assert s.scalar(select(utc_month(late))) == "2026-02"


def test_read_session_is_a_snapshot_without_the_write_lock(db: Database) -> None:
    """The figures read in one read-only snapshot: a writer meanwhile neither waits for it (on
    SQLite it would wait out the 30 s busy timeout, then fail) nor shows up in it."""
    with db.read_session() as r:
        before = r.scalar(select(func.count()).select_from(User))
        with db.session() as w:
            w.add(User(username="written-meanwhile", roles=""))
        assert r.scalar(select(func.count()).select_from(User)) == before
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(User)) == before + 1


def test_monthly_figures_are_exact(month: Month) -> None:
    app, clock, team = month.app, month.clock, month.team
    olive_probes_march = ["lfw1", "obama", "blurred", "noface", "lfw2", "lfw3"]
    march_faces = sum(len(month.faces[n]) for n in olive_probes_march)

    # 4 March 16:00: an hour past the lapsed urgent window; nothing has been deleted yet
    clock.now = datetime(2026, 3, 4, 16, 0, tzinfo=UTC)
    before = app.oversight.monthly(team["ovid"], months=2)
    assert before.overdue_now.model_dump() == {
        "probes": 1,  # February's, due on 2 March (10 days), a day of grace gone
        "search_records": 0,
        "subjects": 1,  # kept until 3 March 09:00
        "urgent_cases": 0,  # the lapsed one is within its day of grace
    }
    # purges the lapsed urgent case; deletes February's probe and erases the subject, both late
    app.retention.run(ADMIN)
    fig = app.oversight.monthly(team["ovid"], months=2)
    assert fig.overdue_now.probes == fig.overdue_now.subjects == 0
    assert [m.month for m in fig.months] == ["2026-02", "2026-03"]
    assert fig.period_start == datetime(2026, 2, 1, tzinfo=UTC)
    assert fig.period_end == datetime(2026, 4, 1, tzinfo=UTC)
    assert fig.generated_at == clock.now and fig.deletion_grace_hours == 24.0
    feb, mar = fig.months

    assert feb.searches.run == 1 and feb.searches.by_offence == {"robbery": 1}
    assert feb.authorisations.model_dump() == {
        "requested": 1,
        "granted": 1,
        "refused": 0,
        "awaiting": 0,
        "median_hours_to_decision": 0.0,
        "refusal_rate": 0.0,
    }
    assert feb.reviews.decisions == 0 and feb.reviews.agreement_rate is None
    assert feb.probe_quality.probes == 1 and feb.probe_quality.faces == len(month.faces["feb"])
    assert feb.probe_quality.faces_assessed == 0  # its probe is deleted; the count stays
    assert feb.probe_quality.searches_assessed == 1  # the search record is still held
    assert feb.deletions.due == 0

    assert mar.searches.model_dump() == {
        "run": 5,
        "by_offence": {"burglary": 1, "robbery": 4},
        "no_candidates": 1,
        "footage_scans": 0,
        "attempts_refused": 1,
        "disclosures": 1,
    }
    assert mar.authorisations.model_dump() == {
        "requested": 5,
        "granted": 2,
        "refused": 1,
        "awaiting": 1,  # the kidnap case; the lapsed urgent one is no longer awaited
        "median_hours_to_decision": 2.0,  # 2 h, 1 h and 3 h
        "refusal_rate": 0.3333,
    }
    assert mar.urgent.model_dump() == {
        "opened": 2,
        "granted": 1,
        "refused": 0,
        "lapsed": 1,
        "purged": 1,
        "searches_before_authorisation": 2,
    }
    assert mar.reviews.model_dump() == {
        "decisions": 5,
        "pairs": 2,
        "agreed": 1,
        "disputed": 1,
        "tiebreaks": 1,
        "outcomes": {"possible match": 1, "no match": 1, "inconclusive": 0},
        "decisions_order": ["possible match", "no match", "inconclusive"],
        "agreement_matrix": [[1, 0, 0], [1, 0, 0], [0, 0, 0]],
        "agreement_rate": 0.5,
        # p_o = 1/2; the second reviewers always said "possible match", so p_e = 1/2: kappa 0
        "kappa": 0.0,
    }
    held = ["lfw1", "obama", "blurred", "noface", "lfw2"]  # the lapsed case's probe is gone
    good, poor = _held_quality(month, held)
    reasons = Counter(
        reason_category(r) for n in held for f in month.faces[n] for r in f.quality.reasons
    )
    assert poor >= 1 and reasons["blurred"] >= 1  # the blurred probe, at least
    searched = ["lfw1", "obama", "lfw1", "lfw2"]  # S1 S2 S5 S3, still held
    poor_searched = sum(not month.faces[n][0].quality.acceptable for n in searched)
    assert mar.probe_quality.model_dump() == {
        "probes": 6,
        "faces": march_faces,
        "probes_without_face": 1,
        "faces_assessed": good + poor,
        "acceptable": good,
        "poor": poor,
        "poor_reasons": dict(sorted(reasons.items())),
        "searches_assessed": 4,  # S4 went with the lapsed case
        "searches_with_poor_probe": poor_searched,
        "share_acceptable": round(good / (good + poor), 4),
    }
    assert mar.deletions.model_dump() == {
        "probes": 1,
        "probes_late": 1,  # due 2 March 09:00, deleted 4 March 16:00
        "search_records": 0,
        "search_records_late": 0,
        "subjects": 1,
        "subjects_late": 1,  # due 3 March 09:00, erased 4 March 16:00
        "urgent_cases": 1,
        "urgent_cases_late": 0,  # purged an hour after its window ended
        "due_unknown": 0,
        "purged_on_refusal": 1,
        "probes_purged": 1,
        "search_records_purged": 1,
        "erased_on_decision": 1,
        "due": 3,
        "late": 2,
        "on_time": 1,
        "on_time_rate": 0.3333,
    }
    assert fig.total.searches.run == 6 and fig.total.authorisations.requested == 6
    assert fig.total.authorisations.median_hours_to_decision == 1.5  # 0, 1, 2, 3 h
    assert fig.total.reviews == mar.reviews
    assert fig.total.probe_quality.probes == 7
    assert fig.retention == {
        "probe_days": 10.0,
        "search_record_days": 365.0,
        "urgent_window_hours": 48.0,
    }
    assert fig.gallery_subjects == 4

    # 12 March 12:30: March's probes fall due from 11:00 and go on time; the counts that come
    # from the audit log stay, the quality verdicts (held with the probes) go with them
    clock.now = datetime(2026, 3, 12, 12, 30, tzinfo=UTC)
    app.retention.run(ADMIN)
    after = app.oversight.monthly(team["ovid"], months=1).months[0]
    assert after.month == "2026-03"
    assert after.deletions.probes == 6 and after.deletions.probes_late == 1
    assert after.deletions.on_time == 6 and after.deletions.on_time_rate == 0.75  # 6 of 8
    assert after.probe_quality.probes == 6 and after.probe_quality.faces == march_faces
    assert after.probe_quality.faces_assessed == 0 and after.probe_quality.share_acceptable is None
    assert after.searches == mar.searches and after.reviews == mar.reviews


def test_figures_name_nobody(month: Month) -> None:
    fig = month.app.oversight.monthly(month.team["audrey"], months=2)
    dumped = json.dumps(fig.model_dump(mode="json")).lower()
    for name in (*TEAM, *CASES, *SUBJECTS, "exhibit", "cctv", "lfw", ".jpg"):
        assert name.lower() not in dumped, name
    assert fig.months[-1].searches.run == 5  # and it is the month that had them


def test_who_may_see_the_figures(month: Month) -> None:
    app, team = month.app, month.team
    assert isinstance(app.oversight.monthly(team["admin"]), OversightFigures)
    assert len(app.oversight.monthly(team["ovid"]).months) == 12
    for who in ("olive", "arthur", "rita"):
        with pytest.raises(PermissionDeniedError):
            app.oversight.monthly(team[who])
    with app.db.session() as s:
        records = s.execute(
            select(AuditRecord.actor, AuditRecord.action).where(
                AuditRecord.action.startswith("report.oversight")
            )
        ).all()
    assert sorted(records) == sorted(
        [
            ("admin", "report.oversight"),
            ("ovid", "report.oversight"),
            ("olive", "report.oversight.refused"),
            ("arthur", "report.oversight.refused"),
            ("rita", "report.oversight.refused"),
        ]
    )
    # an oversight account sees no case, even through the services directly
    with pytest.raises(PermissionDeniedError):
        app.cases.list_cases(team["ovid"])
    with pytest.raises(PermissionDeniedError):
        app.cases.show(team["ovid"], CASES[1])
    with pytest.raises(PermissionDeniedError):
        app.cases.team.members(team["ovid"], CASES[1])


def test_oversight_over_the_api(month: Month) -> None:
    app, team = month.app, month.team

    def bearer(who: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + app.users.issue_token(team[who], who)}

    ovid, olive = bearer("ovid"), bearer("olive")
    s1 = month.searches["S1"]
    with TestClient(create_app(app)) as client:
        r = client.get("/api/v1/reports/oversight?months=2", headers=ovid)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body == month.app.oversight.monthly(team["ovid"], months=2).model_dump(mode="json")
        assert body["months"][1]["reviews"]["agreement_rate"] == 0.5
        assert client.get("/api/v1/reports/oversight?months=0", headers=ovid).status_code == 422
        r = client.get("/api/v1/reports/oversight", headers=olive)
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
        for path in ("/api/v1/me", "/api/v1/models", "/api/v1/health"):
            assert client.get(path, headers=ovid).status_code == 200, path
        refused = [
            "/api/v1/cases",
            f"/api/v1/cases/{CASES[1]}",
            f"/api/v1/cases/{CASES[1]}/team",
            f"/api/v1/searches/{s1}",
            f"/api/v1/searches/{s1}/export",
            f"/api/v1/reviews/{s1}",
            "/api/v1/gallery/subjects",
            "/api/v1/gallery/stats",
            "/api/v1/users",
            "/api/v1/audit/verify",
            "/api/v1/reports/dpia",
            "/api/v1/reports/transparency?from=2026-03-01&to=2026-03-31",
        ]
        for path in refused:
            r = client.get(path, headers=ovid)
            assert r.status_code == 403, (path, r.status_code)
            assert r.json()["error"]["code"] == "forbidden"
    with app.db.session() as s:
        logged = set(
            s.scalars(
                select(AuditRecord.object_id).where(
                    AuditRecord.actor == "ovid", AuditRecord.action == "api.call.refused"
                )
            )
        )
    assert len(logged) == len(refused)  # every refusal at the gate is in the audit log
    assert {"GET /api/v1/cases", "GET /api/v1/cases/{ref}", "GET /api/v1/reviews/{search_id}"} <= (
        logged
    )


def test_cli_report_oversight(
    month: Month, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``retroface report oversight`` as each person would run it (its own context, real clock:
    60 months reach back past March 2026)."""
    monkeypatch.setenv("RETROFACE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RETROFACE_DATABASE_URL", database_url)
    monkeypatch.setenv("RETROFACE_PROBE_RETENTION_DAYS", "10")
    monkeypatch.setenv("RETROFACE_PASSWORD", PASSWORD)
    monkeypatch.delenv("RETROFACE_TOKEN", raising=False)
    get_settings.cache_clear()
    runner = CliRunner()

    def invoke(user: str, *args: str) -> Result:
        _reset_cli()  # the CLI's state is a module singleton: each call is a fresh process
        try:
            return runner.invoke(report_cmds.app, list(args), env={"RETROFACE_USER": user})
        finally:
            _reset_cli()

    try:
        result = invoke("ovid", "oversight", "--months", "60", "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert len(out["months"]) == 60
        march = next(m for m in out["months"] if m["month"] == "2026-03")
        expected = month.app.oversight.monthly(month.team["ovid"], months=2).months[1]
        assert march["searches"] == expected.searches.model_dump(mode="json")
        assert march["reviews"] == expected.reviews.model_dump(mode="json")
        result = invoke("audrey", "oversight", "--months", "60")
        assert result.exit_code == 0, result.output
        row = next(line for line in result.output.splitlines() if "2026-03" in line)
        assert row.split()[1] == "5"  # searches run
        assert "total" in result.output and "held past their deletion date" in result.output
        result = invoke("olive", "oversight")
        assert result.exit_code != 0 and "oversight" in result.output
        result = invoke("ovid", "oversight", "--months", "61")
        assert result.exit_code != 0 and "1 to 60" in result.output
        result = invoke("ovid", "transparency", "--from", "2026-03-01", "--to", "2026-03-31")
        assert result.exit_code != 0  # the role sees the monthly figures only
    finally:
        get_settings.cache_clear()


def _reset_cli() -> None:
    ctx = state.__dict__.pop("ctx", None)
    if ctx is not None:
        ctx.close()
    state._principal = None
    state.user = None


def test_deletions_recorded_without_due_times(month: Month) -> None:
    """A deletion record written before records carried ``due`` is dated from the upload it
    deleted (the ``probe.add`` record): the same figures either way."""
    app, clock = month.app, month.clock
    clock.now = datetime(2026, 3, 4, 16, 0, tzinfo=UTC)
    app.retention.run(ADMIN)
    with_due = app.oversight.monthly(month.team["ovid"], months=2)
    with app.db.session() as s:
        (record,) = s.scalars(
            select(AuditRecord).where(AuditRecord.action == "retention.probe_delete")
        )
        assert len(record.details["due"]) == len(record.details["ids"]) == 1
        record.details = {k: v for k, v in record.details.items() if k != "due"}
    without = app.oversight.monthly(month.team["ovid"], months=2)
    assert without.months == with_due.months and without.total == with_due.total
    assert without.months[1].deletions.probes_late == 1
