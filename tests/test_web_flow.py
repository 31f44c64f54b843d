"""The whole workflow in a real browser (Debian's Chromium via Playwright), on the real app,
models and data: issue #12's acceptance flow.

The operator opens a case, the authoriser approves it, the operator uploads an LFW photograph,
picks the face and searches; two reviewers compare the probe and candidate 1 (landmarks on, zoom
by keyboard, pan, wipe, overlay and flicker), ask for the similarity, and decide in the
comparison view; the auditor verifies the chain; the oversight panel reads the month's figures.
Every face is blurred (``RETROFACE_BLUR_ALL_FACES``) so that the screenshots, written to the
folder the test prints, show no recognisable face. No page may load anything from outside the
server.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from tests.browser import browser_on, live_server, shots_dir
from tests.conftest import add_team, enrol_people
from tests.test_web_review import NOTE_RITA, NOTE_ROB, PASSWORD, ROLES

from retroface.context import AppContext
from retroface.core.labels import LEAD_LABEL
from retroface.storage.tables import AuditRecord

#: An LFW photograph of a person whose other photographs are in the gallery (people/joe_biden).
PROBE = "lfw/Joseph_Biden/Joseph_Biden_0001.jpg"


@pytest.fixture
def sqlite_app(browser_app: Callable[..., AppContext]) -> AppContext:
    return browser_app(blur_all_faces=True)


def wait_until(page: Any, script: str, seconds: float = 20) -> None:
    """Poll ``script`` in the page (``wait_for_function`` evaluates a string, which the pages'
    CSP forbids)."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(script):
        assert time.monotonic() < deadline, f"timed out waiting for {script}"
        page.wait_for_timeout(100)


def audited_refusals(app: AppContext, actor: str) -> int:
    with app.db.session() as s:
        return len(
            s.scalars(
                select(AuditRecord.seq).where(
                    AuditRecord.actor == actor, AuditRecord.action.like("%.refused")
                )
            ).all()
        )


def review_in_comparison(b: Any, base: str, who: str, decision: str, note: str) -> Path:
    """One reviewer's whole review in the comparison view; returns the screenshot of it."""
    page = b.page()
    b.sign_in(page, who, PASSWORD)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Review queue").click()
    page.get_by_role("link", name="Review search").first.click()
    assert page.locator("img.face").count() >= 2
    page.get_by_role("link", name="Compare candidate 1").click()
    wait_until(
        page,
        "Array.from(document.querySelectorAll('#cmp img'))"
        ".every(i => i.complete && i.naturalWidth == 512)",
    )
    cmp = page.locator("#cmp")
    # landmarks: five points of each face over each face (own, and the other's faintly)
    page.get_by_label("Landmarks (L)").check()
    wait_until(page, "document.querySelectorAll('#cmp circle.mark-probe').length == 5")
    assert page.locator("#cmp circle.mark-candidate").count() == 5
    assert page.locator("#cmp .ghost circle").count() == 10
    # zoom and pan from the keyboard, both faces in step
    cmp.focus()
    page.keyboard.press("+")
    page.keyboard.press("+")
    page.keyboard.press("ArrowLeft")
    assert float(cmp.get_attribute("data-zoom") or 1) > 1.5
    transforms = page.eval_on_selector_all(".cmp-stage", "s => s.map(e => e.style.transform)")
    assert len(set(transforms)) == 1 and "scale(1.5625)" in transforms[0]
    assert page.locator("#zoom-level").text_content() == "156%"
    shot = b.shot(page, f"05-{who}-compare-landmarks-zoom")
    # the wipe: the candidate shown from the slider's position rightwards
    page.get_by_label("Wipe", exact=True).check()
    page.get_by_label("Wipe position (probe left, candidate right)").fill("30")
    clip = page.eval_on_selector('[data-pane="candidate"]', "e => e.style.clipPath")
    assert clip == "inset(0px 0px 0px 30%)" or clip == "inset(0 0 0 30%)"
    b.shot(page, f"05-{who}-compare-wipe")
    # overlay and flicker, then back to side by side
    page.get_by_label("Overlay / flicker").check()
    page.get_by_label("Candidate opacity").fill("70")
    assert page.eval_on_selector('[data-pane="candidate"]', "e => e.style.opacity") == "0.7"
    page.get_by_role("button", name="Flicker (F)").click()
    assert page.get_by_role("button", name="Flicker (F)").get_attribute("aria-pressed") == "true"
    page.keyboard.press("0")
    assert page.locator("#zoom-level").text_content() == "100%"
    page.get_by_label("Side by side").check()
    assert page.locator("#flicker").get_attribute("aria-pressed") == "false"  # stopped, hidden
    # the similarity only on request (after-look), then the decision in the comparison view
    assert page.locator("#scores .score").count() == 0
    page.get_by_role("button", name="Show similarity").click()
    page.wait_for_selector("#scores .score")
    page.get_by_label("Decision").select_option(decision)
    assert page.get_by_label("Candidate rank (for a possible match)").input_value() == "1"
    page.get_by_label("Note (what you compared, why)").fill(note)
    page.get_by_role("button", name="Record my decision").click()
    page.wait_for_url("**/ui/reviews/*?decided=*")
    assert "Your decision is recorded" in page.text_content("main")
    b.shot(page, f"06-{who}-decided")
    narrow = b.page(width=420, height=800)
    b.sign_in(narrow, who, PASSWORD)
    for url in (page.url.split("?")[0], page.url.split("?")[0] + "/compare/1"):
        narrow.goto(url)
        assert narrow.evaluate("document.documentElement.scrollWidth") <= 420, url
    return shot


def test_the_whole_flow_in_the_browser(
    sqlite_app: AppContext, data_dir: Path, tmp_path: Path
) -> None:
    """Issue #12's acceptance flow, every step through the pages: the operator opens a case, the
    authoriser approves it, the operator uploads an LFW image, picks the face and searches; two
    reviewers decide in the comparison view; the auditor verifies the chain; the oversight panel
    reads the month's figures. ``RETROFACE_README_SHOTS=docs/images`` also writes the README's
    two screenshots (every face blurred) there."""
    add_team(sqlite_app, ROLES, PASSWORD)
    enrol_people(sqlite_app, data_dir)
    shots = shots_dir(tmp_path)
    with live_server(sqlite_app) as base, browser_on(base, shots) as b:
        olive = b.page()
        b.sign_in(olive, "olive", PASSWORD)
        olive.get_by_role("navigation").get_by_role("link", name="Cases").click()
        olive.get_by_role("link", name="Open a case").click()
        olive.get_by_label("Case reference").fill("CR/7/26")
        olive.get_by_label("Offence category").select_option("robbery")
        olive.get_by_label("Purpose").fill("identify the man seen at the shop")
        olive.get_by_label("Why a search is necessary").fill(
            "the CCTV still is the only lead; other enquiries exhausted"
        )
        b.shot(olive, "01-operator-opens-case")
        olive.get_by_role("button", name="Open the case and request authorisation").click()
        olive.wait_for_url(base + "/ui/cases/CR/7/26")

        arthur = b.page()
        b.sign_in(arthur, "arthur", PASSWORD)
        arthur.get_by_role("navigation").get_by_role("link", name="Authorisations").click()
        arthur.get_by_label("Note").fill("necessary and proportionate")
        b.shot(arthur, "02-authoriser-approves")
        arthur.get_by_role("button", name="Approve CR/7/26").click()
        arthur.wait_for_url("**/ui/authorisations?decided=*")

        olive.reload()
        assert "approved" in (olive.text_content("#authorisation") or "")
        olive.get_by_label("Images").set_input_files(str(data_dir / PROBE))
        olive.locator("#source").fill("CCTV")
        olive.locator("#how_obtained").fill("exported from DVR, exhibit AB/1")
        olive.get_by_role("button", name="Upload and find faces").click()
        olive.wait_for_url("**/ui/probes/*")
        olive.get_by_label("Face 0").check()
        olive.get_by_role("button", name="Show this face").click()
        olive.wait_for_url("**/ui/probes/*?face=0")
        b.shot(olive, "03-operator-picks-face")
        olive.get_by_role("button", name="Search the gallery with face 0").click()
        olive.wait_for_url("**/ui/searches/*")
        main = olive.text_content("main") or ""
        assert LEAD_LABEL in main and "joe_biden" in main
        assert "at or above the operating threshold" in main
        olive.wait_for_load_state("networkidle")
        candidate_list = b.shot(olive, "04-candidate-list")
        search_id = int(olive.url.rsplit("/", 1)[1])

        compare = review_in_comparison(b, base, "rita", "possible match", NOTE_RITA)
        review_in_comparison(b, base, "rob", "possible match", NOTE_ROB)
        settled = b.page()
        b.sign_in(settled, "rita", PASSWORD)
        settled.goto(f"{base}/ui/reviews/{search_id}")
        assert NOTE_ROB in (settled.text_content("main") or "")  # both in: now visible
        # roles in the browser: a reviewer cannot open the authoriser's pages ...
        refused = settled.goto(f"{base}/ui/authorisations")
        assert refused is not None and refused.status == 403
        assert "Not allowed" in (settled.text_content("main") or "")
        # ... and an operator outside the case's team sees none of its faces (audited)
        oscar = b.page()
        b.sign_in(oscar, "oscar", PASSWORD)
        for url in (
            f"/ui/searches/{search_id}",
            f"/ui/faces/searches/{search_id}/candidates/1.jpg",
            f"/ui/faces/searches/{search_id}/probe.jpg",
        ):
            answer = oscar.goto(base + url)
            assert answer is not None and answer.status == 403, url
        assert audited_refusals(sqlite_app, "oscar") >= 3

        audit = b.page()
        b.sign_in(audit, "aud", PASSWORD)
        audit.get_by_role("navigation", name="Main").get_by_role("link", name="Audit log").click()
        audit.get_by_label("Action starts with").fill("review.")
        audit.get_by_role("button", name="Apply filters").click()
        assert audit.locator("table.audit code", has_text="review.decide").count() == 2
        audit.get_by_role("button", name="Verify the chain").first.click()
        assert audit.locator("[data-verify]").get_attribute("data-verify") == "ok"
        b.shot(audit, "07-auditor-verified")

        panel = b.page()
        b.sign_in(panel, "ovid", PASSWORD)
        panel.get_by_role("navigation", name="Main").get_by_role("link", name="Oversight").click()
        month = sqlite_app.clock().strftime("%Y-%m")
        row = panel.locator(f'tr[data-month="{month}"]')
        assert row.locator('[data-figure="searches"]').text_content() == "1"
        assert row.locator('[data-figure="decisions"]').text_content() == "2"
        b.shot(panel, "08-oversight")
    readme = os.environ.get("RETROFACE_README_SHOTS")
    if readme:  # the README's pictures: every face blurred (RETROFACE_BLUR_ALL_FACES)
        Path(readme).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(candidate_list, Path(readme) / "candidate-list.png")
        shutil.copyfile(compare, Path(readme) / "comparison-view.png")
