"""The REST API: the declared access matrix on every route, the contract, and the workflow."""

from __future__ import annotations

import io
import json
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from retroface.api.app import create_app
from retroface.api.rbac import MATRIX
from retroface.context import AppContext
from retroface.core.roles import Role
from retroface.storage.tables import AuditRecord

PASSWORD = "a long test password"


@pytest.fixture
def client(app: AppContext) -> Iterator[TestClient]:
    with TestClient(create_app(app)) as c:
        yield c


def token_for(app: AppContext, username: str, roles: str) -> dict[str, str]:
    app.users.ensure_admin("root", PASSWORD)
    root = app.users.principal_for("root")
    app.users.add(root, username, roles, PASSWORD)
    # tokens are issued only to their own user: as that user (principal_for is not a login)
    own = app.users.principal_for(username)
    return {"Authorization": "Bearer " + app.users.issue_token(own, username)}


def routes(client: TestClient) -> list[tuple[str, str]]:
    """Every operation the app serves, from its own OpenAPI document."""
    paths = client.get("/api/v1/openapi.json").json()["paths"]
    return sorted((m.upper(), p) for p, ops in paths.items() for m in ops)


def test_every_route_is_in_the_matrix(client: TestClient) -> None:
    assert set(routes(client)) == set(MATRIX), "routes and the declared matrix differ"


def test_every_route_by_every_role(app: AppContext, client: TestClient) -> None:
    """Allowed roles get past the gate (any status but 401/403); others get 403; nobody 401."""
    headers = {role: token_for(app, f"only-{role.value}", role.value) for role in Role}
    refused: list[tuple[str, str]] = []
    for method, path in routes(client):
        if (method, path) not in MATRIX:
            continue
        url = re.sub(r"\{[^}]+\}", "1", path)
        if path.endswith("/transparency"):
            url += "?from=2026-01-01&to=2026-12-31"
        allowed = MATRIX[(method, path)]
        anon = client.request(method, url, json={})
        if allowed is None:
            assert anon.status_code not in (401, 403), (method, path)
            continue
        assert anon.status_code == 401, (method, path, anon.status_code)
        assert anon.json()["error"]["code"] == "unauthenticated"
        for role in Role:
            resp = client.request(method, url, json={}, headers=headers[role])
            if role in allowed:
                assert resp.status_code not in (401, 403), (method, path, role, resp.text)
            else:
                assert resp.status_code == 403, (method, path, role, resp.status_code)
                assert resp.json()["error"]["code"] == "forbidden"
                refused.append((f"only-{role.value}", f"{method} {path}"))
    # every refusal at the gate is in the audit log, with who tried which route
    with app.db.session() as s:
        logged = {
            (actor, route)
            for actor, route in s.execute(
                select(AuditRecord.actor, AuditRecord.object_id).where(
                    AuditRecord.action == "api.call.refused"
                )
            )
        }
    assert refused and set(refused) <= logged


def test_bad_token_and_error_shape(client: TestClient) -> None:
    r = client.get("/api/v1/me", headers={"Authorization": "Bearer rf_nonsense"})
    assert r.status_code == 401 and set(r.json()["error"]) == {"code", "message"}
    r = client.post("/api/v1/auth/token", json={"username": "x"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_request"
    assert "X-Request-ID" in r.headers


def test_upload_limit_and_bad_image(app: AppContext, client: TestClient) -> None:
    op = token_for(app, "olive", "operator")
    auth = token_for(app, "arthur", "authoriser")
    client.post(
        "/api/v1/cases",
        headers=op,
        json={
            "reference": "C1",
            "offence_category": "robbery",
            "purpose": "identify the suspect",
            "justification": "serious offence, the only lead available",
        },
    )
    client.post("/api/v1/cases/C1/decision", headers=auth, json={"approve": True, "note": "ok"})
    form = {"source": "CCTV", "how_obtained": "exhibit AB/1"}
    r = client.post(
        "/api/v1/cases/C1/probes",
        headers=op,
        data=form,
        files={"file": ("x.jpg", b"not an image", "image/jpeg")},
    )
    assert r.status_code == 422 and "not a recognised image file" in r.json()["error"]["message"]
    app.settings.max_upload_bytes = 1000
    r = client.post(
        "/api/v1/cases/C1/probes",
        headers=op,
        data=form,
        files={"file": ("big.jpg", b"\xff" * 5000, "image/jpeg")},
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "upload_too_large"


def test_end_to_end_workflow(app: AppContext, client: TestClient, data_dir: Path) -> None:
    admin = token_for(app, "admin2", "admin")
    for name, role in (
        ("olive", "operator"),
        ("arthur", "authoriser"),
        ("rita", "reviewer"),
        ("rob", "reviewer"),
        ("aud", "auditor"),
    ):
        r = client.post(
            "/api/v1/users",
            headers=admin,
            json={"username": name, "roles": [role], "password": PASSWORD},
        )
        assert r.status_code == 201, r.text

    def login(name: str) -> dict[str, str]:
        r = client.post("/api/v1/auth/token", json={"username": name, "password": PASSWORD})
        assert r.status_code == 200, r.text
        return {"Authorization": "Bearer " + r.json()["access_token"]}

    op, auth, rita, rob, aud = (login(n) for n in ("olive", "arthur", "rita", "rob", "aud"))
    lfw = data_dir / "lfw"
    for person in ("Hugo_Chavez", "Vladimir_Putin", "Jacques_Chirac", "Donald_Rumsfeld"):
        img = lfw / person / f"{person}_0001.jpg"
        r = client.post(
            f"/api/v1/gallery/subjects/{person}/images",
            headers=admin,
            data={"inclusion_reason": "custody image"},
            files={"file": (img.name, img.read_bytes(), "image/jpeg")},
        )
        assert r.status_code == 201, r.text
    assert client.get("/api/v1/gallery/stats", headers=aud).json()["subjects"] == 4

    r = client.post(
        "/api/v1/cases",
        headers=op,
        json={
            "reference": "CR/1",
            "offence_category": "robbery",
            "purpose": "identify the suspect",
            "justification": "serious offence with injury; the CCTV still is the only lead",
        },
    )
    assert r.status_code == 201 and r.json()["status"] == "pending"
    r = client.post(
        "/api/v1/cases/CR%2F1/decision",
        headers=auth,
        json={"approve": True, "note": "necessary and proportionate"},
    )
    assert r.status_code == 200 and r.json()["status"] == "approved", r.text

    probe_img = lfw / "Vladimir_Putin" / "Vladimir_Putin_0002.jpg"
    r = client.post(
        "/api/v1/cases/CR%2F1/probes",
        headers=op,
        data={"source": "CCTV", "how_obtained": "exported from DVR, exhibit AB/1"},
        files={"file": (probe_img.name, probe_img.read_bytes(), "image/jpeg")},
    )
    assert r.status_code == 201, r.text
    probe = r.json()
    assert len(probe["faces"]) >= 1
    r = client.post(
        "/api/v1/searches",
        headers=op,
        json={"case": "CR/1", "probe_id": probe["probe_id"], "face": 0, "top_k": 3},
    )
    assert r.status_code == 201, r.text
    result = r.json()
    assert result["candidates"][0]["subject"] == "Vladimir_Putin"
    assert result["label"] == "investigative lead — not an identification"
    sid = result["search_id"]

    assert [q["search_id"] for q in client.get("/api/v1/reviews/queue", headers=rita).json()] == [
        sid
    ]
    r = client.post(
        f"/api/v1/reviews/{sid}",
        headers=rita,
        json={"decision": "possible match", "candidate_rank": 1, "note": "same"},
    )
    assert r.status_code == 201 and r.json()["status"] == "in_review"
    assert client.get(f"/api/v1/reviews/{sid}", headers=rob).json()["hidden"] == 1
    r = client.post(
        f"/api/v1/reviews/{sid}",
        headers=rob,
        json={"decision": "possible match", "candidate_rank": 1, "note": "agree"},
    )
    assert r.json()["status"] == "agreed"

    r = client.get(f"/api/v1/searches/{sid}/export", headers=op)
    assert r.status_code == 200
    package = r.json()
    assert package["review"]["outcome"] == "possible match: rank 1"
    assert len(package["review"]["decisions"]) == 2

    r = client.get("/api/v1/audit/verify", headers=aud)
    assert r.status_code == 200 and r.json()["ok"], r.json()
    r = client.get("/api/v1/audit/export", headers=aud)
    assert r.headers["content-type"] == "application/zip"
    names = zipfile.ZipFile(io.BytesIO(r.content)).namelist()
    assert any(n.endswith("records.jsonl") for n in names)
    from retroface.audit.log import verify_export

    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        zf.extractall(app.home / "unzipped")
    assert verify_export(app.home / "unzipped" / "audit-export").ok
    actions = {a for (a,) in _actions(app)}
    assert {
        "case.open",
        "case.approve",
        "probe.add",
        "search.run",
        "review.decide",
        "search.export",
        "audit.export",
        "gallery.enrol",
        "login",
    } <= actions
    metrics = client.get("/metrics", headers=aud).text
    assert "retroface_searches_total 1.0" in metrics


def _actions(app: AppContext) -> list[tuple[str]]:
    from sqlalchemy import select

    from retroface.storage.tables import AuditRecord

    with app.db.session() as s:
        return [(a,) for a in s.scalars(select(AuditRecord.action))]


def test_batch_enrolment_job(app: AppContext, client: TestClient, data_dir: Path) -> None:
    admin = token_for(app, "admin2", "admin")
    body = {"paths": ["joe_biden", "rose_leslie"], "inclusion_reason": "custody image"}
    r = client.post("/api/v1/gallery/enrolments", headers=admin, json=body)
    assert r.status_code == 403 and "RETROFACE_IMPORT_DIR" in r.json()["error"]["message"]
    app.settings.import_dir = data_dir / "people"
    r = client.post("/api/v1/gallery/enrolments", headers=admin, json={"paths": ["../lfw"]})
    assert r.status_code == 422 and "outside the import folder" in r.json()["error"]["message"]
    r = client.post("/api/v1/gallery/enrolments", headers=admin, json=body)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    app.jobs.wait_idle(120)
    job = client.get(f"/api/v1/jobs/{job_id}", headers=admin).json()
    assert job["status"] == "succeeded", job
    assert job["progress"] == job["total"] == 4 and job["result"]["enrolled"] == 4


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_health_answers_while_a_probe_upload_is_in_progress(
    app: AppContext, client: TestClient, data_dir: Path, database_url: str
) -> None:
    """A probe upload does blocking work (database, face analysis); it must not hold the event
    loop. To make "while" deterministic, another connection holds an exclusive lock on the cases
    table, so the upload provably blocks inside its route until the test lets it go; /health is
    asked meanwhile. (Were the route a coroutine, that blocking call would stall the loop and
    /health with it; tests/test_architecture.py checks no route is one.)"""
    import threading

    from sqlalchemy import create_engine, text

    op = token_for(app, "olive", "operator")
    auth = token_for(app, "arthur", "authoriser")
    case = {
        "reference": "C1",
        "offence_category": "robbery",
        "purpose": "identify the suspect",
        "justification": "serious offence, the only lead available",
    }
    assert client.post("/api/v1/cases", headers=op, json=case).status_code == 201
    decision = {"approve": True, "note": "ok"}
    client.post("/api/v1/cases/C1/decision", headers=auth, json=decision)
    image = next((data_dir / "people" / "barack_obama").iterdir()).read_bytes()

    locker = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://", 1))
    upload: dict[str, int] = {}

    def post_probe() -> None:
        r = client.post(
            "/api/v1/cases/C1/probes",
            headers=op,
            data={"source": "CCTV", "how_obtained": "exhibit AB/1"},
            files={"file": ("probe.jpg", image, "image/jpeg")},
        )
        upload["status"] = r.status_code

    health: dict[str, int] = {}

    def get_health() -> None:
        health["status"] = client.get("/api/v1/health").status_code

    try:
        with locker.connect() as conn, conn.begin():
            conn.execute(text("LOCK TABLE cases IN ACCESS EXCLUSIVE MODE"))
            uploader = threading.Thread(target=post_probe, daemon=True)
            uploader.start()
            # wait until the upload is inside its route, queued behind the lock
            waiting = text(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'cases'::regclass"
            )
            for _ in range(6000):
                if conn.execute(waiting).scalar():
                    break
                threading.Event().wait(0.01)
            else:
                pytest.fail("the upload never reached the cases table")
            checker = threading.Thread(target=get_health, daemon=True)
            checker.start()
            checker.join(60)  # only a stalled event loop makes this wait
            assert health.get("status") == 200
            assert uploader.is_alive() and "status" not in upload  # still held by the lock
        uploader.join(120)
    finally:
        locker.dispose()
    assert upload["status"] == 201


def test_several_images_in_one_enrolment(
    app: AppContext, client: TestClient, data_dir: Path
) -> None:
    """``POST /gallery/images``: one enrolment run over the uploads, with per-image labels;
    a bad image is a rejection in the summary, malformed requests are refused whole;
    ``GET /gallery/index`` then holds every template."""
    admin = token_for(app, "admin2", "admin")
    aud = token_for(app, "aud", "auditor")
    lfw = data_dir / "lfw" / "Abel_Pacheco"
    images = sorted(lfw.glob("*.jpg"))[:2]
    files = [("files", (p.name, p.read_bytes(), "image/jpeg")) for p in images]
    files.append(("files", ("junk.jpg", b"not an image", "image/jpeg")))
    items = [
        {"path": f"custody/{images[0].name}", "subject": "abel", "display_name": "Abel P."},
        {"path": f"custody/{images[1].name}", "subject": "abel", "capture_date": "2024-05-01"},
        {"path": "custody/junk.jpg", "subject": "someone"},
    ]
    r = client.post(
        "/api/v1/gallery/images",
        headers=admin,
        files=files,
        data={"items": json.dumps(items)},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["enrolled"], body["subjects"], body["new_subjects"]) == (2, 1, 1)
    assert body["subject_references"] == ["abel"]
    assert [x["path"] for x in body["rejected"]] == ["custody/junk.jpg"]
    detail = client.get("/api/v1/gallery/subjects/abel", headers=aud).json()
    assert detail["display_name"] == "Abel P."
    assert [i["provenance"] for i in detail["reference_images"]] == [i["path"] for i in items[:2]]
    # the same images again: skipped, not an error
    two = {"items": json.dumps(items[:2])}
    again = client.post("/api/v1/gallery/images", headers=admin, files=files[:2], data=two)
    assert again.status_code == 200 and again.json()["skipped"] == 2
    # labels and files must pair up; the labels must be valid JSON objects
    for bad in (json.dumps(items[:1]), "not json", json.dumps([{"subject": "x"}] * 2)):
        r = client.post(
            "/api/v1/gallery/images", headers=admin, files=files[:2], data={"items": bad}
        )
        assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input", r.text
    # enrolment is the admin's: an auditor is refused at the gate
    r = client.post("/api/v1/gallery/images", headers=aud, files=files[:2], data=two)
    assert r.status_code == 403
    # the index as the server searches it: every template, at the gallery's version
    state = client.get("/api/v1/gallery/index", headers=aud).json()
    assert (state["templates"], state["version"]) == (2, state["gallery_version"])
    assert state["kind"] == "flat" and state["seconds"] >= 0
