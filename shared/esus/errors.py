"""Domain errors. Each carries its HTTP status and FHIR issue code; mapped to HTTP in esus.http.api only."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Issue:
    code: str
    diagnostics: str
    expression: str | None = None
    severity: str = "error"


@dataclass
class FhirError(Exception):
    diagnostics: str
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    status = 500
    code = "exception"

    def __post_init__(self) -> None:
        super().__init__(self.diagnostics)
        if not self.issues:
            self.issues = [Issue(self.code, self.diagnostics)]

    def __str__(self) -> str:
        return self.diagnostics


class InvalidRequest(FhirError):
    status, code = 400, "invalid"


class TooCostly(FhirError):
    """A page of results larger than a response can hold (AWS Lambda's 6 MB): the client asks for fewer entries."""

    status, code = 400, "too-costly"


class Unauthorized(FhirError):
    status, code = 401, "login"


class Forbidden(FhirError):
    status, code = 403, "forbidden"


class NotFound(FhirError):
    status, code = 404, "not-found"


class MethodNotAllowed(FhirError):
    status, code = 405, "not-supported"


class NotAcceptable(FhirError):
    status, code = 406, "not-supported"


class Conflict(FhirError):
    status, code = 409, "conflict"


class Gone(FhirError):
    status, code = 410, "deleted"


class PreconditionFailed(FhirError):
    status, code = 412, "conflict"


class PayloadTooLarge(FhirError):
    status, code = 413, "too-costly"


class UnsupportedMediaType(FhirError):
    status, code = 415, "not-supported"


class Unprocessable(FhirError):
    status, code = 422, "processing"


class TooManyRequests(FhirError):
    status, code = 429, "throttled"


class ServiceUnavailable(FhirError):
    status, code = 503, "transient"

