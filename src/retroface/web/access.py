"""Which roles may open which page: the web half of the one declared access matrix.

The gate in :func:`retroface.api.deps.authorise` reads this table for every route under
``/ui`` exactly as it reads :data:`retroface.api.rbac.MATRIX` for the API (fail closed: a page
that is not listed is refused to everyone), and ``tests/test_web.py`` walks every page with every
role. As in the API, the services check again; where a page is open to several roles the
service decides need-to-know (whose case, whose review).
"""

from __future__ import annotations

from retroface.core.roles import Role

AUTH, OPER, REV, AU, AD = Role.AUTHORISER, Role.OPERATOR, Role.REVIEWER, Role.AUDITOR, Role.ADMIN
OVS = Role.OVERSIGHT
ANY = frozenset(Role)
PUBLIC: frozenset[Role] | None = None
#: Roles that may hold casework (the services decide which cases): everyone but an oversight
#: panel member, who sees aggregated figures only.
CASEWORK = frozenset({OPER, AUTH, REV, AU, AD})

W = "/ui"
WEB_MATRIX: dict[tuple[str, str], frozenset[Role] | None] = {
    ("GET", "/"): PUBLIC,  # a redirect to the start page
    ("GET", f"{W}/login"): PUBLIC,
    ("POST", f"{W}/login"): PUBLIC,
    ("GET", f"{W}/"): ANY,
    ("POST", f"{W}/logout"): ANY,
    # --- operator and authoriser pages (web/routes/casework.py, web/routes/authorise.py) ---
    # Case, probe and search pages are open to the roles their services serve; need-to-know
    # (whose case) is the services' (governance/team.py). Forms that act are operator-only.
    ("GET", f"{W}/cases"): frozenset({OPER, AUTH, AU}),
    ("GET", f"{W}/cases/new"): frozenset({OPER}),
    ("POST", f"{W}/cases"): frozenset({OPER}),
    ("GET", f"{W}/cases/{{ref}}"): frozenset({OPER, AUTH, AU}),
    ("POST", f"{W}/cases/{{ref}}/probes"): frozenset({OPER}),
    ("GET", f"{W}/probes/{{probe_id}}"): frozenset({OPER, AUTH, AU}),
    ("POST", f"{W}/probes/{{probe_id}}/search"): frozenset({OPER}),
    ("GET", f"{W}/searches/{{search_id}}"): frozenset({OPER, AU}),
    ("GET", f"{W}/searches/{{search_id}}/export"): frozenset({OPER, AU}),
    # face images, through the face-image service (need-to-know and audit are its own)
    ("GET", f"{W}/faces/probes/{{probe_id}}/image.jpg"): frozenset({OPER, AUTH, AU}),
    ("GET", f"{W}/faces/probes/{{probe_id}}/faces/{{face}}.jpg"): frozenset({OPER, AUTH, AU}),
    ("GET", f"{W}/faces/searches/{{search_id}}/probe.jpg"): frozenset({OPER, REV, AU}),
    ("GET", f"{W}/faces/searches/{{search_id}}/candidates/{{rank}}.jpg"): frozenset(
        {OPER, REV, AU}
    ),
    # footage: scanned in this server's memory, each scan visible to its operator only
    ("POST", f"{W}/cases/{{ref}}/footage"): frozenset({OPER}),
    ("GET", f"{W}/footage/{{scan_id}}"): frozenset({OPER}),
    ("GET", f"{W}/footage/{{scan_id}}/status"): frozenset({OPER}),
    ("GET", f"{W}/footage/{{scan_id}}/tracks/{{track}}.jpg"): frozenset({OPER}),
    ("POST", f"{W}/footage/{{scan_id}}/tracks/{{track}}/search"): frozenset({OPER}),
    # authoriser
    ("GET", f"{W}/authorisations"): frozenset({AUTH}),
    ("POST", f"{W}/cases/{{ref}}/decision"): frozenset({AUTH}),
    # --- end of operator and authoriser pages ---
    # ---- reviewer, auditor, oversight and admin pages (web/routes/review.py, audit.py,
    # oversight.py, admin.py) ----
    # blind review: ReviewService decides whose search (queue, own decisions; auditors all)
    ("GET", f"{W}/reviews"): frozenset({REV}),
    ("GET", f"{W}/reviews/{{search_id}}"): frozenset({REV, AU}),
    ("POST", f"{W}/reviews/{{search_id}}"): frozenset({REV}),
    ("GET", f"{W}/reviews/{{search_id}}/compare/{{rank}}"): frozenset({REV, AU}),
    ("GET", f"{W}/reviews/{{search_id}}/similarity"): frozenset({REV, AU}),
    # face images of a search under review (need-to-know and audit: retroface.search.faces)
    ("GET", f"{W}/faces/reviews/{{search_id}}/probe.jpg"): frozenset({REV, AU}),
    ("GET", f"{W}/faces/reviews/{{search_id}}/candidates/{{rank}}.jpg"): frozenset({REV, AU}),
    ("GET", f"{W}/faces/reviews/{{search_id}}/candidates/{{rank}}/landmarks.json"): frozenset(
        {REV, AU}
    ),
    # the log on screen is the auditor's, as its export; verification also the admin's
    ("GET", f"{W}/audit"): frozenset({AU}),
    ("POST", f"{W}/audit/verify"): frozenset({AU, AD}),
    ("GET", f"{W}/reports"): frozenset({AU, AD}),
    ("GET", f"{W}/reports/transparency"): frozenset({AU, AD}),
    ("GET", f"{W}/reports/dpia"): frozenset({AU, AD}),
    ("GET", f"{W}/reports/evaluation"): frozenset({AU, AD}),
    ("GET", f"{W}/oversight"): frozenset({OVS, AU, AD}),
    ("GET", f"{W}/gallery"): frozenset({AD, AU}),
    ("POST", f"{W}/gallery/enrolments"): frozenset({AD}),
    ("GET", f"{W}/jobs/{{job_id}}"): frozenset({AD}),
    ("GET", f"{W}/gallery/subjects"): frozenset({AD, AU}),
    ("GET", f"{W}/gallery/subjects/{{ref}}"): frozenset({AD, AU}),
    ("POST", f"{W}/gallery/subjects/{{ref}}/erase"): frozenset({AD}),
    ("GET", f"{W}/faces/gallery/{{image_id}}.jpg"): frozenset({AD, AU}),
    ("GET", f"{W}/users"): frozenset({AD, AU}),
    ("POST", f"{W}/users"): frozenset({AD}),
    ("POST", f"{W}/users/{{username}}/disable"): frozenset({AD}),
    # ---- end of the reviewer, auditor, oversight and admin pages ----
}
