"""Errors of the fake Kubernetes API server, each one a Kubernetes `Status` on the wire.

    ApiError                 any failure answered with a Status object
    ├── BadRequest           400: a malformed selector, body or parameter
    ├── Unauthorized         401: a missing or wrong bearer token
    ├── NotFound             404: no such object, namespace or path
    ├── MethodNotSupported   405: a verb the resource does not have
    ├── AlreadyExists        409: create of a name that exists
    ├── Conflict             409: update with a stale resourceVersion
    ├── Gone                 410: a watch from a compacted resourceVersion
    ├── UnsupportedMediaType 415: a patch type the server does not speak
    └── Invalid              422: an object that fails validation

Callers (the API layer) turn any of them into the same HTTP answer; the controllers
catch `Conflict` and `NotFound` only, as the real controllers requeue on them.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    code = 500
    reason = "InternalError"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


class BadRequest(ApiError):
    code = 400
    reason = "BadRequest"


class Unauthorized(ApiError):
    code = 401
    reason = "Unauthorized"


class NotFound(ApiError):
    code = 404
    reason = "NotFound"


class MethodNotSupported(ApiError):
    code = 405
    reason = "MethodNotAllowed"


class AlreadyExists(ApiError):
    code = 409
    reason = "AlreadyExists"


class Conflict(ApiError):
    code = 409
    reason = "Conflict"


class Gone(ApiError):
    code = 410
    reason = "Expired"


class UnsupportedMediaType(ApiError):
    code = 415
    reason = "UnsupportedMediaType"


class Invalid(ApiError):
    code = 422
    reason = "Invalid"


def qualified(plural: str, group: str) -> str:
    """`deployments.apps`, or `pods` for the core group, as Kubernetes names a resource in messages."""
    return f"{plural}.{group}" if group else plural


def not_found(plural: str, group: str, name: str) -> NotFound:
    return NotFound(
        f'{qualified(plural, group)} "{name}" not found',
        details={"name": name, "group": group, "kind": plural},
    )


def already_exists(plural: str, group: str, name: str) -> AlreadyExists:
    return AlreadyExists(
        f'{qualified(plural, group)} "{name}" already exists',
        details={"name": name, "group": group, "kind": plural},
    )


def conflict(plural: str, group: str, name: str) -> Conflict:
    return Conflict(
        f'Operation cannot be fulfilled on {qualified(plural, group)} "{name}": the object has been '
        "modified; please apply your changes to the latest version and try again",
        details={"name": name, "group": group, "kind": plural},
    )


def invalid(kind: str, group: str, name: str, causes: list[tuple[str, str]]) -> Invalid:
    """A 422 listing each (field, message), worded like the API server's field errors."""
    what = f"{kind}.{group}" if group else kind
    text = "; ".join(f"{field}: {msg}" for field, msg in causes)
    if len(causes) > 1:
        text = "[" + ", ".join(f"{field}: {msg}" for field, msg in causes) + "]"
    return Invalid(
        f'{what} "{name}" is invalid: {text}',
        details={
            "name": name,
            "group": group,
            "kind": kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": msg, "field": field} for field, msg in causes
            ],
        },
    )
