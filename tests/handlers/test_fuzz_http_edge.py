"""hypothesis over what clients send: bodies, If-Match, Prefer, Content-Type, X-Provenance, ids and search
parameters. Whatever arrives: never a 5xx, every error an OperationOutcome, every success valid FHIR."""

from __future__ import annotations

import json
from urllib.parse import quote

from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esus_dev.localstack.stack import GatewayResult
from tests.conftest import examples
from tests.handlers.conftest import InProcessStack

TYPES = st.sampled_from(["Patient", "Observation", "Organization", "Provenance", "Nope", "patient", ""])
IDS = st.one_of(st.uuids().map(str), st.text(max_size=80), st.sampled_from(["..", "%2e%2e", "a" * 65, "x/y"]))
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
BODIES = st.one_of(
    JSON_VALUES.map(json.dumps),
    st.builds(lambda t, extra: json.dumps({"resourceType": t, **extra}), TYPES,
              st.dictionaries(st.sampled_from(["id", "meta", "name", "telecom", "birthDate", "status", "code",
                                               "identifier", "text", "gender", "extension"]), JSON_VALUES,
                              max_size=4)),
    st.text(max_size=50),
)
HEADERS = st.fixed_dictionaries({}, optional={
    "If-Match": st.one_of(st.text(max_size=12), st.sampled_from(['W/"1"', '"2"', "3", "W/1", "*"])),
    "Prefer": st.one_of(st.text(max_size=20), st.sampled_from(["return=minimal", "return=OperationOutcome",
                                                               "handling=lenient"])),
    "Content-Type": st.sampled_from(["application/fhir+json", "application/json", "text/plain",
                                     "application/json-patch+json", "application/x-www-form-urlencoded", ""]),
    "X-Provenance": st.one_of(st.text(max_size=30), JSON_VALUES.map(json.dumps),
                              st.just(json.dumps({"resourceType": "Provenance",
                                                  "agent": [{"who": {"reference": "Organization/1"}}]}))),
    "If-None-Exist": st.text(max_size=30),
})
SEARCH = st.dictionaries(st.sampled_from(["phone", "email", "identifier", "telecom", "target", "patient", "agent",
                                          "recorded", "_id", "_count", "_cursor", "shoe", "_since", "_at"]),
                         st.text(max_size=25), max_size=3)
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"])


def _check(result: GatewayResult, method: str, path: str) -> None:
    assert result.status < 500, (method, path, result.status, result.body[:300])
    if not result.body:
        assert result.status in (200, 201, 204), (method, path, result.status)
        return
    assert result.headers.get("Content-Type", "").startswith("application/fhir+json"), (method, path)
    body = json.loads(result.body)
    if result.status >= 400:
        assert body["resourceType"] == "OperationOutcome" and body["issue"], (method, path, body)
    else:
        get_fhir_model_class(body["resourceType"]).model_validate(body)


@settings(max_examples=examples(250), deadline=None, suppress_health_check=list(HealthCheck))
@given(method=METHODS, resource_type=TYPES, resource_id=st.one_of(st.none(), IDS), body=BODIES,
       headers=HEADERS, search=SEARCH, history=st.booleans())
def test_http_edge_never_fails_badly(local: InProcessStack, method: str, resource_type: str,
                                     resource_id: str | None, body: str, headers: dict[str, str],
                                     search: dict[str, str], history: bool) -> None:
    path = f"/fhir/{quote(resource_type, safe='')}" if resource_type else "/fhir"
    if resource_id is not None:
        path += f"/{quote(resource_id, safe='')}"
        if history:
            path += "/_history"
    if search:
        path += "?" + "&".join(f"{quote(k)}={quote(v, safe='')}" for k, v in search.items())
    from pathlib import Path

    from esus_dev.localstack.devkeys import mint_token

    token = mint_token("fuzz", "user/*.*", "Practitioner/1", directory=Path(local.dev_dir))
    all_headers = {"Authorization": f"Bearer {token}", "Host": "fhir.test", **headers}
    result = local.stack.handle(method, path, all_headers, body.encode(), "fhir.test")
    _check(result, method, path)
