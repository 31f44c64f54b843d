"""Need-to-know (issue #11 finding 6): a case's probes, searches and exports are for its owner,
its team and its supervisors, and for auditors read-only; every other caller is refused with an
audit record, on every case route, on SQLite and on PostgreSQL (the ``app`` fixture)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from tests import test_cli
from tests.conftest import ADMIN

from retroface.api.app import create_app
from retroface.context import AppContext
from retroface.core.errors import ConflictError, InvalidInputError, PermissionDeniedError
from retroface.gallery.enrol import items_from_paths
from retroface.search.service import ProbeProvenance
from retroface.storage.tables import AuditRecord

PASSWORD = "a long test password"
CASE = {
    "reference": "CR/7",
    "offence_category": "robbery",
    "purpose": "identify the suspect",
    "justification": "serious offence with injury; the CCTV still is the only lead",
}
URL = "/api/v1/cases/CR%2F7"
PROBE_FORM = {"source": "CCTV", "how_obtained": "exported from DVR, exhibit AB/1"}
USERS = {
    "olive": "operator",  # opens CR/7: its owner
    "oscar": "operator",  # another operator, outside the team until olive adds him
    "sam": "operator",  # a supervising officer, added by the authoriser
    "arthur": "authoriser",
    "rita": "reviewer",
    "rob": "reviewer",
    "aud": "auditor",
    "ada": "auditor,operator",  # reads everything; may search only on a team she is on
    "adm": "admin",
}


@pytest.fixture
def client(app: AppContext) -> Iterator[TestClient]:
    with TestClient(create_app(app)) as c:
        yield c


@pytest.fixture
def who(app: AppContext, data_dir: Path) -> dict[str, dict[str, str]]:
    """Accounts, bearer headers and a small gallery."""
    app.users.ensure_admin("admin", PASSWORD)
    headers = {}
    for name, roles in USERS.items():
        app.users.add(ADMIN, name, roles, PASSWORD)
        token = app.users.authenticate_password(name, PASSWORD)
        headers[name] = {"Authorization": "Bearer " + app.users.issue_token(token, name)}
    people = ("barack_obama", "joe_biden")
    app.enroller().run(ADMIN, items_from_paths([data_dir / "people" / p for p in people]))
    return headers


def refusals(app: AppContext, actor: str) -> list[tuple[str, Any]]:
    with app.db.session() as s:
        rows = s.execute(
            select(AuditRecord.action, AuditRecord.details)
            .where(AuditRecord.actor == actor, AuditRecord.action.like("%.refused"))
            .order_by(AuditRecord.seq)
        ).all()
    return [(a, (d or {}).get("reason")) for a, d in rows]


def test_every_case_route_needs_to_know(
    app: AppContext, client: TestClient, who: dict[str, dict[str, str]], data_dir: Path
) -> None:
    olive, oscar, sam, arthur = who["olive"], who["oscar"], who["sam"], who["arthur"]
    assert client.post("/api/v1/cases", headers=olive, json=CASE).status_code == 201
    r = client.post(f"{URL}/decision", headers=arthur, json={"approve": True, "note": "ok"})
    assert r.status_code == 200, r.text
    image = (data_dir / "people/barack_obama/obama2.jpg").read_bytes()
    files = {"file": ("p.jpg", image, "image/jpeg")}
    r = client.post(f"{URL}/probes", headers=olive, data=PROBE_FORM, files=files)
    assert r.status_code == 201, r.text
    probe_id = r.json()["probe_id"]
    search = {"case": "CR/7", "probe_id": probe_id, "face": 0, "top_k": 3}
    r = client.post("/api/v1/searches", headers=olive, json=search)
    assert r.status_code == 201, r.text
    sid = r.json()["search_id"]

    def routes(h: dict[str, str]) -> dict[str, int]:
        """Every case route, as ``h``: the status each answered."""
        return {
            "case.show": client.get(URL, headers=h).status_code,
            "case.team.list": client.get(f"{URL}/team", headers=h).status_code,
            "probe.add": client.post(
                f"{URL}/probes", headers=h, data=PROBE_FORM, files=files
            ).status_code,
            "search.run": client.post("/api/v1/searches", headers=h, json=search).status_code,
            "search.view": client.get(f"/api/v1/searches/{sid}", headers=h).status_code,
            "search.export": client.get(f"/api/v1/searches/{sid}/export", headers=h).status_code,
        }

    def listed(h: dict[str, str]) -> list[str]:
        return [c["reference"] for c in client.get("/api/v1/cases", headers=h).json()]

    # an operator outside the team: 403 on every route, each refusal audited as need_to_know
    assert set(routes(oscar).values()) == {403}
    assert listed(oscar) == [] and listed(olive) == ["CR/7"]
    assert refusals(app, "oscar") == [
        ("case.show.refused", "need_to_know"),
        ("case.team.list.refused", "need_to_know"),
        ("probe.add.refused", "need_to_know"),
        ("search.run.refused", "need_to_know"),
        ("search.view.refused", "need_to_know"),
        ("search.export.refused", "need_to_know"),
    ]
    r = client.get(URL, headers=oscar)
    assert r.json()["error"]["code"] == "forbidden" and "not on its team" in r.text
    # he cannot add himself, nor can an authoriser make him a member
    r = client.post(f"{URL}/team", headers=oscar, json={"username": "oscar"})
    assert r.status_code == 403
    r = client.post(f"{URL}/team", headers=arthur, json={"username": "oscar"})
    assert r.status_code == 403
    # the owner adds him: everything works, and the change is audited
    r = client.post(f"{URL}/team", headers=olive, json={"username": "oscar"})
    assert r.status_code == 201 and r.json()["role"] == "member", r.text
    assert set(routes(oscar).values()) <= {200, 201} and listed(oscar) == ["CR/7"]
    # ... and removes him again: refused again
    r = client.delete(f"{URL}/team/oscar", headers=olive)
    assert r.status_code == 200 and r.json()["username"] == "oscar"
    assert set(routes(oscar).values()) == {403}

    # auditors read (case, search, export) but never add probes or search
    for auditor in ("aud", "ada"):
        got = routes(who[auditor])
        assert got.pop("probe.add") == got.pop("search.run") == 403, auditor
        assert set(got.values()) == {200}, (auditor, got)
        assert listed(who[auditor]) == ["CR/7"]
    assert [a for a, _ in refusals(app, "aud")] == ["api.call.refused", "api.call.refused"]
    assert refusals(app, "ada") == [
        ("probe.add.refused", "need_to_know"),
        ("search.run.refused", "need_to_know"),
    ]

    # a supervisor: the owner may not add one, the authoriser who decided the case may
    assert routes(sam)["case.show"] == 403
    supervisor = {"username": "sam", "role": "supervisor"}
    assert client.post(f"{URL}/team", headers=olive, json=supervisor).status_code == 403
    r = client.post(f"{URL}/team", headers=arthur, json=supervisor)
    assert r.status_code == 201, r.text
    got = routes(sam)
    assert got["case.show"] == got["search.view"] == got["search.export"] == 200
    assert listed(sam) == ["CR/7"]
    team = client.get(f"{URL}/team", headers=olive).json()
    assert [(m["username"], m["role"], m["added_by"]) for m in team] == [
        ("olive", "owner", None),
        ("sam", "supervisor", "arthur"),
    ]
    assert client.delete(f"{URL}/team/sam", headers=olive).status_code == 403  # not hers
    assert client.delete(f"{URL}/team/sam", headers=arthur).status_code == 200

    # the authoriser sees the case they decided, not its searches; an admin sees no case
    assert client.get(URL, headers=arthur).status_code == 200 and listed(arthur) == ["CR/7"]
    assert client.get(URL, headers=who["adm"]).status_code == 403 and listed(who["adm"]) == []

    with app.db.session() as s:
        changes = s.execute(
            select(AuditRecord.actor, AuditRecord.action, AuditRecord.object_id)
            .where(AuditRecord.action.in_(("case.team.add", "case.team.remove")))
            .order_by(AuditRecord.seq)
        ).all()
    assert [tuple(c) for c in changes] == [
        ("olive", "case.team.add", "oscar"),
        ("olive", "case.team.remove", "oscar"),
        ("arthur", "case.team.add", "sam"),
        ("arthur", "case.team.remove", "sam"),
    ]
    assert app.audit.verify().ok


def test_reviewers_see_the_searches_they_review(
    app: AppContext, client: TestClient, who: dict[str, dict[str, str]], data_dir: Path
) -> None:
    """The blind review works on the candidate list: a reviewer sees a search in their queue or
    one they reviewed, never the case, and nothing else once the search is settled."""
    olive, rita = app.users.principal_for("olive"), who["rita"]
    app.cases.open(olive, "R1", "robbery", "identify the suspect", CASE["justification"])
    app.cases.authorise(app.users.principal_for("arthur"), "R1", True, "proportionate")
    image = (data_dir / "people/barack_obama/obama2.jpg").read_bytes()
    prov = ProbeProvenance("CCTV", "exhibit AB/1")
    probe = app.searches.add_probe(olive, "R1", image, "p.jpg", prov)
    sid = app.searches.search(olive, "R1", probe.probe_id).search_id

    assert client.get(f"/api/v1/searches/{sid}", headers=rita).status_code == 200
    assert client.get(f"/api/v1/reviews/{sid}", headers=rita).status_code == 200
    assert client.get("/api/v1/cases/R1", headers=rita).status_code == 403
    for name in ("rita", "rob"):
        decision = {"decision": "no match", "note": "different"}
        r = client.post(f"/api/v1/reviews/{sid}", headers=who[name], json=decision)
        assert r.status_code == 201, r.text
    # settled: both reviewers still see it; a third who took no part does not
    ruth = app.users.add(ADMIN, "ruth", "reviewer", PASSWORD)
    assert app.searches.get_search(app.users.principal_for("rob"), sid).search_id == sid
    with pytest.raises(PermissionDeniedError, match="review queue"):
        app.reviews.show(ruth, sid)
    with pytest.raises(PermissionDeniedError, match="not on the team"):
        app.searches.get_search(ruth, sid)
    assert refusals(app, "ruth") == [
        ("review.view.refused", "need_to_know"),
        ("search.view.refused", "need_to_know"),
    ]


def test_team_rules_in_the_service(app: AppContext, who: dict[str, dict[str, str]]) -> None:
    olive, oscar = app.users.principal_for("olive"), app.users.principal_for("oscar")
    arthur = app.users.principal_for("arthur")
    app.cases.open(olive, "T1", "robbery", "identify the suspect", CASE["justification"])
    app.cases.open(oscar, "T2", "robbery", "identify the suspect", CASE["justification"])
    assert [c.reference for c in app.cases.list_cases(olive)] == ["T1"]
    assert {c.reference for c in app.cases.list_cases(arthur)} == {"T1", "T2"}  # pending
    app.cases.authorise(arthur, "T2", True, "proportionate")
    other = app.users.add(ADMIN, "arnold", "authoriser", PASSWORD)
    assert [c.reference for c in app.cases.list_cases(other)] == ["T1"]  # T2 is arthur's
    with pytest.raises(PermissionDeniedError, match="neither decides nor decided"):
        app.cases.team.add(other, "T2", "sam", "supervisor")

    with pytest.raises(InvalidInputError, match="not an operator"):
        app.cases.team.add(olive, "T1", "rita")
    with pytest.raises(ConflictError, match="owns case"):
        app.cases.team.add(olive, "T1", "olive")
    app.cases.team.add(olive, "T1", "oscar")
    with pytest.raises(ConflictError, match="already on the team"):
        app.cases.team.add(olive, "T1", "oscar")
    # a member does not choose the team: only the owner does
    with pytest.raises(PermissionDeniedError, match="opened case T1"):
        app.cases.team.add(oscar, "T1", "sam")
    assert {c.reference for c in app.cases.list_cases(oscar)} == {"T1", "T2"}
    assert app.cases.team.remove(olive, "T1", "oscar").role == "member"
    assert [c.reference for c in app.cases.list_cases(oscar)] == ["T2"]


run = test_cli.run  # the CLI invoked in-process, as a user, on both stores


def test_case_team_on_the_command_line(run: test_cli.Run) -> None:
    assert run("init", "--admin", "admin")[0] == 0
    for name, roles in (("olive", "operator"), ("oscar", "operator"), ("sam", "operator")):
        assert run("user", "add", name, "--roles", roles, user="admin")[0] == 0
    assert run("user", "add", "arthur", "--roles", "authoriser", user="admin")[0] == 0
    opened = ("case", "open", "--ref", "C1", "--offence", "robbery", "--purpose", "identify him")
    code, out = run(*opened, "--justification", CASE["justification"], user="olive")
    assert code == 0, out
    assert run("case", "authorise", "C1", "--approve", "--note", "ok", user="arthur")[0] == 0

    code, out = run("case", "show", "C1", user="oscar")
    assert code == 2 and "not on its team" in out
    code, out = run("case", "list", "--json", user="oscar")
    assert code == 0 and json.loads(out) == {"cases": []}
    code, out = run("case", "team", "add", "C1", "oscar", user="oscar")
    assert code == 2 and "opened case C1" in out
    code, out = run("case", "team", "add", "C1", "oscar", user="olive")
    assert code == 0 and "oscar added as member" in out
    assert run("case", "show", "C1", user="oscar")[0] == 0
    code, out = run("case", "team", "add", "C1", "sam", "--supervisor", user="arthur")
    assert code == 0 and "sam added as supervisor" in out
    code, out = run("case", "team", "list", "C1", "--json", user="sam")
    assert code == 0
    assert [(m["username"], m["role"]) for m in json.loads(out)["team"]] == [
        ("olive", "owner"),
        ("oscar", "member"),
        ("sam", "supervisor"),
    ]
    code, out = run("case", "team", "remove", "C1", "oscar", user="olive")
    assert code == 0 and "oscar (member) removed" in out
    assert run("case", "show", "C1", user="oscar")[0] == 2


def test_footage_needs_to_know(app: AppContext, who: dict[str, dict[str, str]]) -> None:
    """Video casework refuses an operator outside the team before any footage is read."""
    olive, oscar = app.users.principal_for("olive"), app.users.principal_for("oscar")
    app.cases.open(olive, "V1", "robbery", "identify the suspect", CASE["justification"])
    app.cases.authorise(app.users.principal_for("arthur"), "V1", True, "proportionate")
    missing = Path("/nonexistent/statement.mp4")  # never opened: the refusal comes first
    with pytest.raises(PermissionDeniedError, match="not on its team"):
        app.footage.find(oscar, "V1", np.zeros(512, np.float32), [missing])
    prov = ProbeProvenance("CCTV", "exhibit AB/1")
    with pytest.raises(PermissionDeniedError, match="not on its team"):
        app.footage.search_video(oscar, "V1", missing, 1, prov)
    assert refusals(app, "oscar") == [
        ("video.find.refused", "need_to_know"),
        ("video.search.refused", "need_to_know"),
    ]
