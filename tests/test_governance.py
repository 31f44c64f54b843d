"""Safeguards enforced by the software: authorisation, separation of duties, blind review,
deletion on refusal, retention, and an audit record for every action."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from tests.conftest import ADMIN, Clock, add_team, enrol_people

from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import ConflictError, InvalidInputError, PermissionDeniedError
from retroface.search.service import ProbeProvenance
from retroface.search.views import SearchResult
from retroface.storage.tables import AuditRecord, Probe, ProbeFace, SearchRecord, Subject

PASSWORD = "a long test password"
PROV = ProbeProvenance("CCTV", "exported from shop DVR, exhibit AB/1")


@pytest.fixture
def team(app: AppContext, data_dir: Path) -> dict[str, Principal]:
    users = {
        "admin": "admin",
        "olive": "operator",
        "otto": "operator,reviewer",
        "arthur": "authoriser",
        "rita": "reviewer",
        "rob": "reviewer",
        "ruth": "reviewer",
        "aud": "auditor",
    }
    team = add_team(app, users, PASSWORD)
    enrol_people(app, data_dir)
    return team


def open_case(app: AppContext, who: Principal, ref: str = "C1", urgent: bool = False) -> None:
    app.cases.open(
        who,
        ref,
        "robbery",
        "identify the robbery suspect",
        "serious violent offence; the CCTV still is the only lead",
        urgent=urgent,
    )


def probe_bytes(data_dir: Path, rel: str = "people/barack_obama/obama2.jpg") -> bytes:
    return (data_dir / rel).read_bytes()


def run_search(app: AppContext, who: Principal, data_dir: Path, ref: str = "C1") -> SearchResult:
    probe = app.searches.add_probe(who, ref, probe_bytes(data_dir), "obama2.jpg", PROV)
    return app.searches.search(who, ref, probe.probe_id)


def actions(app: AppContext) -> list[str]:
    with app.db.session() as s:
        return list(s.scalars(select(AuditRecord.action).order_by(AuditRecord.seq)))


def test_search_needs_an_authorised_case(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    olive = team["olive"]
    with pytest.raises(Exception, match="no case"):
        app.searches.add_probe(olive, "NOPE", probe_bytes(data_dir), "p.jpg", PROV)
    open_case(app, olive)
    with pytest.raises(PermissionDeniedError, match="awaiting authorisation"):
        app.searches.add_probe(olive, "C1", probe_bytes(data_dir), "p.jpg", PROV)
    app.cases.authorise(team["arthur"], "C1", True, "necessary and proportionate")
    result = run_search(app, olive, data_dir)
    assert result.candidates[0].subject == "barack_obama"
    assert result.label == "investigative lead — not an identification"


def test_authorisation_expires(
    app: AppContext, team: dict[str, Principal], data_dir: Path, clock: Clock
) -> None:
    open_case(app, team["olive"])
    app.cases.authorise(team["arthur"], "C1", True, "ok for a week", valid_days=7)
    run_search(app, team["olive"], data_dir)
    clock.advance(days=8)
    with pytest.raises(PermissionDeniedError, match="authorisation of case C1 expired"):
        run_search(app, team["olive"], data_dir)


def test_roles_are_enforced_by_the_services(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    with pytest.raises(PermissionDeniedError, match="operator"):
        open_case(app, team["rita"])
    open_case(app, team["olive"])
    with pytest.raises(PermissionDeniedError, match="authoriser"):
        app.cases.authorise(team["rita"], "C1", True, "not mine to give")
    with pytest.raises(InvalidInputError, match="offence category"):
        app.cases.open(team["olive"], "C2", "littering", "purpose text", "justification words here")
    with pytest.raises(InvalidInputError, match="provenance"):
        app.cases.authorise(team["arthur"], "C1", True, "fine")
        app.searches.add_probe(
            team["olive"], "C1", probe_bytes(data_dir), "p.jpg", ProbeProvenance("", "")
        )


def test_no_self_authorisation(app: AppContext, team: dict[str, Principal]) -> None:
    both = app.users.add(ADMIN, "bea", "operator,authoriser", PASSWORD)
    open_case(app, both)
    with pytest.raises(PermissionDeniedError, match="separation of duties"):
        app.cases.authorise(both, "C1", True, "I approve my own request")
    app.cases.authorise(team["arthur"], "C1", False, "not proportionate")
    # refused means purged: it can never be authorised again (refused and audited)
    with pytest.raises(PermissionDeniedError, match="cannot be authorised"):
        app.cases.authorise(team["arthur"], "C1", True, "changed my mind")


def test_blind_two_person_review(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    open_case(app, team["otto"])
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    sid = run_search(app, team["otto"], data_dir).search_id
    # the person who ran the search may not review it
    with pytest.raises(PermissionDeniedError, match="separation of duties"):
        app.reviews.decide(team["otto"], sid, "no match", "mine")
    assert [q.search_id for q in app.reviews.queue(team["otto"])] == []
    assert [q.search_id for q in app.reviews.queue(team["rita"])] == [sid]

    app.reviews.decide(team["rita"], sid, "possible match", "same ears", candidate_rank=1)
    with pytest.raises(ConflictError, match="already reviewed"):
        app.reviews.decide(team["rita"], sid, "no match", "second thoughts")
    seen_by_rob = app.reviews.show(team["rob"], sid)
    assert seen_by_rob.reviews == [] and seen_by_rob.hidden == 1
    assert app.reviews.queue(team["rita"]) == []

    out = app.reviews.decide(team["rob"], sid, "no match", "different nose")
    assert out.status == "disputed"
    assert app.reviews.show(team["rita"], sid).hidden == 1  # still hidden: not settled
    assert [q.needs for q in app.reviews.queue(team["ruth"])] == ["tiebreak"]
    out = app.reviews.decide(team["ruth"], sid, "possible match", "agree with first", 1)
    assert out.status == "resolved" and out.outcome == "possible match: rank 1"
    shown = app.reviews.show(team["rita"], sid)
    assert shown.hidden == 0 and len(shown.reviews) == 3


def test_reviewers_agreeing(app: AppContext, team: dict[str, Principal], data_dir: Path) -> None:
    open_case(app, team["olive"])
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    sid = run_search(app, team["olive"], data_dir).search_id
    app.reviews.decide(team["rita"], sid, "inconclusive", "poor image")
    out = app.reviews.decide(team["rob"], sid, "inconclusive", "poor image")
    assert out.model_dump() == {
        "search_id": sid,
        "stage": "second",
        "status": "agreed",
        "outcome": "inconclusive",
    }
    with pytest.raises(InvalidInputError, match="must name the candidate rank"):
        app.reviews.decide(team["ruth"], sid, "possible match", "x")


def test_refused_urgent_case_deletes_everything(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    open_case(app, team["olive"], "U1", urgent=True)
    own = probe_bytes(data_dir, "people/_multi_face_scenes/kit_with_rose.jpg")
    probe = app.searches.add_probe(team["olive"], "U1", own, "scene.jpg", PROV)
    result = app.searches.search(team["olive"], "U1", probe.probe_id, face_index=0)
    probe_file = app.blobs.path_for(probe.sha256)
    assert probe_file.exists() and result.candidates
    app.cases.authorise(team["arthur"], "U1", False, "not necessary: other leads exist")
    assert not probe_file.exists()
    with app.db.session() as s:
        for table in (Probe, ProbeFace, SearchRecord):
            assert s.scalar(select(func.count()).select_from(table)) == 0
    assert "case.purge" in actions(app)
    with pytest.raises(PermissionDeniedError, match="refused"):
        app.searches.add_probe(team["olive"], "U1", own, "scene.jpg", PROV)


def test_urgent_window_lapses(
    app: AppContext, team: dict[str, Principal], data_dir: Path, clock: Clock
) -> None:
    open_case(app, team["olive"], "U2", urgent=True)
    probe = app.searches.add_probe(team["olive"], "U2", probe_bytes(data_dir), "p.jpg", PROV)
    app.searches.search(team["olive"], "U2", probe.probe_id)
    clock.advance(hours=49)
    with pytest.raises(PermissionDeniedError, match="urgent window"):
        app.searches.search(team["olive"], "U2", probe.probe_id)
    # the refused search was the first touch after the lapse: it purged the case already
    assert app.retention.run(ADMIN).urgent_cases_expired == []
    with app.db.session() as s:
        assert s.scalar(select(func.count()).select_from(Probe)) == 0
    assert app.cases.show(team["olive"], "U2").status == "expired"


def test_retention_with_moved_clock(
    app: AppContext, team: dict[str, Principal], data_dir: Path, clock: Clock
) -> None:
    from datetime import timedelta

    open_case(app, team["olive"])
    app.cases.authorise(team["arthur"], "C1", True, "ok", valid_days=365)
    old = run_search(app, team["olive"], data_dir)
    old_file = app.blobs.path_for(old.probe.sha256)
    with app.db.session() as s:
        s.scalar(select(Subject).where(Subject.reference == "rose_leslie")).retention_until = (
            clock.now + timedelta(days=30)
        )
    clock.advance(days=60)
    fresh_bytes = probe_bytes(data_dir, "people/joe_biden/biden2.jpg")
    fresh = app.searches.add_probe(team["olive"], "C1", fresh_bytes, "b.jpg", PROV)
    clock.advance(days=40)  # old probe is 100 days old (> 90), the fresh one 40

    due = app.retention.run(ADMIN, dry_run=True)
    assert due.probes == [old.probe.probe_id] and due.subjects_erased == ["rose_leslie"]
    assert old_file.exists()  # dry run deletes nothing

    report = app.retention.run(ADMIN)
    assert report.probes_deleted == 1
    with app.db.session() as s:
        assert list(s.scalars(select(Probe.id))) == [fresh.probe_id]
        refs = set(s.scalars(select(Subject.reference)))
    # the old probe is also a reference image (same bytes), so its file stays for the gallery
    assert old_file.exists()
    assert "rose_leslie" not in refs and "barack_obama" in refs
    assert app.blobs.path_for(fresh.sha256).exists()
    # search records are kept for 365 days
    with app.db.session() as s:
        assert s.scalar(select(func.count()).select_from(SearchRecord)) == 1
    clock.advance(days=300)
    assert app.retention.run(ADMIN).searches_deleted == 1
    assert {"retention.probe_delete", "retention.subject_erase", "retention.search_delete"} <= set(
        actions(app)
    )


def test_every_action_is_audited(
    app: AppContext, team: dict[str, Principal], data_dir: Path, tmp_path: Path
) -> None:
    open_case(app, team["olive"])
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    sid = run_search(app, team["olive"], data_dir).search_id
    app.searches.get_search(team["aud"], sid)
    app.reviews.decide(team["rita"], sid, "no match", "n")
    app.audit.export(tmp_path / "export")
    app.gallery.erase(ADMIN, "joe_biden", reason="acquitted")
    app.users.issue_token(team["olive"], "olive")
    logged = set(actions(app))
    for action in (
        "user.add",
        "login",
        "gallery.enrol",
        "case.open",
        "case.approve",
        "probe.add",
        "search.run",
        "search.view",
        "review.decide",
        "gallery.erase",
        "token.issue",
    ):
        assert action in logged, action
    assert app.audit.verify().ok
    with app.db.session() as s:
        rec = s.scalar(select(AuditRecord).where(AuditRecord.action == "search.run"))
        assert rec is not None and rec.case_ref == "C1" and rec.actor == "olive"
        assert rec.details["gallery_version"] > 0 and rec.details["candidates"]


def test_search_record_has_art12_fields(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    open_case(app, team["olive"])
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    run_search(app, team["olive"], data_dir)
    with app.db.session() as s:
        rec = s.scalars(select(SearchRecord)).one()
        assert rec.started_at <= rec.ended_at
        assert rec.gallery_version > 0 and rec.model_key.startswith("arcface/")
        assert len(rec.probe_hash) == 64 and rec.probe_source == "CCTV"
        assert rec.user_id == team["olive"].id and rec.case_id is not None
        assert rec.candidates and rec.label.startswith("investigative lead")


def test_multi_face_probe_needs_a_chosen_face(
    app: AppContext, team: dict[str, Principal], data_dir: Path
) -> None:
    """A search targets one person: a probe showing several faces must name which."""
    open_case(app, team["olive"])
    app.cases.authorise(team["arthur"], "C1", True, "proportionate")
    group = probe_bytes(data_dir, "people/_multi_face_scenes/obama_and_biden.jpg")
    probe = app.searches.add_probe(team["olive"], "C1", group, "group.jpg", PROV)
    assert len(probe.faces) >= 2
    with pytest.raises(InvalidInputError, match="choose one with --face"):
        app.searches.search(team["olive"], "C1", probe.probe_id)
    with pytest.raises(InvalidInputError, match="does not exist"):
        app.searches.search(team["olive"], "C1", probe.probe_id, face_index=99)
    result = app.searches.search(team["olive"], "C1", probe.probe_id, face_index=1)
    assert result.candidates


def test_urgent_window_is_capped_at_48_hours() -> None:
    from retroface.governance.policy import GovernancePolicy

    assert GovernancePolicy(urgent_window_hours=48).urgent_window_hours == 48
    with pytest.raises(InvalidInputError, match="48 hours"):
        GovernancePolicy(urgent_window_hours=72)
