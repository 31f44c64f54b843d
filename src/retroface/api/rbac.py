"""The one declared access matrix: which roles may call which route.

Every route of the app must appear here; a route that does not is refused to everyone (fail
closed), and a test walks every route with every role against this table. The domain services
check the same rules again, so the API is never the only gate.
"""

from __future__ import annotations

from retroface.core.roles import INTERNAL_ROLES, Role
from retroface.web.access import WEB_MATRIX

AUTH, OPER, REV, AU, AD = Role.AUTHORISER, Role.OPERATOR, Role.REVIEWER, Role.AUDITOR, Role.ADMIN
OVS = Role.OVERSIGHT
ANY = frozenset(Role)
#: Every role but oversight: routes that may show a case (the services then ask need-to-know);
#: an oversight account (a regulator, an ethics panel) sees aggregated figures only.
STAFF = INTERNAL_ROLES
PUBLIC: frozenset[Role] | None = None  # no authentication at all

P = "/api/v1"
MATRIX: dict[tuple[str, str], frozenset[Role] | None] = {
    ("GET", f"{P}/health"): PUBLIC,
    ("GET", f"{P}/ready"): PUBLIC,
    ("POST", f"{P}/auth/token"): PUBLIC,
    ("GET", f"{P}/me"): ANY,
    ("GET", f"{P}/models"): ANY,
    ("GET", f"{P}/config"): frozenset({AD, AU}),
    ("GET", "/metrics"): frozenset({AD, AU}),
    # accounts
    ("GET", f"{P}/users"): frozenset({AD, AU}),
    ("POST", f"{P}/users"): frozenset({AD}),
    ("POST", f"{P}/users/{{username}}/disable"): frozenset({AD}),
    # admins, for themselves or a service account only (the service refuses anyone else: 403)
    ("POST", f"{P}/users/{{username}}/tokens"): frozenset({AD}),
    # cases and authorisation
    ("GET", f"{P}/cases"): STAFF,
    ("POST", f"{P}/cases"): frozenset({OPER}),
    ("GET", f"{P}/cases/{{ref}}"): STAFF,
    ("POST", f"{P}/cases/{{ref}}/decision"): frozenset({AUTH}),
    # need-to-know: the services decide whose case it is (owner, authoriser, auditor)
    ("GET", f"{P}/cases/{{ref}}/team"): STAFF,
    ("POST", f"{P}/cases/{{ref}}/team"): frozenset({OPER, AUTH}),
    ("DELETE", f"{P}/cases/{{ref}}/team/{{username}}"): frozenset({OPER, AUTH}),
    # probes, searches, review
    ("POST", f"{P}/cases/{{ref}}/probes"): frozenset({OPER}),
    ("POST", f"{P}/searches"): frozenset({OPER}),
    # several probe images, one audited search each
    ("POST", f"{P}/cases/{{ref}}/searches"): frozenset({OPER}),
    ("POST", f"{P}/probes/{{probe_id}}/enhancements"): frozenset({OPER}),
    ("GET", f"{P}/searches/{{search_id}}"): frozenset({OPER, REV, AU}),
    ("GET", f"{P}/searches/{{search_id}}/export"): frozenset({OPER, AU}),
    ("GET", f"{P}/reviews/queue"): frozenset({REV}),
    ("GET", f"{P}/reviews/{{search_id}}"): frozenset({REV, AU}),
    ("POST", f"{P}/reviews/{{search_id}}"): frozenset({REV}),
    # face images (need-to-know in retroface.search.faces: the case's team and its authoriser
    # for probes; the team and the reviewers reviewing it for a search; every view audited)
    ("GET", f"{P}/probes/{{probe_id}}/faces/{{face}}.jpg"): frozenset({OPER, AUTH, AU}),
    ("GET", f"{P}/probes/{{probe_id}}/image.jpg"): frozenset({OPER, AUTH, AU}),
    ("GET", f"{P}/searches/{{search_id}}/probe/face.jpg"): frozenset({OPER, REV, AU}),
    ("GET", f"{P}/searches/{{search_id}}/probe/aligned.jpg"): frozenset({OPER, REV, AU}),
    ("GET", f"{P}/searches/{{search_id}}/candidates/{{rank}}/face.jpg"): frozenset({OPER, REV, AU}),
    ("GET", f"{P}/searches/{{search_id}}/candidates/{{rank}}/aligned.jpg"): frozenset(
        {OPER, REV, AU}
    ),
    ("GET", f"{P}/searches/{{search_id}}/candidates/{{rank}}/landmarks"): frozenset(
        {OPER, REV, AU}
    ),
    ("GET", f"{P}/gallery/images/{{image_id}}/face.jpg"): frozenset({AD, AU}),
    # gallery
    ("GET", f"{P}/gallery/subjects"): frozenset({AD, AU}),
    ("GET", f"{P}/gallery/subjects/{{ref}}"): frozenset({AD, AU}),
    ("POST", f"{P}/gallery/subjects/{{ref}}/images"): frozenset({AD}),
    ("DELETE", f"{P}/gallery/subjects/{{ref}}"): frozenset({AD}),
    ("GET", f"{P}/gallery/stats"): frozenset({AD, AU}),
    ("GET", f"{P}/gallery/index"): frozenset({AD, AU}),
    # several uploaded images in one enrolment run (the CLI's remote `gallery enrol`)
    ("POST", f"{P}/gallery/images"): frozenset({AD}),
    ("POST", f"{P}/gallery/enrolments"): frozenset({AD}),
    ("GET", f"{P}/jobs"): frozenset({AD}),
    ("GET", f"{P}/jobs/{{job_id}}"): frozenset({AD}),
    ("POST", f"{P}/jobs/{{job_id}}/cancel"): frozenset({AD}),
    # oversight
    ("GET", f"{P}/audit/verify"): frozenset({AU, AD}),
    ("GET", f"{P}/audit/export"): frozenset({AU}),
    ("POST", f"{P}/retention/run"): frozenset({AD}),
    ("GET", f"{P}/reports/transparency"): frozenset({AU, AD}),
    ("GET", f"{P}/reports/dpia"): frozenset({AU, AD}),
    # aggregated monthly figures, no faces and no names: the one route for an oversight account
    ("GET", f"{P}/reports/oversight"): frozenset({OVS, AU, AD}),
}


#: The API's documentation: the OpenAPI document and the pages showing it (not operations, so not
#: in the document or in MATRIX). Public while ``RETROFACE_PUBLIC_DOCS`` is true (the default: the
#: contract is the open-source code's, and names no data); any signed-in role otherwise.
DOCS_ROUTES = frozenset(
    {
        ("GET", f"{P}/openapi.json"),
        ("GET", f"{P}/docs"),
        ("GET", f"{P}/redoc"),
        ("GET", f"{P}/docs/assets/{{name}}"),
    }
)


def allowed_roles(method: str, path: str, public_docs: bool = True) -> frozenset[Role] | None:
    """Roles for a route template; ``KeyError`` for an undeclared route (callers fail closed)."""
    key = (method.upper(), path)
    if key in DOCS_ROUTES:
        return PUBLIC if public_docs else ANY
    if key in WEB_MATRIX:
        return WEB_MATRIX[key]
    return MATRIX[key]
