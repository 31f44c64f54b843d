"""Bounded uploads: a request never makes the server hold more than the configured limit."""

from __future__ import annotations

from fastapi import UploadFile

from retroface.core.errors import RetrofaceError


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
