"""The CLI's casework through a running retroface server (``RETROFACE_URL``).

With ``RETROFACE_URL`` (or ``--server URL``) naming a server, the casework commands (``case …``,
``search``, ``review …``, ``probe enhance``) call its REST API instead of opening the database and
loading the face models in the command's own process: the server keeps the models and the index
warm, so a search costs a request, not a start-up. The server runs the same services, so it checks
the same roles and writes the same audit records; the CLI turns its JSON back into the same view
models and prints them with the same code, so the output (text and ``--json``) and the exit status
are those of a local run.

- **Who.** The same credentials as locally: ``RETROFACE_TOKEN`` goes to the server as a bearer
  token; a password (``RETROFACE_PASSWORD`` or a prompt, for ``--user``/``RETROFACE_USER``) is
  exchanged at ``POST /api/v1/auth/token`` for a token that lasts 15 minutes and is used for this
  one command. Tokens travel only in the ``Authorization`` header, never in a URL, argv or a log.
- **TLS.** Certificates are verified against the system's trust store; a private CA is named by
  ``RETROFACE_CA_BUNDLE`` (a PEM file). Plain ``http://`` is refused except to a loopback host,
  since the token would cross the network in clear.
- **Errors.** The API's error body (``{"error": {"code", "message"}}``) is printed as a local
  error would be: one line and exit status 2. A server that cannot be reached, fails TLS
  verification, answers 5xx or is no retroface server is exit status 3 (:data:`EXIT_UNAVAILABLE`).

Only httpx and the view models are imported here: a remote command never loads SQLAlchemy, the
face models, OpenCV or NumPy (tests/test_cli_remote.py checks it in a fresh interpreter).
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from retroface.cli.common import fail

if TYPE_CHECKING:
    import httpx

ENV_URL = "RETROFACE_URL"
ENV_CA_BUNDLE = "RETROFACE_CA_BUNDLE"
#: Exit status when the server cannot be reached or fails: nothing in the command to correct.
EXIT_UNAVAILABLE = 3
#: A token exchanged for a password serves one command; the API's shortest lifetime (0.01 days).
PASSWORD_TOKEN_DAYS = 0.01
API = "/api/v1"
LOOPBACK = ("localhost", "127.0.0.1", "::1")


@dataclass
class RemoteError(Exception):
    """An error answer of the API: its HTTP status and the body's stable code and message."""

    status: int
    code: str
    message: str

    def __str__(self) -> str:
        return self.message


def server_url(url: str) -> str:
    """``url`` checked and without a trailing slash; refused where a token would go in clear."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"{ENV_URL}={url!r} is not an http(s) URL of a retroface server")
    host = parts.hostname
    if parts.scheme == "http" and not (host in LOOPBACK or host.startswith("127.")):
        fail(
            f"{ENV_URL} uses plain http to {host}: the token would cross the network in clear; "
            "use https (with RETROFACE_CA_BUNDLE for a private CA)"
        )
    return url.strip().rstrip("/")


def tls_context() -> ssl.SSLContext:
    """The system's trust store, or the private CA named by ``RETROFACE_CA_BUNDLE``."""
    bundle = os.environ.get(ENV_CA_BUNDLE)
    if not bundle:
        return ssl.create_default_context()
    try:
        return ssl.create_default_context(cafile=bundle)
    except (OSError, ssl.SSLError) as exc:
        fail(f"{ENV_CA_BUNDLE}={bundle}: cannot load the CA certificates ({exc})")


class Remote:
    """One server, one credential, one connection (kept alive for a batch's requests)."""

    def __init__(self, url: str) -> None:
        import httpx  # here, not above: `--help` and local commands never pay for it

        self.url = server_url(url)
        self._token: str | None = None
        self.client = httpx.Client(
            base_url=self.url,
            verify=tls_context(),
            # a batch image or an enhancement may take seconds on a loaded server; a connection
            # that cannot be made in 10 s will not be made
            timeout=httpx.Timeout(600.0, connect=10.0),
            follow_redirects=False,
            headers={"User-Agent": "retroface-cli"},
            # proxies from the environment (HTTPS_PROXY, ...) for https only: plain http goes to
            # a loopback address, never through a proxy that would see the token in clear
            trust_env=self.url.startswith("https://"),
        )

    # ------------------------------------------------------------------ credentials

    def sign_in(self, token: str | None, user: str | None, typed_user: bool, password: str) -> None:
        """Use ``token``, or exchange ``user``'s ``password`` for a short-lived one."""
        if token is not None:
            self._token = token
            return
        assert user is not None
        try:
            answer = self.request(
                "POST",
                "/auth/token",
                json={"username": user, "password": password, "ttl_days": PASSWORD_TOKEN_DAYS},
                authenticated=False,
            )
        except RemoteError as exc:
            from_env = "RETROFACE_PASSWORD" in os.environ
            # as locally: say where a refused password came from (any refusal of the login)
            if typed_user and from_env and exc.code in ("unauthenticated", "forbidden"):
                fail(
                    f"{exc.message} (the password came from RETROFACE_PASSWORD, used for "
                    f"--user {user}; give each user their own, or use RETROFACE_TOKEN)"
                )
            fail(exc.message)
        self._token = str(answer["access_token"])

    # ------------------------------------------------------------------ requests

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of ``method path``; an API error ends the command as locally."""
        try:
            return self.request(method, path, **kwargs)
        except RemoteError as exc:
            fail(exc.message)

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
        files: Any = None,
        data: dict[str, Any] | None = None,
        authenticated: bool = True,
    ) -> Any:
        """The JSON answer; :class:`RemoteError` for an API error; exit 3 if there is none."""
        import httpx

        headers = {"Authorization": f"Bearer {self._token}"} if authenticated else {}
        try:
            response = self.client.request(
                method,
                API + path,
                json=json,
                params=params,
                files=files,
                data=data,
                headers=headers,
            )
        except httpx.ConnectError as exc:
            self._unavailable(exc)
        except httpx.TimeoutException:
            fail(f"the retroface server at {self.url} did not answer in time", EXIT_UNAVAILABLE)
        except httpx.HTTPError as exc:
            fail(f"request to the retroface server at {self.url} failed: {exc}", EXIT_UNAVAILABLE)
        return self._answer(response)

    def _answer(self, response: httpx.Response) -> Any:
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and body is not None:
            return body
        error = body.get("error") if isinstance(body, dict) else None
        if response.status_code >= 500 or not isinstance(error, dict):
            rid = response.headers.get("x-request-id")
            fail(
                f"the server at {self.url} answered HTTP {response.status_code}"
                + (f" (request id {rid})" if rid else "")
                + ("" if isinstance(error, dict) else ": is RETROFACE_URL a retroface server?"),
                EXIT_UNAVAILABLE,
            )
        raise RemoteError(
            response.status_code, str(error.get("code", "error")), str(error.get("message", ""))
        )

    def _unavailable(self, exc: Exception) -> NoReturn:
        reason = str(exc) or type(exc).__name__
        if "CERTIFICATE" in reason.upper() or "SSL" in reason.upper():
            fail(
                f"TLS verification of {self.url} failed ({reason}); for a private CA set "
                f"{ENV_CA_BUNDLE} to its PEM file",
                EXIT_UNAVAILABLE,
            )
        fail(
            f"cannot reach the retroface server at {self.url} ({reason}); is it running? "
            f"(unset {ENV_URL}, or pass --local, to work on this machine's data)",
            EXIT_UNAVAILABLE,
        )

    def close(self) -> None:
        self.client.close()
