"""How much work one request may ask for. Input past a limit gets a 4xx OperationOutcome, never a 500."""

from __future__ import annotations

import json
from typing import Any

from esus.errors import InvalidRequest, Issue

MAX_BODY_BYTES = 1_048_576
# FHIR resources and Bundles are shallow (the examples and Synthea data nest at most 11 levels); the R4
# model validator recurses per level and fails near 240, so anything deeper is refused before it runs.
MAX_JSON_DEPTH = 100
MAX_PATCH_OPERATIONS = 100
# POST [base] Bundles: Lambda takes at most 6 MB per synchronous request (the event's JSON around the body
# included). A transaction Bundle holds at most MAX_TRANSACTION_ENTRIES entries: what commits well within API
# Gateway's 29 s on real DynamoDB (the arithmetic is in docs/TRANSACTIONS.md, "Limits").
MAX_BUNDLE_BYTES = 5_800_000
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
