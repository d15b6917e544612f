"""How much work one request may ask for. Input past a limit gets a 4xx OperationOutcome, never a 500."""

from __future__ import annotations

import json
from typing import Any

from esus.errors import InvalidRequest, Issue, PayloadTooLarge

# What binds is AWS Lambda's synchronous invocation payload, not API Gateway's 10 MB: API Gateway hands Lambda the
# whole request as one JSON event, and takes the whole response back as one JSON document, each at most this big.
LAMBDA_REQUEST_BYTES = 6_291_456  # 6 MiB
LAMBDA_RESPONSE_BYTES = 6_291_556  # 6 MiB + 100, as Lambda enforces it
# The event holds more than the body: headers (the bearer token among them) twice, and the request context. With this
# much room a body at the limit, or a little over it, still reaches the function, which answers 413 itself.
EVENT_ROOM = 128 * 1024
# The request body limit (Settings.max_body_bytes), counted as the body sits in the event: text JSON-escaped,
# binary content (API Gateway's binary media types) base64-encoded. A raw Binary may so be 3/4 of it.
DEFAULT_MAX_BODY_BYTES = LAMBDA_REQUEST_BYTES - EVENT_ROOM
# A response body must fit the response document with room for the status and headers.
MAX_REPRESENTATION_BYTES = LAMBDA_RESPONSE_BYTES - 64 * 1024
# Every stored resource must fit a response on its own (read, vread, a write's representation) and as the one entry
# of a search or history page (entry wrapper and page links: 16 KiB).
MAX_RESOURCE_BYTES = MAX_REPRESENTATION_BYTES - 16 * 1024
# FHIR resources and Bundles are shallow (the examples and Synthea data nest at most 11 levels); the R4
# model validator recurses per level and fails near 240, so anything deeper is refused before it runs.
MAX_JSON_DEPTH = 100
MAX_PATCH_OPERATIONS = 100
# A transaction Bundle holds at most MAX_TRANSACTION_ENTRIES entries: what commits well within API Gateway's
# 29 s on real DynamoDB (the arithmetic is in docs/TRANSACTIONS.md, "Limits"). Its body, like any, is at most
# Settings.max_body_bytes (Lambda's 6 MB request).
MAX_TRANSACTION_ENTRIES = 2_000


def parse_json(text: str, what: str) -> Any:
    """json.loads, but malformed or too deeply nested input is a 400 (a RecursionError otherwise)."""
    try:
        value = json.loads(text)
    except RecursionError:
        raise too_deep(what) from None
    except ValueError:
        raise InvalidRequest(f"{what} is not valid JSON") from None
    if depth_exceeds(value, MAX_JSON_DEPTH):
        raise too_deep(what)
    return value


def event_body_size(body: str, base64_encoded: bool) -> int:
    """Bytes a request body takes in the Lambda event: base64 text as it is; other text as a JSON string (quotes,
    backslashes and control characters escaped, non-ASCII as a six-character \\u escape: the most any of them
    can take)."""
    return len(body) if base64_encoded else len(json.dumps(body))


def representation_size(resource: Any) -> int:
    """Bytes a resource takes in a response document: its JSON, escaped once more as the response's body."""
    return response_body_size(json.dumps(resource, ensure_ascii=False, separators=(",", ":")))


def response_body_size(text: str) -> int:
    """Bytes a response body takes in the response document Lambda returns (a JSON string, ASCII-escaped): for a
    short text a cheap upper bound, exact where it could matter."""
    if len(text) * 12 < MAX_REPRESENTATION_BYTES:  # one character escapes to 12 bytes at most (a surrogate pair)
        return len(text) * 12
    return len(json.dumps(text))


def require_representable(resource: Any) -> None:
    """413 for a resource that could be stored but never read back whole (a response holds 6 MB)."""
    size = representation_size(resource)
    if size > MAX_RESOURCE_BYTES:
        raise PayloadTooLarge(
            f"The resource would take {size} bytes in a response; a resource may take at most {MAX_RESOURCE_BYTES} "
            "(AWS Lambda's 6 MB response payload, with room for headers and a Bundle entry). Nothing was stored.")


def too_deep(what: str) -> InvalidRequest:
    message = f"{what} is nested more than {MAX_JSON_DEPTH} levels deep"
    return InvalidRequest(message, [Issue("too-long", message)])


def depth_exceeds(value: Any, limit: int) -> bool:
    """True when arrays/objects nest deeper than `limit`. Iterative: deep input cannot exhaust the stack."""
    stack = [(value, 1)] if isinstance(value, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False
