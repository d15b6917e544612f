"""HTTP edge shared by every route function: the resolver, request parsing (headers, body, auth
context, base URL), FHIR responses, and the ONE place that maps errors to HTTP."""

from __future__ import annotations

import base64
import json
import os
import re
import traceback
from collections.abc import Callable
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import parse_qs, urlencode

from aws_lambda_powertools import Logger, Metrics, Tracer
from aws_lambda_powertools.event_handler import APIGatewayRestResolver
from aws_lambda_powertools.event_handler import Response as Response  # what the route functions return
from aws_lambda_powertools.logging import correlation_paths
from aws_lambda_powertools.metrics import MetricUnit
from aws_lambda_powertools.shared import constants
from aws_lambda_powertools.shared.functions import resolve_truthy_env_var_choice
from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, ReadTimeoutError

from esus import coldstart, snapstart
from esus.domain.fhir import PROVENANCE, require_type
from esus.errors import (
    Conflict,
    FhirError,
    InvalidRequest,
    Issue,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooCostly,
    TooManyRequests,
    UnsupportedMediaType,
)
from esus.limits import MAX_REPRESENTATION_BYTES, event_body_size, parse_json, response_body_size
from esus.model import Version
from esus.security.auth import ALL_TYPES, Principal
from esus.security.crypto import IntegrityFailure
from esus.settings import get_settings
from esus.storage.errors import TooManyItems, WriteConflict

FHIR_JSON = "application/fhir+json; charset=utf-8"
ACCEPTED_CONTENT_TYPES = ("application/fhir+json", "application/json")
IF_MATCH_PATTERN = re.compile(r'^\s*(?:W/)?"?([0-9]{1,18})"?\s*$')
THROTTLING_CODES = frozenset({
    "ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded",
    "TooManyRequestsException", "LimitExceededException",
})

logger = Logger()
metrics = Metrics(namespace="ESUS")
# The only library ESUS makes outside calls through (patch_all would import and patch sqlite3, requests, httpx and
# the database drivers it finds, which ESUS never uses, at every cold start).
XRAY_PATCHED = ("botocore",)


def create_app() -> APIGatewayRestResolver:
    app = APIGatewayRestResolver()

    @app.exception_handler(Exception)
    def _any_error(exc: Exception) -> Response[str]:
        return error_response(error_for(exc))

    @app.not_found
    def _no_route(_: Exception) -> Response[str]:
        return error_response(NotFound("No such FHIR endpoint"))

    return app


def error_for(exc: Exception) -> FhirError:
    """The ONE mapping from an exception to what the client sees (status, OperationOutcome, headers), used
    for whole requests and for each batch entry. Logs what operators need, never the message (PHI)."""
    if isinstance(exc, FhirError):
        return exc
    if isinstance(exc, IntegrityFailure):
        metrics.add_metric(name="IntegrityFailures", unit=MetricUnit.Count, value=1)
        logger.error("integrity failure", extra={"reason": str(exc)})
        return FhirError(str(exc))  # 500: the stored data is at fault, never the request
    # Storage errors that reach here: the domain had no better answer for this interaction.
    if isinstance(exc, WriteConflict):
        return Conflict(exc.message, headers={"Retry-After": "1"})
    if isinstance(exc, TooManyItems):
        return PayloadTooLarge(exc.message)
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        logger.warning("aws call failed", extra={"aws_error": code, "operation": exc.operation_name})
        if code in THROTTLING_CODES:
            return TooManyRequests("The service is busy; retry shortly", headers={"Retry-After": "1"})
        if code in ("ResourceNotFoundException", "AccessDeniedException", "ValidationException"):
            return _internal_error(exc)
        return ServiceUnavailable("A backing service failed; retry shortly", headers={"Retry-After": "2"})
    if isinstance(exc, BotoCoreError):
        logger.warning("aws unreachable", extra={"error_type": type(exc).__name__})
        if isinstance(exc, ConnectionError | ReadTimeoutError):
            return ServiceUnavailable("A backing service timed out; retry shortly", headers={"Retry-After": "2"})
    return _internal_error(exc)


def _internal_error(exc: BaseException) -> FhirError:
    # Messages can quote input (PHI), so only the type and the code location are logged.
    frames = traceback.extract_tb(exc.__traceback__)[-3:]
    logger.error("unhandled error", extra={
        "error_type": type(exc).__name__,
        "where": [f"{f.filename.rsplit('/', 2)[-1]}:{f.lineno}:{f.name}" for f in frames],
    })
    correlation = logger.get_correlation_id() or "unknown"
    return FhirError(f"Internal error. Quote correlation id {correlation} to support.")


def tracing_active() -> bool:
    """Powertools' own rule: trace inside Lambda (not under SAM local or Chalice) unless POWERTOOLS_TRACE_DISABLED."""
    if resolve_truthy_env_var_choice(env=os.getenv(constants.TRACER_DISABLED_ENV, "false")):
        return False
    return coldstart.in_lambda()


def lambda_entry(app: APIGatewayRestResolver) -> Callable[[dict[str, Any], Any], dict[str, Any]]:
    @metrics.log_metrics
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return app.resolve(event, context)

    traced: Callable[[dict[str, Any], Any], Any] = handler
    if tracing_active():
        # Tracer() loads the X-Ray SDK, whose recorder builds an X-Ray client (~150 ms of cold start): only
        # where it can trace. Created at import, as before, so it patches botocore before any client exists.
        traced = Tracer(patch_modules=XRAY_PATCHED).capture_lambda_handler(handler, capture_response=False)
    entry = logger.inject_lambda_context(traced, correlation_id_path=correlation_paths.API_GATEWAY_REST,
                                         clear_state=True)
    snapstart.install()  # only in the init Lambda snapshots: prime before it, reset after each restore
    return coldstart.collect_after_first_call(entry)


# ---------- responses ----------
def outcome(issues: list[Issue]) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [
            {"severity": i.severity, "code": i.code, "diagnostics": i.diagnostics,
             "details": {"text": i.diagnostics}, **({"expression": [i.expression]} if i.expression else {})}
            for i in issues
        ],
    }


def error_response(exc: FhirError) -> Response[str]:
    return fhir_response(exc.status, outcome(exc.issues), exc.headers)


def fhir_response(status: int, body: dict[str, Any] | None, headers: dict[str, str] | None = None) -> Response[str]:
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":")) if body is not None else ""
    return Response(status_code=status, content_type=FHIR_JSON, body=text, headers=headers or {})


def page_response(bundle: dict[str, Any]) -> Response[str]:
    """A searchset or history page, or a 400 saying how many entries fit: large versions (up to 6 MB each) can make
    a page bigger than the 6 MB a Lambda response holds, which AWS would turn into a 502."""
    text = json.dumps(bundle, ensure_ascii=False, separators=(",", ":"))
    size = response_body_size(text)
    if size > MAX_REPRESENTATION_BYTES:
        entries = len(bundle.get("entry") or ())
        fitting = max(1, entries * MAX_REPRESENTATION_BYTES // size)
        raise TooCostly(
            f"This page of {entries} entries would take {size} bytes; a response holds at most "
            f"{MAX_REPRESENTATION_BYTES} (AWS Lambda's 6 MB payload). Ask for fewer entries per page: _count={fitting}"
            + (" (a single entry at a time)" if fitting == 1 else ""))
    return Response(status_code=200, content_type=FHIR_JSON, body=text)


def write_bundle_response(full: dict[str, Any], minimal: dict[str, Any]) -> Response[str]:
    """A transaction/batch response with the resources asked for, or, when that would not fit a response (the
    writes are done by then), without them: statuses, locations and ETags still tell what happened."""
    text = json.dumps(full, ensure_ascii=False, separators=(",", ":"))
    if response_body_size(text) > MAX_REPRESENTATION_BYTES:
        return fhir_response(200, minimal)
    return Response(status_code=200, content_type=FHIR_JSON, body=text)


def http_date(instant: str) -> str:
    return format_datetime(datetime.fromisoformat(instant.replace("Z", "+00:00")), usegmt=True)


def version_headers(version: Version) -> dict[str, str]:
    return {"ETag": version.etag, "Last-Modified": http_date(version.last_updated)}


def resource_response(version: Version, status: int = 200) -> Response[str]:
    return fhir_response(status, version.resource, version_headers(version))


def write_response(request: FhirRequest, version: Version, status: int) -> Response[str]:
    """Honours Prefer: return=minimal | representation (default) | OperationOutcome."""
    headers = version_headers(version)
    if status == 201:
        headers["Location"] = f"{request.base_url}/{version.versioned_reference}"
    prefer = request.prefer.get("return", "representation")
    if prefer == "minimal":
        return fhir_response(status, None, headers)
    if prefer == "OperationOutcome":
        message = f"{version.versioned_reference} stored"
        return fhir_response(status, outcome([Issue("informational", message, severity="information")]), headers)
    return fhir_response(status, version.resource, headers)


def provenance_version(record: dict[str, Any]) -> Version:
    """A Provenance record seen as its (only) version, so it gets the same headers as any resource."""
    meta = record["meta"]
    return Version(resource_type=PROVENANCE, resource_id=record["id"], version=int(meta["versionId"]),
                   last_updated=meta["lastUpdated"], deleted=False, resource=record, method="POST", status=201)


# ---------- requests ----------
class FhirRequest:
    """Typed view of the current API Gateway event."""

    def __init__(self, app: APIGatewayRestResolver) -> None:
        self._event = app.current_event
        self._raw: dict[str, Any] = self._event.raw_event

    def header(self, name: str) -> str | None:
        return self._event.headers.get(name) if self._event.headers else None

    @property
    def principal(self) -> Principal:
        return Principal.from_authorizer_context((self._raw.get("requestContext") or {}).get("authorizer"))

    def authorize(self, resource_type: str, interaction: str) -> Principal:
        """Unknown type -> 404; a token without the scopes for this interaction (auth.INTERACTION_SCOPES)
        -> 403."""
        principal = self.principal
        if resource_type != ALL_TYPES:
            require_type(resource_type)
        principal.require_interaction(resource_type, interaction)
        return principal

    @property
    def base_url(self) -> str:
        configured = get_settings().public_base_url
        if configured:
            return configured.rstrip("/")
        context = self._raw.get("requestContext") or {}
        host = self.header("Host") or context.get("domainName") or "localhost"
        proto = (self.header("X-Forwarded-Proto") or "https").split(",")[0].strip()
        path = self._raw.get("path") or ""
        context_path = context.get("path") or path
        prefix = context_path[: -len(path)] if path and context_path.endswith(path) else ""
        return f"{proto}://{host}{prefix}/fhir"

    @property
    def url(self) -> str:
        """The absolute URL of this request, with its query string."""
        path = (self._raw.get("path") or "").removeprefix("/fhir")
        query = urlencode(self.query(), doseq=True)
        return f"{self.base_url}{path}" + (f"?{query}" if query else "")

    def url_with(self, **overrides: str) -> str:
        query = self.query()
        query.update({k: [v] for k, v in overrides.items()})
        path = (self._raw.get("path") or "").removeprefix("/fhir")
        return f"{self.base_url}{path}?{urlencode(query, doseq=True)}"

    def query(self) -> dict[str, list[str]]:
        return {k: list(v) for k, v in (self._raw.get("multiValueQueryStringParameters") or {}).items()}

    def search_params(self) -> dict[str, list[str]]:
        """Query string, plus a form body for POST [type]/_search."""
        params = self.query()
        if self._raw.get("httpMethod") == "POST":
            content_type = (self.header("Content-Type") or "").split(";")[0].strip().lower()
            if content_type != "application/x-www-form-urlencoded":
                raise UnsupportedMediaType("POST _search takes application/x-www-form-urlencoded")
            for key, values in parse_qs(self._body_text(), keep_blank_values=True).items():
                params.setdefault(key, []).extend(values)
        return params

    @property
    def prefer(self) -> dict[str, str]:
        preferences: dict[str, str] = {}
        for part in (self.header("Prefer") or "").split(","):
            key, _, value = part.strip().partition("=")
            if key:
                preferences[key.strip().lower()] = value.strip().strip('"')
        return preferences

    @property
    def lenient(self) -> bool:
        return self.prefer.get("handling") == "lenient"

    def if_match(self) -> int | None:
        raw = self.header("If-Match")
        if raw is None:
            return None
        match = IF_MATCH_PATTERN.match(raw)
        if not match or int(match.group(1)) < 1:
            raise InvalidRequest('If-Match must be a version ETag like W/"3"',
                                 [Issue("invalid", "malformed If-Match", "If-Match")])
        return int(match.group(1))

    def json_body(self, accepted: tuple[str, ...] = ACCEPTED_CONTENT_TYPES) -> Any:
        content_type = (self.header("Content-Type") or "").split(";")[0].strip().lower()
        if content_type not in accepted:
            raise UnsupportedMediaType(f"Content-Type must be {' or '.join(accepted)}, not '{content_type[:60]}'")
        text = self._body_text()
        if not text.strip():
            raise InvalidRequest("The request body is empty")
        return parse_json(text, "The request body")

    def raw_body(self) -> bytes:
        """The request body's bytes (API Gateway base64-encodes binary media types), within the body limit."""
        body = self._raw.get("body") or ""
        encoded = bool(self._raw.get("isBase64Encoded"))
        limit = get_settings().max_body_bytes
        size = event_body_size(body, encoded)
        if size > limit:
            counted = "base64-encoded, as binary content reaches the function" if encoded else (
                "as a JSON string in the function's event: quotes, backslashes and control characters escaped")
            raise PayloadTooLarge(
                f"The request body takes {size} bytes ({counted}); the limit is {limit}, set by AWS Lambda's 6 MB "
                "request payload. Nothing was stored.")
        try:
            return base64.b64decode(body, validate=True) if encoded else body.encode()
        except ValueError:
            raise InvalidRequest("The request body is not valid base64") from None

    def _body_text(self) -> str:
        try:
            return self.raw_body().decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidRequest("The request body must be UTF-8") from None
