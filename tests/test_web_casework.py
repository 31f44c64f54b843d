"""The operator's and authoriser's pages through the real app, real models and both stores.

The whole flow as a browser would post it (open a case, authorise it, upload a group photo, pick
a face in privacy mode, search, read the candidate list), then what must be refused: an operator
outside the case's team (403 on each page, audited by the services), forms without their CSRF
token, and an upload that is not an image (a clear message, nothing stored). The same flow runs
in Chromium in tests/test_web_browser_casework.py.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from tests.conftest import add_team, enrol_people
from tests.webutil import csrf_of, page_client, sign_in

from retroface.context import AppContext
from retroface.core.labels import LEAD_LABEL
from retroface.storage.tables import AuditRecord, Probe

PASSWORD = "correct horse battery staple"
CASE = "CR/7/26"  # a reference with "/" travels in the path
SCENE = "people/_multi_face_scenes/obama_and_biden.jpg"
TEAM = {"olive": "operator", "oscar": "operator", "arthur": "authoriser", "aud": "auditor"}
CASE_FORM = {
    "reference": CASE,
    "offence_category": "robbery",
    "purpose": "identify the man seen at the shop",
    "justification": "the CCTV still is the only lead; other enquiries exhausted",
}


def _probe_count(app: AppContext) -> int:
    with app.db.session() as s:
        return int(s.scalar(select(func.count(Probe.id))) or 0)


def _blob_count(app: AppContext) -> int:
    return sum(1 for p in app.blobs.root.rglob("*") if p.is_file())


def _open_and_approve(app: AppContext) -> tuple[TestClient, str]:
    """olive opens the case, arthur approves it; olive's signed-in client and CSRF token."""
    olive = page_client(app).__enter__()
    csrf = sign_in(olive, "olive", PASSWORD)
    form = olive.get("/ui/cases/new")
    assert form.status_code == 200 and "robbery" in form.text
    r = olive.post("/ui/cases", data={**CASE_FORM, "urgent": "true", "csrf": csrf})
    assert r.status_code == 303 and r.headers["location"] == "/ui/cases/CR/7/26"
    page = olive.get("/ui/cases/CR/7/26")
    assert page.status_code == 200 and "pending" in page.text
    assert "left" in page.text  # urgent: the time left of the window
    with page_client(app) as arthur:
        a_csrf = sign_in(arthur, "arthur", PASSWORD)
        queue = arthur.get("/ui/authorisations")
        assert queue.status_code == 200
        assert CASE_FORM["justification"] in queue.text and "urgent" in queue.text
        assert re.search(r"47 h \d\d min left|48 h 00 min left", queue.text), "window from clock"
        no_note = arthur.post(
            "/ui/cases/CR/7/26/decision", data={"approve": "true", "note": " ", "csrf": a_csrf}
        )
        assert no_note.status_code == 422 and "note" in no_note.text
        ok = arthur.post(
            "/ui/cases/CR/7/26/decision",
            data={"approve": "true", "note": "necessary and proportionate", "csrf": a_csrf},
        )
        assert ok.status_code == 303
        after = arthur.get(ok.headers["location"])
        assert "CR/7/26 approved" in after.text and "Approve CR/7/26" not in after.text
    return olive, csrf


def test_operator_flow_to_the_candidate_list(app: AppContext, data_dir: Path) -> None:
    add_team(app, TEAM, PASSWORD)
    enrol_people(app, data_dir)
    olive, csrf = _open_and_approve(app)
    with olive:
        case_page = olive.get("/ui/cases/CR/7/26")
        assert "approved" in case_page.text and 'type="file"' in case_page.text
        assert "multiple" in case_page.text and "necessary and proportionate" in case_page.text
        scene = (data_dir / SCENE).read_bytes()
        r = olive.post(
            "/ui/cases/CR/7/26/probes",
            data={
                "source": "CCTV",
                "how_obtained": "exported from DVR, exhibit AB/1",
                "csrf": csrf,
            },
            files=[("files", ("scene.jpg", scene, "image/jpeg"))],
        )
        assert r.status_code == 303, r.text
        probe_url = r.headers["location"]
        probe_id = int(probe_url.rsplit("/", 1)[1])

        # privacy mode: nothing picked, every face blurred (the scene and the thumbnails)
        page = olive.get(probe_url)
        assert page.status_code == 200
        assert f'src="/ui/faces/probes/{probe_id}/image.jpg"' in page.text
        assert "every face is blurred" in page.text and "?veiled=true" in page.text
        assert "Search the gallery" not in page.text  # no search before a face is picked
        faces = re.findall(r'name="face" id="face-(\d+)"', page.text)
        assert len(faces) >= 2, "the scene shows two people"
        assert "quality:" in page.text
        scene_jpeg = olive.get(f"/ui/faces/probes/{probe_id}/image.jpg")
        assert scene_jpeg.status_code == 200
        assert scene_jpeg.headers["content-type"] == "image/jpeg"
        assert scene_jpeg.headers["cache-control"] == "no-store"
        assert scene_jpeg.content[:2] == b"\xff\xd8"

        picked = olive.get(probe_url, params={"face": 0})
        assert "image.jpg?keep=0" in picked.text and "Search the gallery with face 0" in picked.text
        r = olive.post(
            f"/ui/probes/{probe_id}/search",
            data={"case": CASE, "face": "0", "top_k": "3", "csrf": csrf_of(picked.text)},
        )
        assert r.status_code == 303
        search_url = r.headers["location"]
        search_id = int(search_url.rsplit("/", 1)[1])
        result = olive.get(search_url)
        assert result.status_code == 200
        assert LEAD_LABEL in result.text
        assert "joe_biden" in result.text  # face 0 of the scene is Joe Biden (see test_face_images)
        rank1 = olive.get(f"/ui/faces/searches/{search_id}/candidates/1.jpg")
        assert rank1.status_code == 200 and rank1.content[:2] == b"\xff\xd8"
        export = olive.get(f"/ui/searches/{search_id}/export")
        assert export.status_code == 200 and LEAD_LABEL in export.text
        assert "review not settled" in export.text
        listed = olive.get("/ui/cases/CR/7/26")
        assert f"/ui/searches/{search_id}" in listed.text and "scene.jpg" in listed.text
        mine = olive.get("/ui/cases")
        assert "/ui/cases/CR/7/26" in mine.text

    # an operator outside the case's team: refused on every page, and the refusal is audited
    with page_client(app) as oscar:
        sign_in(oscar, "oscar", PASSWORD)
        for url in (
            "/ui/cases/CR/7/26",
            probe_url,
            search_url,
            f"/ui/faces/probes/{probe_id}/image.jpg",
            f"/ui/faces/searches/{search_id}/candidates/1.jpg",
        ):
            r = oscar.get(url)
            assert r.status_code == 403, url
            assert "joe_biden" not in r.text
        assert CASE not in oscar.get("/ui/cases").text
    with app.db.session() as s:
        refused = set(
            s.scalars(
                select(AuditRecord.action).where(
                    AuditRecord.actor == "oscar", AuditRecord.action.like("%.refused")
                )
            )
        )
    assert {"case.show.refused", "probe.view.refused", "search.view.refused"} <= refused
    assert "face.view.refused" in refused


def test_forms_need_their_csrf_token(app: AppContext, data_dir: Path) -> None:
    add_team(app, TEAM, PASSWORD)
    with page_client(app) as olive:
        csrf = sign_in(olive, "olive", PASSWORD)
        r = olive.post("/ui/cases", data=CASE_FORM)
        assert r.status_code == 403 and 'data-code="forbidden"' in r.text
        assert olive.get("/ui/cases/CR/7/26").status_code == 404  # nothing was opened
        assert olive.post("/ui/cases", data={**CASE_FORM, "csrf": csrf}).status_code == 303
        upload = olive.post(
            "/ui/cases/CR/7/26/probes",
            data={"source": "CCTV", "how_obtained": "exhibit AB/1"},
            files=[("files", ("a.jpg", (data_dir / SCENE).read_bytes(), "image/jpeg"))],
        )
        assert upload.status_code == 403
        assert (
            olive.post("/ui/probes/1/search", data={"case": CASE, "face": "0"}).status_code == 403
        )
    with page_client(app) as arthur:
        sign_in(arthur, "arthur", PASSWORD)
        r = arthur.post("/ui/cases/CR/7/26/decision", data={"approve": "true", "note": "ok"})
        assert r.status_code == 403
    assert app.cases.list_cases(app.users.authenticate_password("olive", PASSWORD))[0].status == (
        "pending"
    )
    assert _probe_count(app) == 0


@pytest.mark.parametrize("with_good", [False, True])
def test_a_bad_upload_is_explained_and_stores_nothing(
    app: AppContext, data_dir: Path, with_good: bool
) -> None:
    add_team(app, TEAM, PASSWORD)
    olive, csrf = _open_and_approve(app)
    blobs = _blob_count(app)
    files = [("files", ("notes.jpg", b"this is not an image", "image/jpeg"))]
    if with_good:
        files.append(("files", ("scene.jpg", (data_dir / SCENE).read_bytes(), "image/jpeg")))
    with olive:
        r = olive.post(
            "/ui/cases/CR/7/26/probes",
            data={
                "source": "CCTV",
                "how_obtained": "exported from DVR, exhibit AB/1",
                "csrf": csrf,
            },
            files=files,
        )
    assert r.status_code == (200 if with_good else 422)
    assert "notes.jpg" in r.text and "not an image" in r.text
    if with_good:
        assert "Added 1 probe" in r.text and "Some files were not added" in r.text
        assert _probe_count(app) == 1 and _blob_count(app) == blobs + 1
    else:
        assert "Nothing was added" in r.text
        assert _probe_count(app) == 0 and _blob_count(app) == blobs


VIDEO = "video/intel_face-demographics-walking_480x270.mp4"


def _scanned(client: TestClient, scan_url: str) -> str:
    """Poll the status fragment as the page does until the scan is done; the page then."""
    for _ in range(1200):  # a bound, not a timing: the 2.8 s clip is scanned in a few seconds
        status = client.get(scan_url + "/status")
        assert status.status_code == 200
        if status.headers.get("hx-refresh") == "true":
            break
        assert 'hx-trigger="every 1s"' in status.text and "<progress" in status.text
        time.sleep(0.1)
    else:
        pytest.fail("the footage scan never finished")
    page = client.get(scan_url)
    assert page.status_code == 200
    return page.text


def test_footage_scan_pick_a_track_and_search(app: AppContext, data_dir: Path) -> None:
    add_team(app, TEAM, PASSWORD)
    enrol_people(app, data_dir)
    olive, csrf = _open_and_approve(app)
    provenance = {"source": "CCTV", "how_obtained": "exported from DVR, exhibit AB/2"}
    with olive:
        r = olive.post(
            "/ui/cases/CR/7/26/footage",
            data={**provenance, "csrf": csrf},
            files={"video": ("walk.mp4", (data_dir / VIDEO).read_bytes(), "video/mp4")},
        )
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/footage/")
        scan_url = r.headers["location"]
        page = _scanned(olive, scan_url)
        tracks = re.findall(r'name="track" id="track-(\d+)"', page)
        assert tracks, "people walk towards the camera in this clip"
        assert "best shot at" in page and "?veiled=true" in page
        assert "Search the gallery with track" not in page  # nothing picked yet
        first = tracks[0]
        shot = olive.get(f"{scan_url}/tracks/{first}.jpg?veiled=true")
        assert shot.status_code == 200 and shot.content[:2] == b"\xff\xd8"
        assert shot.headers["cache-control"] == "no-store"
        picked = olive.get(scan_url, params={"track": first})
        assert f'tracks/{first}.jpg"' in picked.text  # the picked track's best shot, clear
        r = olive.post(
            f"{scan_url}/tracks/{first}/search",
            data={"top_k": "3", "csrf": csrf_of(picked.text)},
        )
        assert r.status_code == 303 and r.headers["location"].startswith("/ui/searches/")
        result = olive.get(r.headers["location"])
        assert result.status_code == 200 and LEAD_LABEL in result.text
        case_page = olive.get("/ui/cases/CR/7/26")
        assert "walk.mp4@" in case_page.text and "video" in case_page.text
        assert f'href="{scan_url}"' in case_page.text  # the operator's scans of the case

        bad = olive.post(
            "/ui/cases/CR/7/26/footage",
            data={**provenance, "csrf": csrf},
            files={"video": ("broken.mp4", b"not a video at all", "video/mp4")},
        )
        assert bad.status_code == 303
        assert "flash error" in _scanned(olive, bad.headers["location"])
    with page_client(app) as oscar:
        o_csrf = sign_in(oscar, "oscar", PASSWORD)
        assert oscar.get(scan_url).status_code == 404  # another operator's scan: not found
        assert oscar.get(f"{scan_url}/tracks/{first}.jpg").status_code == 404
        r = oscar.post(
            "/ui/cases/CR/7/26/footage",
            data={**provenance, "csrf": o_csrf},
            files={"video": ("walk.mp4", (data_dir / VIDEO).read_bytes(), "video/mp4")},
        )
        assert r.status_code == 403
    with app.db.session() as s:
        actions = list(
            s.execute(select(AuditRecord.actor, AuditRecord.action, AuditRecord.object_type))
        )
    assert ("olive", "video.scan", "video") in actions
    assert ("olive", "face.view", "video") in actions
    assert ("oscar", "video.scan.refused", "case") in actions
