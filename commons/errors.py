"""Typed errors that every layer raises and the web layer maps to a status."""

from __future__ import annotations

from collections.abc import Mapping


class HuiyunError(Exception):
    """Base of the errors that carry an HTTP status and a safe message."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(HuiyunError):
    """The object does not exist, or the caller may not know it exists."""

    status = 404
    code = "not_found"


class Forbidden(HuiyunError):
    status = 403
    code = "forbidden"


class Unauthenticated(HuiyunError):
    status = 401
    code = "unauthenticated"


class Conflict(HuiyunError):
    """The request clashes with the current state (duplicate, wrong state)."""

    status = 409
    code = "conflict"


class TooLarge(HuiyunError):
    status = 413
    code = "too_large"


class RateLimited(HuiyunError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_seconds: int) -> None:
        super().__init__(message)
        self.retry_after_seconds = retry_after_seconds


class BadRequest(HuiyunError):
    """The request cannot be parsed at all (malformed JSON, wrong encoding)."""

    status = 400
    code = "bad_request"


class Invalid(HuiyunError):
    """Well-formed input whose values fail validation, with a message per field."""

    status = 422
    code = "invalid"

    def __init__(self, field_errors: Mapping[str, str]) -> None:
        self.field_errors = dict(field_errors)
        summary = "; ".join(f"{k}: {v}" for k, v in self.field_errors.items())
        super().__init__(summary)
