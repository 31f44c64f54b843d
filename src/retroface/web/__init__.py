"""Server-rendered pages (Jinja2 + htmx) served by the same FastAPI app as the REST API.

The pages only translate: every rule lives in the domain services, which the pages call with the
signed-in principal exactly as the API does. Sign-in is a session cookie holding an ordinary,
short-lived API token (so revocation, expiry and audit are the tokens' own); forms carry a CSRF
token derived from it. Every page is declared with its roles in :mod:`retroface.web.access`.
"""
