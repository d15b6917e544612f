"""The gateway side of authentication, in process: API Gateway's cached authorizer policy must not outlive
the token, an authorizer outage is a 500 (not a 401), and gateway responses fill in `$context` variables."""

from __future__ import annotations

import base64
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from esus.settings import get_settings
from esus_dev.localstack.devkeys import mint_token
from tests.handlers.conftest import InProcessStack


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": "application/fhir+json", "Host": "fhir.test"}


def test_cached_authorizer_policy_does_not_outlive_the_token(
    local: InProcessStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """API Gateway reuses the authorizer's answer for a token for ReauthorizeEvery (300 s); emulate that cache
    and replay a request after the token's exp: the route itself must refuse it."""
    monkeypatch.setenv("ESUS_JWT_LEEWAY_SECONDS", "0")
    get_settings.cache_clear()
    stack = local.stack
    real_invoke = stack.invoke
    cache: dict[str, Any] = {}
    authorizer_calls = 0

    def invoke_with_policy_cache(logical_id: str, event: dict[str, Any]) -> Any:
        nonlocal authorizer_calls
        if event.get("type") != "TOKEN":
            return real_invoke(logical_id, event)
        if event["authorizationToken"] not in cache:
            authorizer_calls += 1
            cache[event["authorizationToken"]] = real_invoke(logical_id, event)
        return cache[event["authorizationToken"]]

    monkeypatch.setattr(stack, "invoke", invoke_with_policy_cache)
    created = local.request("POST", "/Patient", {"resourceType": "Patient"})
    pid = local.json(created)["id"]
    token = mint_token("acme", "user/*.*", "Practitioner/1", lifetime_seconds=1, directory=Path(local.dev_dir))
    first = stack.handle("GET", f"/fhir/Patient/{pid}", _headers(token), b"", "fhir.test")
    assert first.status == 200, first.body
    exp = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))["exp"]
    time.sleep(max(0.0, exp - time.time()) + 1.1)
    replayed = stack.handle("GET", f"/fhir/Patient/{pid}", _headers(token), b"", "fhir.test")
    assert authorizer_calls == 2  # the POST's token and this one; the replay was served from the cache
    assert replayed.status == 401, replayed.body
    outcome = json.loads(replayed.body)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "login"
    assert pid.encode() not in replayed.body


def test_unreachable_jwks_is_a_500_naming_the_request_id(
    local: InProcessStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESUS_JWKS_URL", "http://127.0.0.1:9/.well-known/jwks.json")  # nothing listens there
    get_settings.cache_clear()
    token = mint_token("acme", "user/*.*", "Practitioner/1", directory=Path(local.dev_dir))
    result = local.stack.handle("GET", "/fhir/Patient/abc", _headers(token), b"", "fhir.test")
    assert result.status == 500  # AUTHORIZER_FAILURE: an outage, not the client's fault
    assert result.headers["Content-Type"] == "application/fhir+json"
    body = result.body.decode()
    assert "$context" not in body
    diagnostics = json.loads(body)["issue"][0]["diagnostics"]
    assert diagnostics == f"Authentication is unavailable. Quote request id {result.headers['x-amzn-RequestId']} " \
                          "to support."
    assert re.fullmatch(r"[0-9a-f-]{36}", result.headers["x-amzn-RequestId"])


@pytest.mark.parametrize(("kind", "status", "expected"), [
    ("DEFAULT_5XX", 502, 502), ("DEFAULT_5XX", None, 500), ("AUTHORIZER_FAILURE", None, 500),
    ("INTEGRATION_FAILURE", None, 502), ("UNAUTHORIZED", None, 401), ("SOME_UNLISTED_4XX", None, 400),
])
def test_gateway_responses_render_context_variables(
    local: InProcessStack, kind: str, status: int | None, expected: int
) -> None:
    result = local.stack.gateway_error(kind, status, request_id="11111111-2222-3333-4444-555555555555")
    assert result.status == expected
    assert b"$context" not in result.body
    assert json.loads(result.body)["resourceType"] == "OperationOutcome"
    if b"Quote request id" in result.body:
        assert b"Quote request id 11111111-2222-3333-4444-555555555555 to support." in result.body
    assert result.headers["x-amzn-RequestId"] == "11111111-2222-3333-4444-555555555555"
