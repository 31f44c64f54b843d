"""Transparency report and DPIA facts: exact numbers from a known history, HTML and the CLI.

The ``history`` fixture builds a small but complete record of use: cases granted, refused,
urgent (authorised later, refused, lapsed) and pending; searches inside and outside the report
period; blind reviews that agree and disagree; deletions by refusal, retention and erasure.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import func, select
from tests.conftest import ADMIN, Clock, add_team
from typer.testing import CliRunner, Result

from retroface.cli import report_cmds
from retroface.cli.session import state
from retroface.config import get_settings
from retroface.context import AppContext
from retroface.core.access import Principal
from retroface.core.errors import InvalidInputError
from retroface.gallery.enrol import items_from_paths
from retroface.governance.reports import (
    cohen_kappa,
    dpia,
    render_dpia_html,
    render_transparency_html,
    transparency,
)
from retroface.governance.thresholds import shipped_thresholds
from retroface.media.images import decode_image
from retroface.search.service import ProbeProvenance
from retroface.storage.tables import AuditRecord, Subject, ThresholdRecord
from retroface.vision.types import Face, FaceEngine

PASSWORD = "a long test password"
PROV = ProbeProvenance("CCTV", "exported from shop DVR, exhibit AB/1")
OBAMA = "people/barack_obama/obama2.jpg"
BIDEN = "people/joe_biden/biden2.jpg"
PROBES = (OBAMA, BIDEN)
#: One reference image per subject keeps enrolment quick.
REFERENCES = (
    "barack_obama/obama.jpg",
    "joe_biden/biden.jpg",
    "kit_harington/john1.jpeg",
    "rose_leslie/img1.jpg",
)
GALLERY = {  # subject: (inclusion reason, source)
    "barack_obama": ("custody image", "custody suite"),
    "joe_biden": ("custody image", "custody suite"),
    "kit_harington": ("wanted", "wanted persons list"),
    "rose_leslie": ("missing person", "family"),
}


@dataclass
class History:
    app: AppContext
    team: dict[str, Principal]
    start: datetime  # the report period used by the tests
    end: datetime
    searches: dict[str, int]  # name -> search id
    erased: dict[str, int]  # images / templates of the two erased subjects


@pytest.fixture(scope="session")
def probe_faces(engine: FaceEngine, data_dir: Path) -> dict[str, list[Face]]:
    """Faces of the two probe images, detected once: the tests are about reports, not vision."""
    return {rel: engine.analyse(decode_image((data_dir / rel).read_bytes())) for rel in PROBES}


def _open(app: AppContext, who: Principal, ref: str, offence: str, urgent: bool = False) -> None:
    app.cases.open(
        who,
        ref,
        offence,
        f"identify the suspect in {ref}",
        "serious offence; the image is the only lead and no less intrusive means exist",
        urgent=urgent,
    )


@pytest.fixture
def history(
    app: AppContext, data_dir: Path, clock: Clock, probe_faces: dict[str, list[Face]]
) -> History:
    roles = {
        "admin": "admin",
        "olive": "operator",
        "otto": "operator",
        "arthur": "authoriser",
        "rita": "reviewer",
        "rob": "reviewer",
        "ruth": "reviewer",
        "aud": "auditor",
    }
    team = add_team(app, roles, PASSWORD)

    def search(who: Principal, case: str, rel: str = OBAMA) -> int:
        data, faces = (data_dir / rel).read_bytes(), probe_faces[rel]
        probe = app.searches.add_probe(who, case, data, Path(rel).name, PROV, faces=faces)
        return app.searches.search(who, case, probe.probe_id).search_id

    olive, otto, arthur = team["olive"], team["otto"], team["arthur"]
    items = [
        dataclasses.replace(
            item, inclusion_reason=GALLERY[item.subject][0], source=GALLERY[item.subject][1]
        )
        for item in items_from_paths([data_dir / "people" / p for p in REFERENCES])
    ]
    assert app.enroller().run(ADMIN, items).enrolled == len(REFERENCES)
    erased = {"images": 0, "templates": 0}
    for ref in ("kit_harington", "rose_leslie"):
        images = app.gallery.show(ADMIN, ref).reference_images
        erased["images"] += len(images)
        erased["templates"] += sum(len(img.templates) for img in images)

    # Before the period: a granted case and a search (excluded from every count).
    _open(app, olive, "C0", "robbery")
    app.cases.authorise(arthur, "C0", True, "proportionate")
    searches = {"S0": search(olive, "C0")}
    clock.advance(days=2)
    t1 = clock.now

    # In the period [t1 - 1h, t1 + 3 days).
    _open(app, olive, "C1", "robbery")
    app.cases.authorise(arthur, "C1", True, "proportionate")
    searches["S1"] = search(olive, "C1")
    searches["S2"] = search(olive, "C1", BIDEN)
    _open(app, olive, "C2", "burglary")
    app.cases.authorise(arthur, "C2", True, "proportionate")
    searches["S3"] = search(olive, "C2")
    _open(app, olive, "C3", "homicide")
    app.cases.authorise(arthur, "C3", False, "not necessary: a named suspect exists")
    _open(app, otto, "U1", "robbery", urgent=True)
    search(otto, "U1")
    app.cases.authorise(arthur, "U1", False, "urgency not made out")  # purges U1's search
    _open(app, olive, "U2", "burglary", urgent=True)
    search(olive, "U2", BIDEN)  # U2 is never decided: its window lapses
    _open(app, olive, "U3", "homicide", urgent=True)
    searches["S4"] = search(olive, "U3")
    app.cases.authorise(arthur, "U3", True, "urgency justified; proportionate")
    _open(app, olive, "P1", "missing-person")  # awaiting a decision

    # Blind two-person review (rita first, rob second, ruth breaks ties).
    rita, rob, ruth = team["rita"], team["rob"], team["ruth"]
    app.reviews.decide(rita, searches["S1"], "possible match", "ears", candidate_rank=1)
    app.reviews.decide(rob, searches["S1"], "possible match", "ears", candidate_rank=1)
    app.reviews.decide(rita, searches["S2"], "no match", "nose")
    app.reviews.decide(rob, searches["S2"], "no match", "nose")
    app.reviews.decide(rita, searches["S3"], "possible match", "chin", candidate_rank=1)
    app.reviews.decide(rob, searches["S3"], "no match", "different chin")
    app.reviews.decide(ruth, searches["S3"], "possible match", "same chin", candidate_rank=1)
    app.reviews.decide(rita, searches["S4"], "inconclusive", "blurred")
    app.reviews.decide(rob, searches["S4"], "no match", "different")

    # Deletions: U2's window lapses; kit_harington's retention ends; rose_leslie is erased.
    with app.db.session() as s:
        kit = s.scalars(select(Subject).where(Subject.reference == "kit_harington")).one()
        kit.retention_until = t1 + timedelta(hours=1)
    clock.advance(hours=49)
    report = app.retention.run(ADMIN)
    assert report.urgent_cases_expired == ["U2"] and report.subjects_erased == ["kit_harington"]
    app.gallery.erase(ADMIN, "rose_leslie", reason="found safe")

    # After the period: another search and a refusal (excluded from every count).
    clock.advance(days=10)
    searches["S5"] = search(olive, "C1")
    _open(app, olive, "C5", "robbery")
    app.cases.authorise(arthur, "C5", False, "not proportionate")
    return History(app, team, t1 - timedelta(hours=1), t1 + timedelta(days=3), searches, erased)


def _report(h: History) -> dict[str, Any]:
    return dict(transparency(h.app, h.start, h.end))


# ---------------------------------------------------------------------- transparency


def test_searches_by_offence_category(history: History) -> None:
    s = _report(history)["searches"]
    # run: C1 x2, U1 (robbery); C2, U2 (burglary); U3 (homicide). U1's and U2's records are
    # deleted (refused, lapsed), so only 4 records are still held. S0 and S5 are outside.
    assert s["by_offence_category"] == {
        "burglary": {"run": 2, "records_held": 1},
        "homicide": {"run": 1, "records_held": 1},
        "robbery": {"run": 3, "records_held": 2},
    }
    assert (s["run"], s["records_held"], s["records_deleted"]) == (6, 4, 2)
    assert sum(w["run"] for w in s["per_week"]) == 6
    assert sum(w["records_held"] for w in s["per_week"]) == 4
    weeks = [datetime.fromisoformat(w["week_start"]) for w in s["per_week"]]
    assert all(d.weekday() == 0 for d in weeks)
    assert weeks[0].date() <= history.start.date() and weeks[-1].date() <= history.end.date()


def test_authorisation_counts(history: History) -> None:
    a = _report(history)["authorisations"]
    # opened in the period: C1 C2 C3 U1 U2 U3 P1; decided: C1 C2 U3 granted, C3 U1 refused
    assert a == {
        "requested": 7,
        "decided": 5,
        "granted": 3,
        "refused": 2,
        "granted_urgent": 1,
        "refused_urgent": 1,
        "awaiting_decision": 1,
        "urgent": {
            "opened": 3,
            "authorised": 1,
            "refused": 1,
            "expired": 1,
            "refused_or_expired": 2,
            "awaiting_decision": 0,
        },
    }


def test_review_outcomes_and_kappa(history: History) -> None:
    r = _report(history)["reviews"]
    assert r["searches"] == 4
    assert r["by_status"] == {
        "pending": 0,
        "in_review": 0,
        "agreed": 2,
        "disputed": 1,
        "resolved": 1,
        "no_candidates": 0,
    }
    assert r["outcomes"] == {"possible match": 2, "no match": 1, "inconclusive": 0}
    assert r["outcomes_detail"] == {"no match": 1, "possible match: rank 1": 2}
    # (first, second): S1 (PM, PM), S2 (NM, NM), S3 (PM, NM), S4 (IN, NM); n = 4.
    # Observed agreement p_o = 2/4 = 0.5.
    # First reviewer: PM 2/4, NM 1/4, IN 1/4; second reviewer: PM 1/4, NM 3/4, IN 0.
    # Chance agreement p_e = 0.5*0.25 + 0.25*0.75 + 0.25*0 = 0.3125.
    # kappa = (0.5 - 0.3125) / (1 - 0.3125) = 0.1875 / 0.6875 = 3/11 = 0.2727...
    k = r["agreement"]
    assert k["n"] == 4
    assert k["observed_agreement"] == pytest.approx(0.5)
    assert k["expected_agreement"] == pytest.approx(0.3125)
    assert k["kappa"] == pytest.approx(3 / 11)
    assert k["categories"] == ["possible match", "no match", "inconclusive"]
    assert k["matrix"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_cohen_kappa_edge_cases() -> None:
    pm, nm, inc = "possible match", "no match", "inconclusive"
    assert cohen_kappa([])["kappa"] is None and cohen_kappa([])["n"] == 0
    assert cohen_kappa([(pm, pm)])["kappa"] is None  # n < 2
    assert cohen_kappa([(nm, nm), (nm, nm)])["kappa"] is None  # p_e = 1: undefined
    assert cohen_kappa([(pm, pm), (nm, nm), (inc, inc)])["kappa"] == pytest.approx(1.0)
    # Total disagreement on two balanced categories: p_o = 0, p_e = 0.5, kappa = -1.
    assert cohen_kappa([(pm, nm), (nm, pm)])["kappa"] == pytest.approx(-1.0)


def test_deletions_are_counted(history: History) -> None:
    d = _report(history)["deletions"]
    assert d["events_by_action"] == {
        "case.purge": 3,  # C3 (refused, nothing to delete), U1 (refused), U2 (lapsed)
        "gallery.erase": 1,  # rose_leslie
        "retention.subject_erase": 1,  # kit_harington
    }
    assert d["events"] == 5 and d["cases_purged"] == 3
    assert d["case_purge_reasons"] == {
        "authorisation refused": 2,
        "urgent window expired without authorisation": 1,
    }
    assert (d["probes_deleted"], d["search_records_deleted"], d["subjects_erased"]) == (2, 2, 2)
    assert d["reference_images_erased"] == history.erased["images"] > 0
    assert d["templates_erased"] == history.erased["templates"] > 0


def test_gallery_and_period(history: History) -> None:
    report = _report(history)
    g = report["gallery"]
    assert g["subjects"] == 2
    assert g["subjects_by_inclusion_reason"] == {"custody image": 2}
    assert report["period"]["start"] == history.start.isoformat()
    assert report["period"]["end"] == history.end.isoformat()
    assert "investigative lead" in report["notice"]
    json.dumps(report)  # plain JSON, no datetimes left
    with pytest.raises(InvalidInputError, match="timezone-aware"):
        transparency(history.app, datetime(2025, 1, 1), history.end)
    with pytest.raises(InvalidInputError, match="end after it starts"):
        transparency(history.app, history.end, history.start)


# ---------------------------------------------------------------------- DPIA


def test_dpia_lists_counts_and_policy(history: History) -> None:
    app = history.app
    report = dpia(app)
    counts = {c["category"]: c["count"] for c in report["data_categories"]}
    # held now: S0 S1 S2 S3 S4 S5 (U1, U2 purged); reviews 2 + 2 + 3 + 2; cases C0..C3 U1..U3 P1 C5
    assert counts["Probe images"] == 6 and counts["Search records"] == 6
    assert counts["Probe faces"] == 6  # one face per probe image
    assert counts["Reviews"] == 9 and counts["Cases"] == 9
    assert counts["Gallery subjects"] == 2
    assert counts["Reference images"] == report["gallery"]["images"] > 0
    assert counts["Face templates"] == report["gallery"]["templates"] > 0
    with app.db.session() as s:
        assert counts["Audit records"] == s.scalar(select(func.count()).select_from(AuditRecord))
    assert report["retention"] == app.policy.to_dict()
    assert report["retention"]["probe_retention_days"] == 90.0
    assert {r["role"]: r["active_users"] for r in report["roles"]} == {
        "admin": 1,
        "operator": 2,
        "reviewer": 3,
        "authoriser": 1,
        "auditor": 1,
        "oversight": 0,
    }
    assert report["users"] == {"active": 8, "disabled": 0}
    assert report["model"] == app.engine.identity.to_dict() and report["model"]["licence"]
    assert report["thresholds"]["records"] == [] and "No calibration has been recorded" in (
        report["thresholds"]["note"] or ""
    )
    # the shipped operating threshold is in force, with the per-group figures it shipped with
    live = report["thresholds"]["operating"]
    shipped = shipped_thresholds()[app.engine.identity.key]
    assert (live["source"], live["threshold"]) == ("shipped", shipped["threshold"])
    sex = shipped["evaluation"]["demographics"]["sex"]["result"]
    assert live["demographics"]["sex"]["groups"] == list(sex["groups"].values())
    assert live["demographics"]["sex"]["fnir_ratio"] == sex["fnir_ratio"]
    safeguards = {g["safeguard"]: g for g in report["safeguards"]}
    assert all(g["enabled"] for g in report["safeguards"])
    assert safeguards["Audit log verified now"]["verify"]["ok"] is True
    assert "AES-256-GCM" in safeguards["Encryption at rest"]["detail"]
    assert safeguards["Urgent route with a deadline"]["urgent_window_hours"] == 48.0
    json.dumps(report)

    with app.db.session() as s:
        s.add(
            ThresholdRecord(
                model_key=app.engine.identity.key,
                threshold=0.41,
                target_fpir=0.01,
                achieved_fpir=0.008,
                fnir=0.05,
                dataset_hash="ab" * 32,
                dataset="LFW gallery bench",
                n_mated=500,
                n_nonmated=500,
                created_by="admin",
            )
        )
    records = dpia(app)["thresholds"]
    assert records["note"] is None
    assert [(r["threshold"], r["target_fpir"], r["by"]) for r in records["records"]] == [
        (0.41, 0.01, "admin")
    ]


def test_dpia_reports_the_configured_policy(make_app: Callable[..., AppContext]) -> None:
    app = make_app(probe_retention_days=30, urgent_window_hours=24, offence_categories="a,b")
    report = dpia(app)
    assert report["retention"]["probe_retention_days"] == 30
    assert report["retention"]["offence_categories"] == ["a", "b"]
    safeguards = {g["safeguard"]: g for g in report["safeguards"]}
    assert safeguards["Urgent route with a deadline"]["urgent_window_hours"] == 24
    assert "30 days from upload" in report["data_categories"][3]["retention"]
    assert all(c["count"] == 0 for c in report["data_categories"])
    assert ["Probe images and the faces found in them are deleted after", "30 days"] in parse(
        render_dpia_html(report)
    ).rows
    # audit records must be kept at least six months (UK DPA 2018 s62 logs stay reviewable)
    with pytest.raises(InvalidInputError, match="at least 183 days"):
        _ = make_app(audit_retention_days=100).policy


# ---------------------------------------------------------------------- HTML


class _Html(HTMLParser):
    """Checks that tags nest and close, and collects table rows (cell texts) and images."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.rows: list[list[str]] = []
        self.images: list[str] = []
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.images.append(dict(attrs)["src"] or "")
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def parse(html: str) -> _Html:
    parser = _Html()
    parser.feed(html)
    parser.close()
    assert parser.stack == [], f"unclosed tags: {parser.stack}"
    return parser


def test_transparency_html(history: History) -> None:
    report = transparency(history.app, history.start, history.end)
    html = render_transparency_html(report)
    page = parse(html)
    assert ["robbery", "3", "2"] in page.rows
    assert ["burglary", "2", "1"] in page.rows
    assert ["Total", "6", "4"] in page.rows
    assert ["Granted", "3"] in page.rows and ["Refused", "2"] in page.rows
    assert ["Later refused (material deleted)", "1"] in page.rows
    assert ["Cohen's kappa", "0.273"] in page.rows
    assert ["Searches with two reviews (n)", "4"] in page.rows
    assert ["Probe images deleted", "2"] in page.rows
    assert ["custody image", "2"] in page.rows
    assert "Results are investigative leads" in html
    assert len(page.images) == 4
    for src in page.images:
        prefix = "data:image/png;base64,"
        assert src.startswith(prefix)
        png = base64.b64decode(src[len(prefix) :])
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        with Image.open(io.BytesIO(png)) as im:
            assert im.format == "PNG" and im.size[0] > 300
    assert "http://" not in html and "https://" not in html  # self-contained

    # autoescape: data from the database cannot inject markup
    report["gallery"]["subjects_by_inclusion_reason"] = {"<script>x</script>": 1}
    hostile = render_transparency_html(report)
    assert "<script>" not in hostile and "&lt;script&gt;x&lt;/script&gt;" in hostile


def test_dpia_html(history: History) -> None:
    report = dpia(history.app)
    html = render_dpia_html(report)
    page = parse(html)
    row = next(r for r in page.rows if r and r[0] == "Probe images")
    assert row[2] == "6"
    duties = next(r["duties"] for r in report["roles"] if r["role"] == "reviewer")
    assert ["reviewer", duties, "3"] in page.rows
    assert any(
        r[0].startswith("Probe images and the faces") and r[1] == "90 days" for r in page.rows
    )
    assert ["Urgent window: an urgent case must be authorised within", "48 hours"] in page.rows
    assert ["Licence", report["model"]["licence"]] in page.rows
    assert "No calibration has been recorded" in html
    assert "Operating threshold in force" in html and '<th scope="row">female</th>' in html
    assert ["Audit log verified now", "yes", report["safeguards"][2]["detail"]] in page.rows


# ---------------------------------------------------------------------- CLI


@pytest.fixture
def cli(
    history: History, database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliRunner]:
    """The CLI on the history's database, acting through its own AppContext as a user would."""
    monkeypatch.setenv("RETROFACE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RETROFACE_DATABASE_URL", database_url)
    monkeypatch.setenv("RETROFACE_PASSWORD", PASSWORD)
    monkeypatch.delenv("RETROFACE_TOKEN", raising=False)
    get_settings.cache_clear()
    yield CliRunner()
    _reset_cli()
    get_settings.cache_clear()


def _reset_cli() -> None:
    ctx = state.__dict__.pop("ctx", None)
    if ctx is not None:
        ctx.close()
    state._principal = None
    state.user = None


def invoke(runner: CliRunner, user: str, *args: str) -> Result:
    _reset_cli()  # state is a module-level singleton: each invocation is a fresh process
    result = runner.invoke(report_cmds.app, list(args), env={"RETROFACE_USER": user})
    _reset_cli()
    return result


def _report_actions(app: AppContext) -> list[tuple[str, str, dict[str, Any]]]:
    with app.db.session() as s:
        return [
            (r.action, r.actor, r.details)
            for r in s.scalars(
                select(AuditRecord)
                .where(AuditRecord.action.startswith("report."))
                .order_by(AuditRecord.seq)
            )
        ]


def test_cli_transparency_and_dpia(cli: CliRunner, history: History, tmp_path: Path) -> None:
    t1 = history.start + timedelta(hours=1)
    day_from, day_to = f"{t1:%Y-%m-%d}", f"{t1 + timedelta(days=5):%Y-%m-%d}"
    result = invoke(cli, "aud", "transparency", "--from", day_from, "--to", day_to, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["searches"]["run"] == 6 and data["searches"]["records_held"] == 4
    assert data["authorisations"]["granted"] == 3 and data["authorisations"]["refused"] == 2
    assert data["reviews"]["agreement"]["kappa"] == pytest.approx(3 / 11)
    assert data["period"]["start"] == f"{day_from}T00:00:00+00:00"

    out = tmp_path / "reports" / "transparency.html"
    result = invoke(
        cli, "aud", "transparency", "--from", day_from, "--to", day_to, "--html", str(out)
    )
    assert result.exit_code == 0, result.output
    assert ["Total", "6", "4"] in parse(out.read_text(encoding="utf-8")).rows

    result = invoke(cli, "aud", "transparency", "--from", day_from, "--to", day_to)
    assert result.exit_code == 0 and "robbery" in result.stdout and "kappa 0.273" in result.stdout

    dpia_out = tmp_path / "reports" / "dpia.html"
    result = invoke(cli, "admin", "dpia", "--json", "--html", str(dpia_out))
    assert result.exit_code == 0, result.output
    assert "Probe images" in dpia_out.read_text(encoding="utf-8")
    data = json.loads(result.stdout[: result.stdout.rindex("}") + 1])
    assert {c["category"]: c["count"] for c in data["data_categories"]}["Search records"] == 6

    actions = _report_actions(history.app)
    assert [(a, who) for a, who, _ in actions] == [
        ("report.transparency", "aud"),
        ("report.transparency", "aud"),
        ("report.transparency", "aud"),
        ("report.dpia", "admin"),
    ]
    assert actions[1][2]["html"] == str(out) and actions[0][2]["html"] is None
    assert history.app.audit.verify().ok


def test_cli_refuses_other_roles_and_bad_dates(cli: CliRunner, history: History) -> None:
    result = invoke(cli, "olive", "dpia")
    assert result.exit_code == 2 and "needs the role auditor or admin" in result.output
    result = invoke(cli, "rita", "transparency", "--from", "2025-01-01", "--to", "2025-01-31")
    assert result.exit_code == 2 and "needs the role auditor or admin" in result.output
    result = invoke(cli, "aud", "transparency", "--from", "2025-02-01", "--to", "2025-01-01")
    assert result.exit_code == 2 and "--to must not be before --from" in result.output
    result = invoke(cli, "aud", "transparency", "--from", "1/2/2025", "--to", "2025-01-01")
    assert result.exit_code == 2 and "YYYY-MM-DD" in result.output
    # refused attempts produce no report, but each refusal is audited; bad input is not a refusal
    assert [(a, who) for a, who, _ in _report_actions(history.app)] == [
        ("report.dpia.refused", "olive"),
        ("report.transparency.refused", "rita"),
    ]
