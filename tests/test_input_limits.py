"""Input limits in the services (retroface.core.text), the same for the CLI and the API.

Issue #11 findings 10 and 11: case references accepted NUL, newlines, right-to-left overrides and
zero-width look-alikes; on PostgreSQL a NUL in any text field was a 500, on SQLite an id of 2^63.
These run through the services on both stores, as the CLI calls them.
"""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from tests.conftest import add_team

from retroface.context import AppContext
from retroface.core.errors import InvalidInputError, NotFoundError
from retroface.core.text import (
    MAX_ID,
    case_reference,
    check_id,
    check_period,
    clean_text,
    safe_filename,
)
from retroface.governance.policy import MAX_AUTHORISATION_DAYS

PASSWORD = "a long test password"
PURPOSE, WHY = "identify the suspect", "the CCTV still is the only lead we have"


@pytest.mark.parametrize(
    "ref",
    [
        "CR\x00123",  # NUL
        "CR\n123",  # newline
        "CR\u202e321",  # right-to-left override: shows as "CR123" reversed
        "CR\u200b123",  # zero-width space: looks like "CR123"
        "CR\u2066123",  # bidi isolate
        "\ufeffCR123",  # byte order mark
        "x" * 101,
        "   ",
    ],
)
def test_case_references_refuse_hidden_characters(app: AppContext, ref: str) -> None:
    team = add_team(app, {"admin": "admin", "olive": "operator"}, PASSWORD)
    with pytest.raises(InvalidInputError):
        app.cases.open(team["olive"], ref, "robbery", PURPOSE, WHY)
    assert app.cases.list_cases(team["olive"]) == []


def test_case_references_are_normalised(app: AppContext) -> None:
    team = add_team(app, {"admin": "admin", "olive": "operator"}, PASSWORD)
    # full-width letters and digits are the same reference as their ASCII forms (NFKC)
    case = app.cases.open(team["olive"], "\uff23\uff32/1", "robbery", PURPOSE, WHY)
    assert case.reference == "CR/1"
    assert app.cases.show(team["olive"], "CR/1").reference == "CR/1"
    assert app.cases.show(team["olive"], "\uff23\uff32/1").reference == "CR/1"


def test_text_fields_refuse_nul_on_every_store(app: AppContext) -> None:
    team = add_team(app, {"admin": "admin", "olive": "operator", "ada": "authoriser"}, PASSWORD)
    olive, ada = team["olive"], team["ada"]
    with pytest.raises(InvalidInputError, match="control character"):
        app.cases.open(olive, "CR/1", "robbery", "identify\x00 the suspect", WHY)
    app.cases.open(olive, "CR/1", "robbery", "identify the suspect\nfrom the still", WHY)
    with pytest.raises(InvalidInputError, match="control character"):
        app.cases.authorise(ada, "CR/1", True, "proportionate\x00")
    with pytest.raises(InvalidInputError):
        app.users.authenticate_password("olive\x00", PASSWORD)
    with pytest.raises(InvalidInputError):
        app.users.add(team["admin"], "dora", "reviewer", PASSWORD, display_name="D\x00")
    with pytest.raises(InvalidInputError):
        app.users.issue_token(olive, "olive", "t\x00")
    with pytest.raises(InvalidInputError):
        app.gallery.show(team["admin"], "subject\x00")
    with pytest.raises(NotFoundError):
        app.gallery.show(team["admin"], "no such subject")


def test_ids_beyond_the_stores_are_refused(app: AppContext) -> None:
    team = add_team(app, {"admin": "admin", "olive": "operator", "rev": "reviewer"}, PASSWORD)
    for bad in (0, -1, MAX_ID + 1, 2**63, 2**64):
        with pytest.raises(InvalidInputError):
            app.searches.get_search(team["olive"], bad)
        with pytest.raises(InvalidInputError):
            app.reviews.show(team["rev"], bad)
        with pytest.raises(InvalidInputError):
            app.job_store.get(bad)
    with pytest.raises(InvalidInputError):
        app.gallery.list_subjects(team["admin"], offset=2**63)
    with pytest.raises(NotFoundError):
        app.searches.get_search(team["olive"], MAX_ID)


def test_report_periods_are_bounded(app: AppContext) -> None:
    add_team(app, {"admin": "admin"}, PASSWORD)
    admin = app.users.principal_for("admin")
    for start, end in ((1, 2026), (2026, 9999), (1969, 2026)):
        with pytest.raises(InvalidInputError, match="between the years"):
            app.oversight.transparency(
                admin, datetime(start, 1, 1, tzinfo=UTC), datetime(end, 1, 1, tzinfo=UTC)
            )


def test_helpers() -> None:
    assert clean_text("a\tb\nc", "note", 10, multiline=True) == "a\tb\nc"
    for bad in ("a\tb", "a\x00", "a\ud800", "x" * 11, 5):
        with pytest.raises(InvalidInputError):
            clean_text(bad, "field", 10)
    assert case_reference("  CR/123/26 ") == "CR/123/26"
    assert check_id(MAX_ID) == MAX_ID
    for bad_id in (True, 1.0, "1", 0):
        with pytest.raises(InvalidInputError):
            check_id(bad_id)
    check_period(datetime(1970, 1, 1, tzinfo=UTC), datetime(2100, 12, 31, tzinfo=UTC))


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "upload"),
        ("", "upload"),
        ("..", "upload"),
        (".", "upload"),
        ("../../etc/passwd", "passwd"),
        ("C:\\temp\\probe.jpg", "probe.jpg"),
        ("a/b/..", "upload"),
        ("pro\x00be\u202e.jpg", "probe.jpg"),
        ("probe.jpg", "probe.jpg"),
    ],
)
def test_safe_filename(given: str | None, expected: str) -> None:
    assert safe_filename(given) == expected


def test_safe_filename_keeps_the_extension_within_255_bytes() -> None:
    name = safe_filename("\u00e9" * 300 + ".jpeg")
    assert len(name.encode()) <= 255 and name.endswith(".jpeg")
    assert len(safe_filename("x" * 10_000).encode()) == 255


def test_refusals_never_write_unstorable_text(app: AppContext) -> None:
    """A caller refused for their roles is audited; a NUL in what they named is refused first,
    so the refusal's audit record never fails on PostgreSQL (a 500 before)."""
    team = add_team(app, {"admin": "admin", "rita": "reviewer"}, PASSWORD)
    with pytest.raises(InvalidInputError):
        app.users.issue_token(team["rita"], "someone\x00else")
    with pytest.raises(InvalidInputError):
        app.cases.open(team["rita"], "CR\x00/1", "robbery", PURPOSE, WHY)
    with pytest.raises(InvalidInputError):
        app.gallery.erase(team["rita"], "subject\x00", reason="asked")


def test_authorisation_lasts_at_most_a_year(app: AppContext) -> None:
    """#11: `valid_days` up to 3650 was accepted; an authorisation lasts at most a year."""
    team = add_team(app, {"olive": "operator", "arthur": "authoriser"}, "a long test password")
    app.cases.open(
        team["olive"], "VD/1", "robbery", "identify the suspect", "serious offence; CCTV only"
    )
    longest = MAX_AUTHORISATION_DAYS
    with pytest.raises(InvalidInputError, match="at most"):
        app.cases.authorise(team["arthur"], "VD/1", True, "necessary", valid_days=3650)
    case = app.cases.authorise(team["arthur"], "VD/1", True, "necessary", valid_days=longest)
    assert case.status == "approved"
