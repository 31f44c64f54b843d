"""The operator and authoriser pages in Chromium: open a case, approve it, upload, pick, search.

One flow on the real app and models (SQLite only, like tests/test_web_browser.py): the operator
opens a case; an authoriser, in a second browser context (another person's browser), approves
it; the operator uploads a group photo through the file input, sees every face blurred, picks
one, searches and reads the candidate list with its lead label. A screenshot of each step goes
to ``RETROFACE_SCREENSHOTS`` (default: the test's temporary folder; the path is printed), and no
page may load anything from outside the server.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from tests.browser import browser_on, live_server, shots_dir
from tests.conftest import add_team, enrol_people

from retroface.context import AppContext
from retroface.core.labels import LEAD_LABEL

PASSWORD = "correct horse battery staple"
SCENE = "people/_multi_face_scenes/obama_and_biden.jpg"
VIDEO = "video/intel_face-demographics-walking_480x270.mp4"


@pytest.fixture
def sqlite_app(browser_app: Callable[..., AppContext]) -> AppContext:
    return browser_app()


def test_operator_and_authoriser_in_the_browser(
    sqlite_app: AppContext, data_dir: Path, tmp_path: Path
) -> None:
    add_team(sqlite_app, {"olive": "operator", "arthur": "authoriser"}, PASSWORD)
    enrol_people(sqlite_app, data_dir)
    with live_server(sqlite_app) as base, browser_on(base, shots_dir(tmp_path)) as b:
        olive = b.page()
        b.sign_in(olive, "olive", PASSWORD)
        olive.get_by_role("navigation").get_by_role("link", name="Cases").click()
        olive.get_by_role("link", name="Open a case").click()
        olive.get_by_label("Case reference").fill("CR/9/26")
        olive.get_by_label("Offence category").select_option("robbery")
        olive.get_by_label("Purpose").fill("identify the man seen at the shop")
        olive.get_by_label("Why a search is necessary").fill(
            "the CCTV still is the only lead; other enquiries exhausted"
        )
        b.shot(olive, "10-operator-opens-case")
        olive.get_by_role("button", name="Open the case and request authorisation").click()
        olive.wait_for_url(base + "/ui/cases/CR/9/26")
        assert "Awaiting an authoriser" in olive.text_content("#authorisation")

        arthur = b.page()  # a second browser context: another person
        b.sign_in(arthur, "arthur", PASSWORD)
        arthur.get_by_role("navigation").get_by_role("link", name="Authorisations").click()
        assert "other enquiries exhausted" in arthur.text_content("main")
        arthur.get_by_label("Note").fill("necessary and proportionate")
        b.shot(arthur, "11-authoriser-queue")
        arthur.get_by_role("button", name="Approve CR/9/26").click()
        arthur.wait_for_url("**/ui/authorisations?decided=*")
        assert "CR/9/26 approved" in arthur.text_content("main")

        olive.reload()
        assert "approved" in olive.text_content("#authorisation")
        olive.get_by_label("Images").set_input_files(str(data_dir / SCENE))
        olive.locator("#source").fill("CCTV")
        olive.locator("#how_obtained").fill("exported from DVR, exhibit AB/1")
        b.shot(olive, "12-operator-upload")
        olive.get_by_role("button", name="Upload and find faces").click()
        olive.wait_for_url("**/ui/probes/*")
        assert "every face is blurred" in olive.text_content("main")
        thumbs = olive.locator("ul.faces img.face")
        assert thumbs.count() >= 2
        olive.wait_for_load_state("networkidle")
        # every image arrived (served through the face service) and none is broken
        assert olive.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        b.shot(olive, "13-operator-faces-blurred")
        olive.get_by_label("Face 0").check()
        olive.get_by_role("button", name="Show this face").click()
        olive.wait_for_url("**/ui/probes/*?face=0")
        b.shot(olive, "14-operator-face-picked")
        olive.get_by_role("button", name="Search the gallery with face 0").click()
        olive.wait_for_url("**/ui/searches/*")
        main = olive.text_content("main") or ""
        assert LEAD_LABEL in main and "joe_biden" in main
        olive.wait_for_load_state("networkidle")
        assert olive.evaluate(
            "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
        )
        b.shot(olive, "15-operator-candidate-list")

        # footage: the track list appears by itself once the scan is done (htmx polling)
        olive.get_by_role("link", name="Case CR/9/26").click()
        olive.get_by_label("Video file").set_input_files(str(data_dir / VIDEO))
        olive.get_by_label("Source of the footage").fill("CCTV")
        olive.get_by_label("How the footage was obtained").fill("exported from DVR, exhibit AB/2")
        olive.get_by_role("button", name="Scan the video").click()
        olive.wait_for_url("**/ui/footage/*")
        olive.locator("legend", has_text="Pick the track").wait_for(timeout=120_000)
        assert "best shot at" in (olive.text_content("main") or "")
        b.shot(olive, "16-operator-footage-tracks")
        narrow = b.page(width=420, height=800)
        b.sign_in(narrow, "olive", PASSWORD)
        narrow.goto(olive.url)
        assert narrow.evaluate("document.documentElement.scrollWidth") <= 420
