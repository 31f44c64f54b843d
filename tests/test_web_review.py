"""The reviewer, auditor, oversight and admin pages, through the real app and both stores.

A real case and search (the four people of ``people/`` enrolled, a group photo as the probe, the
real models), then the pages as each role sees them: two blind reviewers and a tiebreak, the
faces and who may not see them, the audit log and its verification, the oversight figures (which
must name nobody), and the admin's enrolment job, erasure and accounts. The browser test
(tests/test_web_browser_review.py) drives the comparison view itself in Chromium.
"""

from __future__ import annotations

import io
import re
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select
from tests.conftest import add_team, enrol_people
from tests.webutil import csrf_of, page_client, sign_in

from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.search.service import ProbeProvenance
from retroface.storage.tables import AuditRecord

PASSWORD = "a long test password"
CASE = "CR/W12"
SCENE = "people/_multi_face_scenes/obama_and_biden.jpg"
ROLES = {
    "admin": "admin",
    "olive": "operator",  # owns the case, runs the search
    "oscar": "operator",  # outside the case's team
    "arthur": "authoriser",
    "rita": "reviewer",
    "rob": "reviewer",
    "ray": "reviewer",
    "aud": "auditor",
    "ovid": "oversight",
}
NOTE_RITA = "ears and jaw line agree"
NOTE_ROB = "the nose bridge differs"


@dataclass
class World:
    app: AppContext
    who: dict[str, Principal]
    search_id: int
    similarity: float  # of candidate 1, as the search returned it


@pytest.fixture
def world(app: AppContext, data_dir: Path) -> World:
    return build_world(app, data_dir)


def build_world(app: AppContext, data_dir: Path) -> World:
    """Accounts, the gallery, an authorised case and one search awaiting review."""
    who = add_team(app, ROLES, PASSWORD)
    enrol_people(app, data_dir)
    app.cases.open(who["olive"], CASE, "robbery", "identify the suspect", "the CCTV still is all")
    # investigation mode: the list holds the runners-up below the operating threshold too, so
    # that the reviewers have three candidates to compare
    app.cases.authorise(
        who["arthur"], CASE, True, "necessary and proportionate", investigation_mode=True
    )
    probe = app.searches.add_probe(
        who["olive"],
        CASE,
        (data_dir / SCENE).read_bytes(),
        "scene.jpg",
        ProbeProvenance("CCTV", "exhibit AB/1"),
    )
    search = app.searches.search(who["olive"], CASE, probe.probe_id, 0, top_k=3)
    return World(app, who, search.search_id, search.candidates[0].similarity)


def client_for(app: AppContext, username: str) -> tuple[TestClient, str]:
    client = page_client(app).__enter__()
    return client, sign_in(client, username, PASSWORD)


def jpeg_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as img:
        assert img.format == "JPEG"
        return img.size


def audited(app: AppContext, actor: str, action: str) -> list[AuditRecord]:
    with app.db.session() as s:
        rows = list(
            s.scalars(
                select(AuditRecord)
                .where(AuditRecord.actor == actor, AuditRecord.action == action)
                .order_by(AuditRecord.seq)
            )
        )
        s.expunge_all()
        return rows


def decide(client: TestClient, csrf: str, sid: int, decision: str, rank: str, note: str) -> None:
    r = client.post(
        f"/ui/reviews/{sid}",
        data={"csrf": csrf, "decision": decision, "candidate_rank": rank, "note": note},
    )
    assert r.status_code == 303, r.text[:500]


def test_two_blind_reviewers_and_a_tiebreak_through_the_pages(world: World) -> None:
    app, sid = world.app, world.search_id
    rita, rita_csrf = client_for(app, "rita")
    rob, rob_csrf = client_for(app, "rob")
    ray, ray_csrf = client_for(app, "ray")
    score = f"{world.similarity:.3f}"

    # the blind queue, the sheet: both faces of every candidate, aligned at one size
    queue = rita.get("/ui/reviews")
    assert queue.status_code == 200 and f'href="/ui/reviews/{sid}"' in queue.text
    sheet = rita.get(f"/ui/reviews/{sid}")
    assert sheet.status_code == 200
    assert "investigative lead" in sheet.text.lower() and "Probe quality" in sheet.text
    assert f"/ui/faces/reviews/{sid}/probe.jpg?size=256" in sheet.text
    for rank in (1, 2, 3):
        assert f"/ui/faces/reviews/{sid}/candidates/{rank}.jpg?size=256" in sheet.text
    # where the threshold lies is always on the sheet, and which candidates are below it
    assert "investigation mode" in sheet.text and "below the operating threshold" in sheet.text
    # after-look (the default): no score on the sheet until asked for
    assert score not in sheet.text
    shown = rita.get(f"/ui/reviews/{sid}/similarity")
    assert shown.status_code == 200 and score in shown.text
    probe = rita.get(f"/ui/faces/reviews/{sid}/probe.jpg?size=256")
    cand = rita.get(f"/ui/faces/reviews/{sid}/candidates/1.jpg?size=256")
    assert probe.status_code == cand.status_code == 200
    assert probe.headers["cache-control"] == "no-store"
    assert jpeg_size(probe.content) == jpeg_size(cand.content) == (256, 256)
    compare = rita.get(f"/ui/reviews/{sid}/compare/1")
    assert compare.status_code == 200 and "/ui/static/compare.js" in compare.text
    assert score not in compare.text and "<script>" not in compare.text
    marks = rita.get(f"/ui/faces/reviews/{sid}/candidates/1/landmarks.json?size=512")
    assert marks.status_code == 200
    assert len(marks.json()["probe"]) == len(marks.json()["candidate"]) == 5
    assert rita.get(f"/ui/reviews/{sid}/compare/9").status_code == 404
    views = audited(app, "rita", "face.view")
    assert {v.details["view"] for v in views} >= {"probe_aligned", "candidate_aligned"}

    # a bad form comes back with the reason; then rita decides first
    bad = rita.post(
        f"/ui/reviews/{sid}", data={"csrf": rita_csrf, "decision": "possible match", "note": "x"}
    )
    assert bad.status_code == 422 and "candidate rank" in bad.text
    decide(rita, rita_csrf, sid, "possible match", "1", NOTE_RITA)
    mine = rita.get(f"/ui/reviews/{sid}")
    assert NOTE_RITA in mine.text and "You decided" in mine.text

    # the log browser keeps the review blind for an auditor who is also a reviewer; a plain
    # auditor reads every decision, and reading the log costs neither the right to review
    app.users.add(world.who["admin"], "ava", "auditor,reviewer", PASSWORD)
    ava, _ = client_for(app, "ava")
    aud, _ = client_for(app, "aud")
    hidden = ava.get("/ui/audit", params={"action": "review.decide"})
    assert hidden.status_code == 200 and "rita" in hidden.text
    assert NOTE_RITA not in hidden.text and "hidden: blind review" in hidden.text
    assert NOTE_RITA in aud.get("/ui/audit", params={"action": "review.decide"}).text
    assert f'href="/ui/reviews/{sid}"' in ava.get("/ui/reviews").text

    # rob is blind to rita's decision, and decides otherwise
    blind = rob.get(f"/ui/reviews/{sid}")
    assert blind.status_code == 200 and NOTE_RITA not in blind.text
    assert "1 hidden from you" in blind.text
    decide(rob, rob_csrf, sid, "no match", "", NOTE_ROB)
    # disputed, so not settled: neither sees the other's decision
    for client, other in ((rita, NOTE_ROB), (rob, NOTE_RITA)):
        page = client.get(f"/ui/reviews/{sid}")
        assert other not in page.text and 'data-status="disputed"' in page.text

    # the tiebreak settles it; then everyone who reviewed sees every decision
    tie = ray.get(f"/ui/reviews/{sid}")
    assert NOTE_RITA not in tie.text and NOTE_ROB not in tie.text
    decide(ray, ray_csrf, sid, "possible match", "1", "tiebreak: the ears")
    for client in (rita, rob, ray):
        page = client.get(f"/ui/reviews/{sid}")
        assert NOTE_RITA in page.text and NOTE_ROB in page.text
        assert "possible match: rank 1" in page.text
    # a decision twice is a conflict shown on the page, not a 500
    again = rita.post(
        f"/ui/reviews/{sid}",
        data={"csrf": rita_csrf, "decision": "no match", "candidate_rank": "", "note": ""},
    )
    assert again.status_code == 409
    # RETROFACE_REVIEW_REVEAL_SCORES: "always" puts the score on the sheet, "never" nowhere
    app.settings.review_reveal_scores = "always"
    assert score in rita.get(f"/ui/reviews/{sid}").text
    app.settings.review_reveal_scores = "never"
    assert score not in rita.get(f"/ui/reviews/{sid}").text
    assert score not in rita.get(f"/ui/reviews/{sid}/compare/1").text
    assert score not in rita.get(f"/ui/reviews/{sid}/similarity").text
    for c in (rita, rob, ray, ava, aud):
        c.__exit__(None, None, None)


def test_who_may_not_open_review_pages_and_faces(world: World, data_dir: Path) -> None:
    app, sid = world.app, world.search_id
    rita, _ = client_for(app, "rita")
    oscar, _ = client_for(app, "oscar")
    olive, _ = client_for(app, "olive")
    # a reviewer opens no authoriser or admin page
    for path in ("/ui/users", "/ui/gallery", "/ui/audit", "/ui/jobs/1"):
        assert rita.get(path).status_code == 403, path
    # operators, in or outside the case's team, get no review page and no face through them
    for client, name in ((oscar, "oscar"), (olive, "olive")):
        r = client.get(f"/ui/faces/reviews/{sid}/candidates/1.jpg")
        assert r.status_code == 403 and r.headers["content-type"].startswith("text/html")
        assert client.get(f"/ui/reviews/{sid}").status_code == 403
        refused = audited(app, name, "api.call.refused")
        assert any("/ui/faces/reviews/" in (r.object_id or "") for r in refused)
    # rita and rob settle the list; ray, who did not review it, may see none of its faces now
    rob, rob_csrf = client_for(app, "rob")
    ray, _ = client_for(app, "ray")
    rita_csrf = csrf_of(rita.get(f"/ui/reviews/{sid}").text)
    decide(rita, rita_csrf, sid, "no match", "", "")
    decide(rob, rob_csrf, sid, "no match", "", "")
    assert ray.get(f"/ui/faces/reviews/{sid}/probe.jpg").status_code == 403
    assert ray.get(f"/ui/reviews/{sid}").status_code == 403
    refused = audited(app, "ray", "face.view.refused")
    assert refused and refused[-1].details["reason"] == "need_to_know"
    assert refused[-1].object_id == str(sid)
    # an operator who is also a reviewer may not review the search she ran: no sheet, and a
    # decision posted anyway is refused by the service and audited
    app.users.add(world.who["admin"], "opal", "operator,reviewer", PASSWORD)
    opal_p = app.users.principal_for("opal")
    app.cases.open(
        opal_p, "CR/W12b", "robbery", "identify the suspect", "a second CCTV still is all there is"
    )
    app.cases.authorise(world.who["arthur"], "CR/W12b", True, "necessary and proportionate")
    data = (data_dir / SCENE).read_bytes()
    probe = app.searches.add_probe(
        opal_p, "CR/W12b", data, "scene.jpg", ProbeProvenance("CCTV", "exhibit AB/2")
    )
    own = app.searches.search(opal_p, "CR/W12b", probe.probe_id, 0, top_k=2).search_id
    opal, opal_csrf = client_for(app, "opal")
    assert f'href="/ui/reviews/{own}"' not in opal.get("/ui/reviews").text
    assert opal.get(f"/ui/reviews/{own}").status_code == 403
    r = opal.post(
        f"/ui/reviews/{own}",
        data={"csrf": opal_csrf, "decision": "no match", "candidate_rank": "", "note": ""},
    )
    assert r.status_code == 403 and "separation of duties" in r.text
    assert audited(app, "opal", "review.decide.refused")
    opal.__exit__(None, None, None)

    # the auditor reads the settled sheet and its faces
    aud, _ = client_for(app, "aud")
    assert aud.get(f"/ui/reviews/{sid}").status_code == 200
    assert aud.get(f"/ui/faces/reviews/{sid}/candidates/2.jpg").status_code == 200
    for c in (rita, oscar, olive, rob, ray, aud):
        c.__exit__(None, None, None)


def test_auditor_oversight_and_admin_pages(world: World, data_dir: Path) -> None:
    app, sid = world.app, world.search_id
    aud, aud_csrf = client_for(app, "aud")

    # the audit log: filtered, paginated, and reading it is recorded
    log = aud.get("/ui/audit", params={"action": "search.", "case_ref": CASE})
    assert log.status_code == 200 and "search.run" in log.text and "olive" in log.text
    assert "probe.add" not in log.text
    assert aud.get("/ui/audit", params={"since": "not a date"}).status_code == 422
    query = audited(app, "aud", "audit.query")
    assert query and query[0].details["action"] == "search." and query[0].details["via"] == "web"
    verified = aud.post("/ui/audit/verify", data={"csrf": aud_csrf})
    assert verified.status_code == 200 and 'data-verify="ok"' in verified.text
    checked = re.search(r"data-checked>(\d+)<", verified.text)
    assert checked and int(checked.group(1)) > 10
    reports = aud.get("/ui/reports")
    assert reports.status_code == 200 and reports.text.count("data:image/png;base64,") == 4
    doc = aud.get("/ui/reports/transparency")
    assert doc.status_code == 200 and "script-src" not in doc.headers["content-security-policy"]
    assert "style-src 'sha256-" in doc.headers["content-security-policy"]
    assert aud.get("/ui/reports/evaluation").status_code == 404  # none produced yet

    # the oversight view: the month's figures, and nobody named
    ovid, _ = client_for(app, "ovid")
    page = ovid.get("/ui/oversight")
    assert page.status_code == 200
    month = app.clock().strftime("%Y-%m")
    row = re.search(rf'data-month="{month}">(.*?)</tr>', page.text, re.S)
    assert row and '<td class="num" data-figure="searches">1</td>' in row.group(1)
    body = page.text.split("</header>", 1)[1]  # the header names the signed-in user only
    for name in [*ROLES, CASE, "joe_biden", "barack_obama", "kit_harington", "rose_leslie"]:
        assert not re.search(rf"\b{re.escape(name)}\b", body), name
    assert ovid.get("/ui/reviews").status_code == 403
    assert ovid.get("/ui/audit").status_code == 403

    # the admin: batch enrolment from the import folder, followed on its progress fragment
    app.settings.import_dir = data_dir / "people"
    admin, admin_csrf = client_for(app, "admin")
    gallery = admin.get("/ui/gallery")
    assert gallery.status_code == 200 and 'value="lin_manuel_miranda"' in gallery.text
    started = admin.post(
        "/ui/gallery/enrolments",
        data={"csrf": admin_csrf, "paths": ["lin_manuel_miranda"], "inclusion_reason": "test"},
    )
    assert started.status_code == 303
    job_id = int(started.headers["location"].rsplit("=", 1)[1])
    assert f'hx-get="/ui/jobs/{job_id}"' in admin.get(started.headers["location"]).text
    fragment = ""
    for _ in range(600):
        fragment = admin.get(f"/ui/jobs/{job_id}", headers={"HX-Request": "true"}).text
        if 'data-status="succeeded"' in fragment or 'data-status="failed"' in fragment:
            break
        time.sleep(0.1)
    assert 'data-status="succeeded"' in fragment and "<progress" in fragment
    assert "<html" not in fragment and "hx-trigger" not in fragment  # done: polling stops
    found = admin.get("/ui/gallery/subjects", params={"q": "MIRANDA"})
    assert 'data-subject="lin_manuel_miranda"' in found.text
    assert 'data-subject="joe_biden"' not in found.text

    # the subject's reference faces, to check before erasing (each view audited)
    detail = admin.get("/ui/gallery/subjects/lin_manuel_miranda")
    assert detail.status_code == 200
    image_ids = re.findall(r'src="/ui/faces/gallery/(\d+)\.jpg"', detail.text)
    assert image_ids
    face = admin.get(f"/ui/faces/gallery/{image_ids[0]}.jpg")
    assert face.status_code == 200 and face.headers["cache-control"] == "no-store"
    assert audited(app, "admin", "face.view")[-1].object_id == image_ids[0]

    # erasure needs a reason, and removes the subject
    no_reason = admin.post(
        "/ui/gallery/subjects/lin_manuel_miranda/erase", data={"csrf": admin_csrf, "reason": ""}
    )
    assert no_reason.status_code == 422
    erased = admin.post(
        "/ui/gallery/subjects/lin_manuel_miranda/erase",
        data={"csrf": admin_csrf, "reason": "enrolled in error"},
    )
    assert erased.status_code == 303
    assert admin.get(f"/ui/faces/gallery/{image_ids[0]}.jpg").status_code == 404
    after = admin.get("/ui/gallery/subjects", params={"q": "miranda"})
    assert "lin_manuel_miranda" not in after.text.split("</form>", 1)[1]
    erasures = audited(app, "admin", "gallery.erase")
    assert erasures and erasures[-1].object_id == "lin_manuel_miranda"

    # accounts: add one, then disable it
    added = admin.post(
        "/ui/users",
        data={"csrf": admin_csrf, "username": "nina", "password": PASSWORD, "roles": ["reviewer"]},
    )
    assert added.status_code == 303
    users = admin.get("/ui/users")
    assert 'data-user="nina"' in users.text
    off = admin.post("/ui/users/nina/disable", data={"csrf": admin_csrf})
    assert off.status_code == 303
    assert not next(u for u in app.users.list(world.who["admin"]) if u.username == "nina").active
    assert sid  # the search the figures count
    for c in (aud, ovid, admin):
        c.__exit__(None, None, None)
