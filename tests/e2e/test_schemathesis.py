"""schemathesis against the local stack, driven by the published OpenAPI description: ~2,000 generated
requests in CI (a fifth in a developer's run, see `examples`); never a 5xx, every error an OperationOutcome,
every success valid FHIR."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from fhir.resources.R4B import get_fhir_model_class
from hypothesis import HealthCheck, settings

from esus.http.openapi import openapi_document
from tests.conftest import RunningStack, examples, new_tenant

schema = schemathesis.openapi.from_dict(openapi_document("http://127.0.0.1/fhir"))
CI_EXAMPLES_PER_OPERATION = 120  # x 17 operations: about 2,000 requests
EXAMPLES_PER_OPERATION = examples(CI_EXAMPLES_PER_OPERATION)
TENANT = new_tenant()
SENT: list[int] = []


@pytest.fixture(scope="module")
def auth(stack: RunningStack) -> dict[str, str]:
    return {"Authorization": f"Bearer {stack.token(TENANT)}"}


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    """One keep-alive session for the ~8,000 requests (a new one per call connected anew and scanned the whole
    environment for proxy settings each time); a loopback stack needs no proxy or netrc from the environment."""
    with requests.Session() as shared:
        shared.trust_env = False
        yield shared


@schema.parametrize()
@settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, suppress_health_check=list(HealthCheck))
def test_generated_requests(case: schemathesis.Case, stack: RunningStack, auth: dict[str, str],
                            session: requests.Session) -> None:
    response = case.call(base_url=stack.base_url, session=session, headers={**auth, **(case.headers or {})},
                         timeout=30)
    SENT.append(response.status_code)
    where = f"{case.method} {case.formatted_path} -> {response.status_code}"
    assert response.status_code < 500, f"{where}: {response.text[:300]}"
    if response.status_code == 204 or not response.content:
        return
    if case.formatted_path.endswith(("/openapi.json", "/.well-known/smart-configuration")):
        return  # plain JSON documents (OpenAPI, SMART App Launch discovery), not FHIR
    headers = {k.lower(): v if isinstance(v, str) else ", ".join(v) for k, v in response.headers.items()}
    assert headers["content-type"].startswith("application/fhir+json"), (where, headers)
    body = json.loads(response.content)
    if response.status_code >= 400:
        assert body["resourceType"] == "OperationOutcome" and body["issue"], where
    else:
        get_fhir_model_class(body["resourceType"]).model_validate(body)


def test_enough_requests_were_generated() -> None:
    """Runs after the generated tests (file order): the run above must have been substantial."""
    print(f"schemathesis sent {len(SENT)} requests; statuses {sorted(set(SENT))}")
    assert len(SENT) >= 2000 * EXAMPLES_PER_OPERATION // CI_EXAMPLES_PER_OPERATION, len(SENT)
