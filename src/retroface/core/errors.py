"""Domain errors: each carries a message a user can act on, and a stable code for the API."""

from __future__ import annotations


class RetrofaceError(Exception):
    code = "error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFoundError(RetrofaceError):
    code = "not_found"


class InvalidInputError(RetrofaceError):
    code = "invalid_input"


class PermissionDeniedError(RetrofaceError):
    code = "forbidden"


class NoFaceError(InvalidInputError):
    code = "no_face"


class ConflictError(RetrofaceError):
    code = "conflict"
