"""The core FHIR interactions over HTTP against the local stack."""

from __future__ import annotations

import json
import re
from email.utils import parsedate_to_datetime

from esus.domain.search_params import params_for
from tests.conftest import RunningStack, load_example, new_tenant, strip_server_fields

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def create_patient(client, **fields):
    body = {"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}], **fields}
    response = client.post("/Patient", json=body)
    assert response.status_code == 201, response.text
    return response.json()


def test_create_assigns_identity_and_headers(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        body = {"resourceType": "Patient", "id": "client-chosen", "meta": {"versionId": "77", "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]},
            "name": [{"family": "Chalmers"}]}
        response = client.post("/Patient", json=body)
    assert response.status_code == 201
    created = response.json()
    assert UUID.match(created["id"]) and created["id"] != "client-chosen"
    assert created["meta"]["versionId"] == "1" and created["meta"]["security"] == body["meta"]["security"]
    assert response.headers["ETag"] == 'W/"1"'
    assert response.headers["Location"] == f"{stack.base_url}/Patient/{created['id']}/_history/1"
    assert response.headers["Content-Type"].startswith("application/fhir+json")
    parsedate_to_datetime(response.headers["Last-Modified"])


def test_read_vread_and_missing(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        created = create_patient(client)
        read = client.get(f"/Patient/{created['id']}")
        assert read.status_code == 200 and read.json() == created
        assert read.headers["ETag"] == 'W/"1"'
        assert client.get(f"/Patient/{created['id']}/_history/1").json() == created
        for path in ("/Patient/does-not-exist", f"/Patient/{created['id']}/_history/2",
                     f"/Patient/{created['id']}/_history/abc"):
            missing = client.get(path)
            assert missing.status_code == 404
            assert missing.json()["issue"][0]["code"] == "not-found"


def test_update_with_if_match_forms_and_stale_412(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        created = create_patient(client)
        pid = created["id"]
        for version, if_match in ((1, 'W/"1"'), (2, '"2"'), (3, "3")):
            body = {**strip_server_fields(created), "id": pid, "gender": ["male", "female", "other"][version - 1]}
            response = client.put(f"/Patient/{pid}", json=body, headers={"If-Match": if_match})
            assert response.status_code == 200, response.text
            assert response.json()["meta"]["versionId"] == str(version + 1)
            assert response.headers["ETag"] == f'W/"{version + 1}"'
        stale = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid},
                           headers={"If-Match": 'W/"2"'})
        assert stale.status_code == 412
        assert "current version" in stale.json()["issue"][0]["diagnostics"]
        assert "4" in stale.json()["issue"][0]["diagnostics"]
        assert client.get(f"/Patient/{pid}").json()["gender"] == "other"


def test_update_rules(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        pid = create_patient(client)["id"]
        mismatch = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": "other"})
        assert mismatch.status_code == 400
        malformed = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid},
                               headers={"If-Match": "W/\"x\""})
        assert malformed.status_code == 400
        no_if_match = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True})
        assert no_if_match.status_code == 200 and no_if_match.json()["meta"]["versionId"] == "2"
        upsert = client.put("/Patient/chosen-id-1", json={"resourceType": "Patient", "id": "chosen-id-1"})
        assert upsert.status_code == 201
        assert upsert.headers["Location"].endswith("/Patient/chosen-id-1/_history/1")
        unknown_with_if_match = client.put(
            "/Patient/chosen-id-2", json={"resourceType": "Patient", "id": "chosen-id-2"}, headers={"If-Match": "1"}
        )
        assert unknown_with_if_match.status_code == 412
        assert client.get("/Patient/chosen-id-2").status_code == 404


def test_delete_is_soft_idempotent_and_revivable(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        pid = create_patient(client)["id"]
        assert client.delete(f"/Patient/{pid}", headers={"If-Match": "W/\"9\""}).status_code == 412
        first = client.delete(f"/Patient/{pid}")
        assert first.status_code == 204 and first.headers["ETag"] == 'W/"2"'
        again = client.delete(f"/Patient/{pid}")
        assert again.status_code == 204
        gone = client.get(f"/Patient/{pid}")
        assert gone.status_code == 410 and gone.headers["ETag"] == 'W/"2"'
        assert gone.json()["issue"][0]["code"] == "deleted"
        assert client.get(f"/Patient/{pid}/_history/2").status_code == 410
        assert client.get(f"/Patient/{pid}/_history/1").status_code == 200
        revived = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True})
        assert revived.status_code == 201 and revived.json()["meta"]["versionId"] == "3"
        assert client.get(f"/Patient/{pid}").status_code == 200


def test_revive_with_if_match_on_type_without_indexes(stack: RunningStack) -> None:
    observation = load_example("Observation-example.json")
    with stack.client(new_tenant()) as client:
        oid = client.post("/Observation", json=observation).json()["id"]
        assert client.delete(f"/Observation/{oid}").status_code == 204
        revived = client.put(f"/Observation/{oid}", json={**observation, "id": oid}, headers={"If-Match": 'W/"2"'})
        assert revived.status_code == 201, revived.text
        assert revived.json()["meta"]["versionId"] == "3"


def test_history_bundle_newest_first_with_paging(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        pid = create_patient(client)["id"]
        for n in range(2, 6):
            client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "birthDate": f"200{n}-01-01"})
        client.delete(f"/Patient/{pid}")
        page = client.get(f"/Patient/{pid}/_history", params={"_count": 2}).json()
        assert page["resourceType"] == "Bundle" and page["type"] == "history"
        seen = []
        while True:
            for entry in page["entry"]:
                seen.append(entry["response"]["etag"])
                assert entry["fullUrl"] == f"{stack.base_url}/Patient/{pid}"
                assert entry["response"]["lastModified"]
            assert len(page["entry"]) <= 2
            links = {link["relation"]: link["url"] for link in page["link"]}
            assert links["self"].startswith(stack.base_url)
            if "next" not in links:
                break
            assert links["next"].startswith(f"{stack.base_url}/Patient/{pid}/_history?")
            page = client.get(links["next"]).json()
        assert seen == [f'W/"{v}"' for v in range(6, 0, -1)]
        full = client.get(f"/Patient/{pid}/_history").json()["entry"]
        assert full[0]["request"] == {"method": "DELETE", "url": f"Patient/{pid}"} and "resource" not in full[0]
        assert full[-1]["request"] == {"method": "POST", "url": "Patient"}
        assert full[-1]["response"]["status"].startswith("201")
        assert full[1]["resource"]["birthDate"] == "2005-01-01"


def test_history_since_and_cursor_tamper(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        pid = create_patient(client)["id"]
        second = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid}).json()
        since = second["meta"]["lastUpdated"]
        bundle = client.get(f"/Patient/{pid}/_history", params={"_since": since}).json()
        assert [e["response"]["etag"] for e in bundle["entry"]] == ['W/"2"']
        assert client.get(f"/Patient/{pid}/_history", params={"_since": "yesterday"}).status_code == 400
        page = client.get(f"/Patient/{pid}/_history", params={"_count": 1}).json()
        next_url = next(link["url"] for link in page["link"] if link["relation"] == "next")
        tampered = next_url[:-3] + ("AAA" if not next_url.endswith("AAA") else "BBB")
        assert client.get(tampered).status_code == 400


def test_prefer_return(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        minimal = client.post("/Patient", json={"resourceType": "Patient"}, headers={"Prefer": "return=minimal"})
        assert minimal.status_code == 201 and minimal.content == b"" and minimal.headers["Location"]
        oo = client.post("/Patient", json={"resourceType": "Patient"}, headers={"Prefer": "return=OperationOutcome"})
        assert oo.status_code == 201 and oo.json()["resourceType"] == "OperationOutcome"
        rep = client.post("/Patient", json={"resourceType": "Patient"}, headers={"Prefer": "return=representation"})
        assert rep.json()["resourceType"] == "Patient"


def test_capability_statement_is_public_and_truthful(stack: RunningStack) -> None:
    with stack.client() as client:
        response = client.get("/metadata")
    assert response.status_code == 200
    statement = response.json()
    assert statement["resourceType"] == "CapabilityStatement" and statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    for resource_type in ("Patient", "Practitioner", "Organization", "Observation", "DiagnosticReport",
                          "DocumentReference", "Encounter", "Condition", "Provenance"):
        assert resource_type in resources
    patient = resources["Patient"]
    assert patient["versioning"] == "versioned-update" and patient["readHistory"] and patient["updateCreate"]
    assert {"read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create",
            "search-type"} <= {
        i["code"] for i in patient["interaction"]}
    # exactly the generated table's parameters (issue 12), each with its type
    assert {(p["name"], p["type"]) for p in patient["searchParam"]} == {
        (code, param.type) for code, param in params_for("Patient").items()}
    assert {"name", "birthdate", "phone", "email", "telecom", "identifier", "_id", "_lastUpdated"} <= {
        p["name"] for p in patient["searchParam"]}
    assert {i["code"] for i in resources["Provenance"]["interaction"]} == {"create", "read", "vread", "search-type"}


def test_seed_curl_examples(stack: RunningStack) -> None:
    """../shared/seeds/000: read shows ETag and meta; PUT with bare If-Match: 2 -> 3; stale -> 412."""
    with stack.client(new_tenant()) as client:
        pid = create_patient(client)["id"]
        client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid})
        read = client.get(f"/Patient/{pid}")
        assert read.headers["ETag"] == 'W/"2"' and read.json()["meta"]["versionId"] == "2"
        ok = client.put(f"/Patient/{pid}", headers={"If-Match": "2"}, content=json.dumps(
            {"resourceType": "Patient", "id": pid, "active": True}))
        assert ok.status_code == 200 and ok.json()["meta"]["versionId"] == "3"
        assert client.put(f"/Patient/{pid}", headers={"If-Match": "2"},
                          json={"resourceType": "Patient", "id": pid}).status_code == 412
        assert client.get(f"/Patient/{pid}/_history").json()["type"] == "history"
        assert client.get(f"/Patient/{pid}/_history/1").json()["meta"]["versionId"] == "1"


def test_identical_update_without_if_match_writes_nothing(stack: RunningStack) -> None:
    tenant = new_tenant()
    with stack.client(tenant) as client:
        created = create_patient(client)
        before = {k: len(v) for k, v in stack.tenant_items(tenant).items()}
        again = client.put(f"/Patient/{created['id']}", json={**created, "meta": {"versionId": "9"}})
        assert again.status_code == 200 and again.json() == created and again.headers["ETag"] == 'W/"1"'
        assert {k: len(v) for k, v in stack.tenant_items(tenant).items()} == before
        changed = client.put(f"/Patient/{created['id']}", json={**created, "active": False})
        assert changed.json()["meta"]["versionId"] == "2"
