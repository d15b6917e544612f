"""POST /fhir transaction (atomic: docs/TRANSACTIONS.md) and batch Bundles."""

from __future__ import annotations

import json
import uuid

from tests.conftest import RunningStack, new_tenant


def _entry(method: str, url: str, resource: dict | None = None, full_url: str | None = None, **request) -> dict:
    entry: dict = {"request": {"method": method, "url": url, **request}}
    if resource is not None:
        entry["resource"] = resource
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def test_transaction_resolves_urn_uuid_and_writes_everything(stack: RunningStack) -> None:
    tenant = new_tenant()
    patient_urn = f"urn:uuid:{uuid.uuid4()}"
    with stack.client(tenant) as client:
        existing = client.post("/Organization", json={"resourceType": "Organization", "name": "Old"}).json()
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            _entry("POST", "Patient", {"resourceType": "Patient", "name": [{"family": "Tx"}]}, patient_urn),
            _entry("POST", "Observation", {"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                                           "subject": {"reference": patient_urn}}),
            _entry("PUT", f"Organization/{existing['id']}", {**existing, "name": "New"}, ifMatch='W/"1"'),
        ]}
        response = client.post(stack.base_url, json=bundle)
        assert response.status_code == 200, response.text
        result = response.json()
        assert result["type"] == "transaction-response"
        statuses = [e["response"]["status"] for e in result["entry"]]
        assert statuses == ["201 Created", "201 Created", "200 OK"]
        patient_ref = result["entry"][0]["response"]["location"].rsplit("/_history", 1)[0]
        obs_ref = result["entry"][1]["response"]["location"].rsplit("/_history", 1)[0]
        assert client.get(f"/{obs_ref}").json()["subject"] == {"reference": patient_ref}
        assert client.get(f"/Organization/{existing['id']}").json()["name"] == "New"
        assert client.get("/Provenance", params={"target": patient_ref}).json()["total"] == 1


def test_transaction_is_all_or_nothing(stack: RunningStack) -> None:
    tenant = new_tenant()
    with stack.client(tenant) as client:
        org = client.post("/Organization", json={"resourceType": "Organization", "name": "Keep"}).json()
        before = {k: len(v) for k, v in stack.tenant_items(tenant).items()}
        invalid_last = {"resourceType": "Bundle", "type": "transaction", "entry": [
            _entry("POST", "Patient", {"resourceType": "Patient",
                                       "telecom": [{"system": "phone", "value": "5550001111"}]}),
            _entry("PUT", f"Organization/{org['id']}", {**org, "name": "Changed"}),
            _entry("POST", "Patient", {"resourceType": "Patient", "birthDate": "not-a-date"}),
        ]}
        assert client.post(stack.base_url, json=invalid_last).status_code == 400
        stale = {"resourceType": "Bundle", "type": "transaction", "entry": [
            _entry("POST", "Patient", {"resourceType": "Patient"}),
            _entry("PUT", f"Organization/{org['id']}", {**org, "name": "Changed"}, ifMatch='W/"7"'),
        ]}
        assert client.post(stack.base_url, json=stale).status_code == 412
        assert {k: len(v) for k, v in stack.tenant_items(tenant).items()} == before
        assert client.get(f"/Organization/{org['id']}").json()["name"] == "Keep"


def test_transaction_over_the_entry_limit_is_a_413_naming_it(stack: RunningStack) -> None:
    """Beyond one DynamoDB transaction is fine (docs/TRANSACTIONS.md, tests/e2e/test_transactions.py); beyond
    what commits within the API's 29 s is refused up front."""
    from esus.limits import MAX_TRANSACTION_ENTRIES

    basic = _entry("POST", "Basic", {"resourceType": "Basic", "code": {"text": "x"}})
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [basic] * (MAX_TRANSACTION_ENTRIES + 1)}
    tenant = new_tenant()
    with stack.client(tenant) as client:
        response = client.post(stack.base_url, json=bundle)
    assert response.status_code == 413
    diagnostics = response.json()["issue"][0]["diagnostics"]
    assert f"at most {MAX_TRANSACTION_ENTRIES} entries" in diagnostics and "batch" in diagnostics
    assert all(not items for items in stack.tenant_items(tenant).values())


def test_transaction_racing_an_update_fails_cleanly(stack: RunningStack) -> None:
    tenant = new_tenant()
    with stack.client(tenant) as client:
        org = client.post("/Organization", json={"resourceType": "Organization", "name": "A"}).json()
        client.put(f"/Organization/{org['id']}", json={**org, "name": "B"})  # someone else won first
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            _entry("POST", "Patient", {"resourceType": "Patient"}),
            _entry("PUT", f"Organization/{org['id']}", {**org, "name": "C"}, ifMatch='W/"1"')]}
        response = client.post(stack.base_url, json=bundle)
        assert response.status_code == 412
        assert client.get(f"/Organization/{org['id']}").json()["name"] == "B"


def test_batch_entries_are_independent(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            _entry("POST", "Patient", {"resourceType": "Patient"}),
            _entry("POST", "Patient", {"resourceType": "Patient", "birthDate": "bad"}),
            _entry("DELETE", "Patient/does-not-exist"),
            _entry("PUT", "Patient/chosen-1", {"resourceType": "Patient", "id": "chosen-1"}),
        ]}
        result = client.post(stack.base_url, json=bundle).json()
        assert result["type"] == "batch-response"
        statuses = [e["response"]["status"] for e in result["entry"]]
        assert statuses[0] == "201 Created" and statuses[1] == "400" and statuses[3] == "201 Created"
        assert result["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
        assert client.get("/Patient/chosen-1").status_code == 200


def test_transaction_conditional_create_and_x_provenance_on_every_entry(stack: RunningStack) -> None:
    header = {"resourceType": "Provenance", "activity": {"coding": [{"code": "import"}]},
              "agent": [{"who": {"reference": "Organization/importer"}}]}
    with stack.client(new_tenant()) as client:
        body = {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "TX-1"}]}
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            _entry("POST", "Patient", body, ifNoneExist="identifier=urn:mrn|TX-1"),
            _entry("POST", "Organization", {"resourceType": "Organization", "name": "X"})]}
        first = client.post(stack.base_url, json=bundle, headers={"X-Provenance": json.dumps(header)}).json()
        assert [e["response"]["status"] for e in first["entry"]] == ["201 Created", "201 Created"]
        again = client.post(stack.base_url, json=bundle).json()
        assert again["entry"][0]["response"]["status"] == "200 OK"
        assert again["entry"][0]["response"]["location"] == first["entry"][0]["response"]["location"]
        agents = client.get("/Provenance", params={"agent": "Organization/importer"}).json()
        assert agents["total"] == 2  # the header applied to both entries of the first transaction


def test_transaction_racing_an_update_exactly_one_wins(stack: RunningStack) -> None:
    """A transaction and a plain update, both conditioned on version 1, truly concurrent: one succeeds,
    the other fails cleanly (412/409) and leaves nothing behind."""
    from concurrent.futures import ThreadPoolExecutor

    tenant = new_tenant()
    transaction_wins = 0
    for round_ in range(5):
        with stack.client(tenant) as client:
            org = client.post("/Organization", json={"resourceType": "Organization", "name": "A"}).json()
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
            _entry("POST", "Patient", {"resourceType": "Patient", "gender": "other"}),
            _entry("PUT", f"Organization/{org['id']}", {**org, "name": "by transaction"}, ifMatch='W/"1"')]}

        def run_transaction(bundle: dict = bundle) -> int:
            with stack.client(tenant) as client:
                return client.post(stack.base_url, json=bundle).status_code

        def run_update(org: dict = org) -> int:
            with stack.client(tenant) as client:
                return client.put(f"/Organization/{org['id']}", json={**org, "name": "by update"},
                                  headers={"If-Match": 'W/"1"'}).status_code

        with ThreadPoolExecutor(2) as pool:
            tx, update = pool.submit(run_transaction), pool.submit(run_update)
            statuses = sorted([tx.result(), update.result()])
        assert statuses[0] == 200 and statuses[1] in (409, 412), (round_, statuses)
        with stack.client(tenant) as client:
            final = client.get(f"/Organization/{org['id']}").json()
        assert final["meta"]["versionId"] == "2"
        transaction_wins += final["name"] == "by transaction"
    patients = [i for i in stack.tenant_items(tenant)["ResourcesTable"] if "|Patient|" in i["pk"]["S"]]
    assert len(patients) == transaction_wins  # a losing transaction stored none of its entries
