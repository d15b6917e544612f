"""Authentication (401), scopes (403) and tenant isolation (404, indistinguishable from unknown)."""

from __future__ import annotations

import time

import pytest

from tests.conftest import RunningStack, new_tenant


def test_missing_and_invalid_tokens_get_401_outcome(stack: RunningStack) -> None:
    tenant = new_tenant()
    bad_tokens = {
        "missing": None,
        "not bearer": f"Basic {stack.token(tenant)}",
        "garbage": "Bearer not.a.jwt",
        "expired": f"Bearer {stack.token(tenant, exp=int(time.time()) - 3600)}",
        "wrong audience": f"Bearer {stack.token(tenant, aud='someone-else')}",
        "wrong issuer": f"Bearer {stack.token(tenant, iss='https://evil.example')}",
        "tampered": "Bearer " + _tamper(stack.token(tenant)),
        "alg none": "Bearer " + _alg_none(tenant),
        "HS256 keyed with the public key": "Bearer " + _hs256_with_public_key(stack, tenant),
        "not yet valid": f"Bearer {stack.token(tenant, nbf=int(time.time()) + 3600)}",
        "no tenant": f"Bearer {stack.token(tenant, omit=('tenant',))}",
        "bad tenant": f"Bearer {stack.token('../other')}",
        "no scope": f"Bearer {stack.token(tenant, omit=('scope',))}",
        "no expiry": f"Bearer {stack.token(tenant, omit=('exp',))}",
        "oversized": f"Bearer {stack.token(tenant, padding='x' * 10_000)}",
    }
    with stack.client() as client:
        for name, header in bad_tokens.items():
            headers = {"Authorization": header} if header else {}
            response = client.get("/Patient?phone=1", headers=headers)
            assert response.status_code == 401, name
            assert response.headers["Content-Type"].startswith("application/fhir+json"), name
            assert response.json()["resourceType"] == "OperationOutcome", name


def _tamper(token: str) -> str:
    import base64
    import json

    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["tenant"] = "someone-else"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


def _hs256_with_public_key(stack: RunningStack, tenant: str) -> str:
    """The classic algorithm-confusion attack: HMAC keyed with the server's public key."""
    import base64
    import hashlib
    import hmac
    import json

    from esus_dev.localstack.devkeys import public_key_pem

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    claims = {"tenant": tenant, "scope": "user/*.*", "iss": "https://esus.local/issuer", "aud": "esus-fhir",
              "exp": int(time.time()) + 60}
    signing_input = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    key = public_key_pem(stack.dev_dir).encode()
    return f"{signing_input}.{b64(hmac.new(key, signing_input.encode(), hashlib.sha256).digest())}"


def _alg_none(tenant: str) -> str:
    import jwt

    return jwt.encode({"tenant": tenant, "scope": "user/*.*", "iss": "https://esus.local/issuer",
                       "aud": "esus-fhir", "exp": int(time.time()) + 60}, key=None, algorithm="none")


@pytest.mark.parametrize(
    ("scope", "method", "path", "allowed"),
    [
        ("user/Patient.read", "GET", "/Patient/{id}", True),
        ("user/Patient.read", "PUT", "/Patient/{id}", False),
        ("user/Patient.read", "DELETE", "/Patient/{id}", False),
        ("user/Observation.*", "GET", "/Patient/{id}", False),
        ("user/Patient.rs", "GET", "/Patient/{id}/_history", True),
        ("user/Patient.cu", "GET", "/Patient/{id}", False),
        ("system/*.cruds", "DELETE", "/Patient/{id}", True),
        ("patient/*.read", "GET", "/Patient/{id}", False),
        ("user/Patient.write", "POST", "/Patient", True),
        ("user/Patient.r", "GET", "/Patient?phone=1", False),
    ],
)
def test_scopes(stack: RunningStack, scope: str, method: str, path: str, allowed: bool) -> None:
    tenant = new_tenant()
    with stack.client(tenant) as admin:
        pid = admin.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
    with stack.client(tenant, scope=scope) as client:
        body = {"resourceType": "Patient", "id": pid} if method == "PUT" else {"resourceType": "Patient"}
        response = client.request(method, path.format(id=pid), json=body if method in ("PUT", "POST") else None)
    if allowed:
        assert response.status_code < 400, response.text
    else:
        assert response.status_code == 403
        assert response.json()["issue"][0]["code"] == "forbidden"


def test_another_tenants_resource_is_indistinguishable_from_unknown(stack: RunningStack) -> None:
    owner, intruder = new_tenant(), new_tenant()
    with stack.client(owner) as a:
        created = a.post("/Patient", json={"resourceType": "Patient", "telecom": [
            {"system": "phone", "value": "555-000-1234"}]}).json()
        pid = created["id"]
        a.put(f"/Patient/{pid}", json={**created, "active": True})
        prov_id = a.get("/Provenance", params={"target": f"Patient/{pid}"}).json()["entry"][0]["resource"]["id"]
        history_page = a.get(f"/Patient/{pid}/_history", params={"_count": 1}).json()
        next_url = next(link["url"] for link in history_page["link"] if link["relation"] == "next")
    with stack.client(intruder) as b:
        probes = {
            "read": b.get(f"/Patient/{pid}"),
            "vread": b.get(f"/Patient/{pid}/_history/1"),
            "history": b.get(f"/Patient/{pid}/_history"),
            "provenance read": b.get(f"/Provenance/{prov_id}"),
            "provenance vread": b.get(f"/Provenance/{prov_id}/_history/1"),
        }
        unknown = b.get("/Patient/00000000-0000-4000-8000-000000000000")
        for name, response in probes.items():
            assert response.status_code == 404, name
            assert response.json()["issue"][0]["code"] == unknown.json()["issue"][0]["code"], name
        assert b.get("/Patient", params={"phone": "555-000-1234"}).json()["total"] == 0
        assert b.get("/Provenance", params={"target": f"Patient/{pid}"}).json()["total"] == 0
        assert b.get(next_url).status_code == 400  # A's cursor replayed by B
        # B's writes to A's id never touch A's resource.
        assert b.delete(f"/Patient/{pid}").status_code == 204
        assert b.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid},
                     headers={"If-Match": "2"}).status_code == 412
    with stack.client(owner) as a:
        assert a.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "2"
