"""The authorizer against the local stack: tokens of the other key family, gateway response bodies, and the
token's fhirUser as the Provenance agent."""

from __future__ import annotations

import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.conftest import RunningStack, new_tenant


def _claims(tenant: str) -> dict[str, object]:
    now = int(time.time())
    return {"iss": "https://esus.local/issuer", "aud": "esus-fhir", "exp": now + 300, "iat": now, "sub": "x",
            "tenant": tenant, "scope": "user/*.*"}


@pytest.mark.parametrize("alg", ["RS256", "ES256"])
def test_token_of_an_unknown_key_of_either_family_is_401(stack: RunningStack, alg: str) -> None:
    """The local stack trusts one EC key; an RS256 token made the authorizer raise TypeError (a 500, and a
    400 quoting a literal `$context.requestId` on the local stack). Anyone can send one, so it must be 401."""
    key = (rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256"
           else ec.generate_private_key(ec.SECP256R1()))
    forged = jwt.encode(_claims(new_tenant()), key, algorithm=alg, headers={"kid": "esus-dev"})
    with stack.client() as client:
        response = client.get("/Patient?phone=1", headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401, response.text
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    assert response.json()["issue"][0]["code"] == "login"
    assert "$context" not in response.text


def test_gateway_error_bodies_have_no_unfilled_variables(stack: RunningStack) -> None:
    with stack.client() as client:
        for method, path, headers in (("GET", "/Patient/1", {}), ("GET", "/nowhere", {}),
                                      ("GET", "/Patient/1", {"Authorization": "Bearer x.y.z"})):
            response = client.request(method, path, headers=headers)
            assert 400 <= response.status_code < 500
            assert "$context" not in response.text and response.json()["resourceType"] == "OperationOutcome"
            assert response.headers["x-amzn-RequestId"]


@pytest.mark.parametrize(("fhir_user", "who_type"), [
    ("https://idp.example.org/fhir/Practitioner/123", "Practitioner"),
    ("https://idp.example.org/fhir/Unknown/123", None),
])
def test_absolute_fhir_user_is_the_provenance_agent(stack: RunningStack, fhir_user: str, who_type: str | None) -> None:
    with stack.client(new_tenant(), fhir_user=fhir_user) as client:
        pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        record = client.get("/Provenance", params={"target": f"Patient/{pid}"}).json()["entry"][0]["resource"]
    who = record["agent"][0]["who"]
    assert who["reference"] == fhir_user
    assert who.get("type") == who_type
