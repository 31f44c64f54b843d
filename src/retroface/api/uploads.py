"""Bounded uploads: a request never makes the server hold more than the configured limit."""

from __future__ import annotations

from fastapi import UploadFile

from retroface.core.errors import RetrofaceError


class UploadTooLargeError(RetrofaceError):
    code = "upload_too_large"


async def read_upload(file: UploadFile, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await file.read(1 << 20):
        size += len(chunk)
        if size > limit:
            raise UploadTooLargeError(f"upload is larger than the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
