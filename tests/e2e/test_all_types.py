"""Every served R4 type round-trips; required bindings are enforced over HTTP; client labels, profiles and
source are stored, versioned and returned while versionId/lastUpdated stay the server's."""

from __future__ import annotations

import json
import time

import pytest

from esus.domain.fhir import RESOURCE_TYPES
from tests.conftest import RunningStack, load_example, new_tenant
from tests.fhir_minimal import SCHEMA, minimal_instance

PATCH_JSON = {"Content-Type": "application/json-patch+json"}
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
US_CORE_PATIENT = "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"


def _outcome_paths(response) -> list[str]:
    body = response.json()
    assert body["resourceType"] == "OperationOutcome"
    return [e for issue in body["issue"] for e in issue.get("expression", [])]


@pytest.mark.skipif(not SCHEMA.exists(), reason="../shared/fhir-spec/r4 is not next to the repo")
def test_a_minimal_instance_of_every_type_round_trips(stack: RunningStack) -> None:
    """create, read, update, history, delete for all served types, one tenant, one loop (about 600 requests)."""
    failures: list[str] = []
    started = time.monotonic()
    with stack.client(new_tenant()) as client:
        for resource_type in sorted(RESOURCE_TYPES):
            body = minimal_instance(resource_type)
            created = client.post(f"/{resource_type}", json=body)
            if created.status_code != 201:
                failures.append(f"{resource_type} create: {created.status_code} {created.text[:300]}")
                continue
            rid = created.json()["id"]
            read = client.get(f"/{resource_type}/{rid}")
            if read.status_code != 200 or {k: v for k, v in read.json().items() if k not in ("id", "meta")} != {
                    k: v for k, v in body.items() if k != "id"}:
                failures.append(f"{resource_type} read: {read.status_code} {read.text[:200]}")
            updated = client.put(f"/{resource_type}/{rid}", json={**read.json(), "language": "en"})
            if updated.status_code != 200 or updated.json()["meta"]["versionId"] != "2" \
                    or client.get(f"/{resource_type}/{rid}").json().get("language") != "en":
                failures.append(f"{resource_type} update: {updated.status_code} {updated.text[:200]}")
            history = client.get(f"/{resource_type}/{rid}/_history").json()
            if [e["resource"]["meta"]["versionId"] for e in history.get("entry", [])] != ["2", "1"]:
                failures.append(f"{resource_type} history: {json.dumps(history)[:200]}")
            deleted = client.delete(f"/{resource_type}/{rid}")
            if deleted.status_code != 204 or client.get(f"/{resource_type}/{rid}").status_code != 410:
                failures.append(f"{resource_type} delete: {deleted.status_code}")
    assert len(RESOURCE_TYPES) > 120
    assert not failures, "\n".join(failures)
    print(f"{len(RESOURCE_TYPES)} types round-tripped in {time.monotonic() - started:.1f} s")


def test_required_bindings_are_enforced_on_every_write_path(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        banana = client.post("/Patient", json={"resourceType": "Patient", "gender": "banana"})
        assert banana.status_code == 400 and _outcome_paths(banana) == ["Patient.gender"]
        assert "male, female, other, unknown" in banana.text and "banana" in banana.text
        bad_status = {"resourceType": "Observation", "status": "not-a-status", "code": {"text": "glucose"}}
        observation = client.post("/Observation", json=bad_status)
        assert observation.status_code == 400 and _outcome_paths(observation) == ["Observation.status"]
        nested = client.post("/Patient", json={"resourceType": "Patient", "contact": [
            {"gender": "female", "telecom": [{"system": "phone", "value": "1"}, {"system": "pigeon", "value": "2"}]}]})
        assert nested.status_code == 400 and _outcome_paths(nested) == ["Patient.contact[0].telecom[1].system"]
        range_comparator = client.post("/Observation", json={
            "resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "component": [{"code": {"text": "c"}, "referenceRange": [{"low": {"value": 1, "comparator": "~"}}]}]})
        assert _outcome_paths(range_comparator) == ["Observation.component[0].referenceRange[0].low.comparator"]

        valid = client.post("/Patient", json=load_example("Patient-example.json"))
        assert valid.status_code == 201
        pid = valid.json()["id"]
        update = client.put(f"/Patient/{pid}", json={**valid.json(), "gender": "banana"})
        assert update.status_code == 400 and _outcome_paths(update) == ["Patient.gender"]
        patch = client.patch(f"/Patient/{pid}", headers=PATCH_JSON, content=json.dumps(
            [{"op": "replace", "path": "/gender", "value": "banana"}]))
        assert patch.status_code == 400 and _outcome_paths(patch) == ["Patient.gender"]
        post = {"method": "POST", "url": "Patient"}
        transaction = client.post(stack.base_url, json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "gender": "female"}, "request": post},
            {"resource": {"resourceType": "Patient", "gender": "banana"}, "request": post},
        ]})
        assert transaction.status_code == 400 and "Patient.gender" in transaction.text
        assert client.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "1"
        assert len(client.get("/Patient/_history").json().get("entry", [])) == 1  # nothing else was stored


def test_stored_bundles_are_documents_messages_or_collections(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        collection = {"resourceType": "Bundle", "type": "collection",
                      "entry": [{"resource": {"resourceType": "Patient", "gender": "female"}}]}
        assert client.post("/Bundle", json=collection).status_code == 201
        refused = client.post("/Bundle", json={**collection, "type": "transaction"})
        assert refused.status_code == 400 and _outcome_paths(refused) == ["Bundle.type"]
        bad_entry = {**collection, "entry": [{"resource": {"resourceType": "Patient", "gender": "banana"}}]}
        assert _outcome_paths(client.post("/Bundle", json=bad_entry)) == ["Bundle.entry[0].resource.gender"]


def test_client_meta_is_kept_and_versioned(stack: RunningStack) -> None:
    tenant = new_tenant()
    security = [{"system": CONFIDENTIALITY, "code": "R"}]
    tags = [{"system": "urn:example:tags", "code": "needs-review"}]
    source = "urn:example:source:dr-jane-smith-laptop"
    body = {"resourceType": "Patient", "id": "client-id", "gender": "female",
            "meta": {"versionId": "42", "lastUpdated": "1999-01-01T00:00:00Z", "source": source,
                     "profile": [US_CORE_PATIENT], "security": security, "tag": tags}}
    with stack.client(tenant) as client:
        created = client.post("/Patient", json=body)
        assert created.status_code == 201, created.text
        pid, meta = created.json()["id"], created.json()["meta"]
        assert pid != "client-id" and meta["versionId"] == "1" and meta["lastUpdated"] != "1999-01-01T00:00:00Z"
        assert {k: meta[k] for k in ("source", "profile", "security", "tag")} == {
            "source": source, "profile": [US_CORE_PATIENT], "security": security, "tag": tags}
        assert client.get(f"/Patient/{pid}").json()["meta"] == meta

        same = client.put(f"/Patient/{pid}", json={**created.json(), "meta": {**meta, "versionId": "7"}})
        assert same.status_code == 200 and same.json()["meta"]["versionId"] == "1"  # identical: no new version
        new_tags = [*tags, {"system": "urn:example:tags", "code": "reviewed"}]
        retagged = client.put(f"/Patient/{pid}", json={**created.json(), "meta": {**meta, "tag": new_tags}})
        assert retagged.status_code == 200 and retagged.json()["meta"]["versionId"] == "2"
        assert retagged.json()["meta"]["tag"] == new_tags and retagged.json()["meta"]["security"] == security
        patched = client.patch(f"/Patient/{pid}", headers=PATCH_JSON, content=json.dumps(
            [{"op": "add", "path": "/meta/security/-", "value": {"system": CONFIDENTIALITY, "code": "V"}}]))
        assert patched.status_code == 200, patched.text
        assert [s["code"] for s in patched.json()["meta"]["security"]] == ["R", "V"]
        assert patched.json()["meta"]["versionId"] == "3"
        for owned in ("/meta/versionId", "/meta/lastUpdated", "/meta"):
            refused = client.patch(f"/Patient/{pid}", headers=PATCH_JSON,
                                   content=json.dumps([{"op": "replace", "path": owned, "value": "9"}]))
            assert refused.status_code == 400, owned

        history = client.get(f"/Patient/{pid}/_history").json()["entry"]
        assert [(e["resource"]["meta"]["versionId"], len(e["resource"]["meta"]["tag"])) for e in history] == [
            ("3", 2), ("2", 2), ("1", 1)]
        assert client.get(f"/Patient/{pid}/_history/1").json()["meta"] == meta
        bad = client.post("/Patient", json={"resourceType": "Patient", "meta": {"security": [{"code": 7}]}})
        assert bad.status_code == 400

        # Labels and profiles are readable in the stored item; the source (it names a person here) is not.
        raw = json.dumps(stack.tenant_items(tenant), default=lambda b: b.hex())
        assert "dr-jane-smith-laptop" not in raw
        assert "needs-review" in raw and "us-core-patient" in raw


def test_transaction_keeps_client_meta(stack: RunningStack) -> None:
    tags = [{"system": "urn:example:tags", "code": "imported"}]
    with stack.client(new_tenant()) as client:
        response = client.post(stack.base_url, json={"resourceType": "Bundle", "type": "transaction", "entry": [
            {"resource": {"resourceType": "Patient", "id": "tx-meta-1", "meta": {"tag": tags, "versionId": "5"}},
             "request": {"method": "PUT", "url": "Patient/tx-meta-1"}}]})
        assert response.status_code == 200, response.text
        stored = client.get("/Patient/tx-meta-1").json()
        assert stored["meta"]["tag"] == tags and stored["meta"]["versionId"] == "1"
