"""Bounded uploads that stay in memory: a request never makes the server hold more than the
configured limit, and an uploaded image is never written to disk in plaintext.

Starlette's multipart parser keeps each uploaded file in a ``SpooledTemporaryFile`` that moves to
a temporary file on disk past ``MultiPartParser.spool_max_size`` (1 MiB by default): a 2 MB probe
photo would sit unencrypted in the temp folder for the length of the request, and after a crash
for good on a filesystem without ``O_TMPFILE``. :class:`BodyLimitMiddleware` refuses any body
longer than the upload limit (plus room for the form's other fields) before it is parsed, and
raises the spool size to that same bound, so every upload the server accepts stays in memory.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartParser
from starlette.responses import JSONResponse

from retroface.core.errors import RetrofaceError

#: Room for a multipart request's boundaries, part headers and small form fields beside the
#: file (the fields the API takes are at most 500 characters each).
FORM_OVERHEAD = 64 * 1024


class UploadTooLargeError(RetrofaceError):
    code = "upload_too_large"


def read_upload(file: UploadFile, limit: int) -> bytes:
    """The upload's bytes, refusing more than ``limit``.

    Synchronous on purpose: the routes that take uploads then analyse faces, so they are plain
    ``def`` routes run in FastAPI's thread pool, where reading the spooled file cannot stall the
    event loop (Starlette has already received the whole body by the time a route runs).
    """
    chunks: list[bytes] = []
    size = 0
    while chunk := file.file.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise UploadTooLargeError(f"upload is larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def keep_uploads_in_memory(body_limit: int) -> None:
    """Make Starlette spool uploads of up to ``body_limit`` bytes in memory, never on disk.

    The spool size is a class attribute (process-wide); it is only ever raised, so two apps in
    one process with different limits both keep their uploads in memory.
    """
    if MultiPartParser.spool_max_size < body_limit:
        MultiPartParser.spool_max_size = body_limit


class BodyLimitMiddleware:
    """Refuse request bodies over ``limit() + FORM_OVERHEAD`` bytes with 413, before parsing.

    A declared ``Content-Length`` over the bound is refused without reading; a body sent without
    one (chunked) is counted as it arrives and cut off at the bound. ``limit`` is read on each
    request, so a change to the setting applies at once.
    """

    def __init__(self, app: Any, limit: Callable[[], int]) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        bound = self.limit() + FORM_OVERHEAD
        keep_uploads_in_memory(bound)
        message = f"request body is larger than the upload limit of {self.limit():,} bytes"
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > bound:
            body = {"error": {"code": "upload_too_large", "message": message}}
            await JSONResponse(body, status_code=413)(scope, receive, send)
            return
        received = 0

        async def limited() -> Any:
            nonlocal received
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > bound:
                    # raised inside the form parser: it closes its spooled files, and FastAPI
                    # passes HTTPException through to the app's error handler
                    raise HTTPException(413, message)
            return msg

        await self.app(scope, limited, send)
