"""Audit records cannot be forged (issue 10, finding 6): whatever a client claims in X-Provenance or
POST /Provenance, the stored record names the authenticated caller (an `enterer` agent the client cannot
claim) and the server's `recorded` time; a posted Provenance targets only existing resources of the tenant."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import RunningStack, new_tenant

PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
FORGED = {
    "resourceType": "Provenance",
    "recorded": "2001-01-01T00:00:00Z",
    "activity": {"coding": [{"code": "import"}]},
    "agent": [{"who": {"reference": "Practitioner/someone-else"}, "onBehalfOf": {"reference": "Organization/x"}}],
}


def _chain(client: Any, reference: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in client.get("/Provenance", params={"target": reference}).json()["entry"]]


def _caller(record: dict[str, Any]) -> dict[str, Any]:
    enterers = [a for a in record["agent"]
                if a.get("type", {}).get("coding", [{}])[0] == {"system": PARTICIPANT_TYPE, "code": "enterer",
                                                                  "display": "Enterer"}]
    assert len(enterers) == 1, record["agent"]
    assert record["agent"][-1] == enterers[0]
    return enterers[0]


def _patient(client: Any) -> dict[str, Any]:
    created = client.post("/Patient", json={"resourceType": "Patient"})
    assert created.status_code == 201, created.text
    return dict(created.json())


def test_x_provenance_cannot_hide_the_caller_or_backdate(stack: RunningStack) -> None:
    tenant = new_tenant()
    with stack.client(tenant) as client:
        created = client.post("/Patient", json={"resourceType": "Patient"},
                              headers={"X-Provenance": json.dumps(FORGED)})
        assert created.status_code == 201, created.text
        patient = created.json()
        (record,) = _chain(client, f"Patient/{patient['id']}")
        assert record["agent"][0] == FORGED["agent"][0]  # the client's claim is kept...
        caller = _caller(record)  # ...and the real caller is recorded beside it
        assert caller["who"] == {"reference": "Practitioner/123", "type": "Practitioner"}
        assert caller["onBehalfOf"] == {"reference": f"Organization/{tenant}", "type": "Organization"}
        assert record["recorded"] == patient["meta"]["lastUpdated"]
        assert record["occurredDateTime"] == "2001-01-01T00:00:00Z"
        by_caller = client.get("/Provenance", params={"agent": "Practitioner/123"}).json()
        assert [e["resource"]["id"] for e in by_caller["entry"]] == [record["id"]]
        # Back-dating through `recorded` no longer moves the record in time.
        assert client.get("/Provenance", params={"agent": "Practitioner/123", "recorded": "2001"}).json()[
            "total"] == 0


def test_x_provenance_on_update_delete_and_bundles_records_the_caller(stack: RunningStack) -> None:
    with stack.client(new_tenant(), scope="system/*.cruds", fhir_user=None) as client:
        pid = _patient(client)["id"]
        header = {"X-Provenance": json.dumps({**FORGED, "occurredPeriod": {"start": "2000-01-01"}})}
        assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True},
                          headers=header).status_code == 200
        assert client.delete(f"/Patient/{pid}", headers=header).status_code == 204
        bundle = {"resourceType": "Bundle", "type": "batch", "entry": [
            {"request": {"method": "POST", "url": "Organization"}, "resource": {"resourceType": "Organization"}}]}
        result = client.post(stack.base_url, json=bundle, headers=header).json()
        org = result["entry"][0]["response"]["location"].split("/_history")[0].split("/fhir/")[-1]
        records = _chain(client, f"Patient/{pid}")[1:] + _chain(client, org)
    assert len(records) == 3
    for record in records:
        who = _caller(record)["who"]
        assert who["type"] == "Device" and who["identifier"]["value"] == "dev-user"  # the token's sub
        assert record["occurredPeriod"] == {"start": "2000-01-01"} and "occurredDateTime" not in record
        assert record["recorded"] > "2020"


@pytest.mark.parametrize("coding", [
    {"system": PARTICIPANT_TYPE, "code": "enterer"},
    {"code": "enterer"},
])
def test_clients_cannot_claim_the_enterer_role(stack: RunningStack, coding: dict[str, str]) -> None:
    claim = {**FORGED, "agent": [{**FORGED["agent"][0], "type": {"coding": [coding]}}]}
    tenant = new_tenant()
    with stack.client(tenant) as client:
        pid = _patient(client)["id"]
        header = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True},
                            headers={"X-Provenance": json.dumps(claim)})
        assert header.status_code == 400, header.text
        assert "Provenance.agent[0].type" in header.json()["issue"][0]["expression"]
        posted = client.post("/Provenance", json={**claim, "target": [{"reference": f"Patient/{pid}"}]})
        assert posted.status_code == 400, posted.text
        assert client.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "1"
    assert len(stack.tenant_items(tenant)["ProvenanceTable"]) == 1  # the create's own record only


def test_posted_provenance_records_the_caller_and_server_time(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        pid = _patient(client)["id"]
        created = client.post("/Provenance", json={**FORGED, "target": [{"reference": f"Patient/{pid}"}]})
        assert created.status_code == 201, created.text
        record = created.json()
        assert client.get(f"/Provenance/{record['id']}").json() == record
    assert record["agent"][0] == FORGED["agent"][0]
    assert _caller(record)["who"] == {"reference": "Practitioner/123", "type": "Practitioner"}
    assert record["recorded"] == record["meta"]["lastUpdated"] > "2020"
    assert record["occurredDateTime"] == FORGED["recorded"]


def test_posted_provenance_targets_must_exist_in_the_tenant(stack: RunningStack) -> None:
    tenant, other = new_tenant(), new_tenant()
    with stack.client(other) as client:
        foreign = _patient(client)["id"]
    with stack.client(tenant) as client:
        pid = _patient(client)["id"]
        gone = _patient(client)["id"]
        assert client.delete(f"/Patient/{gone}").status_code == 204
        existing = client.post("/Provenance", json={**FORGED, "target": [{"reference": f"Patient/{pid}"}]}).json()
        before = stack.tenant_items(tenant)

        def post(*references: Any) -> Any:
            targets = [r if isinstance(r, dict) else {"reference": r} for r in references]
            return client.post("/Provenance", json={**FORGED, "target": targets})

        refused = {
            "unknown": f"Patient/{pid}0",
            "another tenant's": f"Patient/{foreign}",
            "deleted": f"Patient/{gone}",
            "a version that does not exist": f"Patient/{pid}/_history/2",
            "version 0": f"Patient/{pid}/_history/0",
            "an absolute URL": f"https://elsewhere.example/fhir/Patient/{pid}",
            "a type this server does not store": "Medication/1",
            "not a reference": "Patient",
            "an identifier only": {"identifier": {"system": "urn:x", "value": "1"}},
            "a mismatched type": {"reference": f"Patient/{pid}", "type": "Observation"},
            "an unknown Provenance": f"Provenance/{pid}",
            "a second Provenance version": f"Provenance/{existing['id']}/_history/2",
        }
        for name, reference in refused.items():
            response = post(f"Patient/{pid}", reference)
            assert response.status_code == 422, (name, response.text)
            issue = response.json()["issue"][0]
            assert issue["expression"] == ["Provenance.target[1]"], (name, issue)
            assert response.json()["resourceType"] == "OperationOutcome"
        assert stack.tenant_items(tenant) == before  # nothing stored by any refused request
        two_bad = post(f"Patient/{pid}0", f"Patient/{pid}", f"Patient/{foreign}").json()["issue"]
        assert [i["expression"] for i in two_bad] == [["Provenance.target[0]"], ["Provenance.target[2]"]]

        for accepted in (f"Patient/{pid}", f"Patient/{pid}/_history/1", {"reference": f"Patient/{pid}",
                         "type": "Patient"}, f"Provenance/{existing['id']}", f"Provenance/{existing['id']}/_history/1"):
            response = post(accepted)
            assert response.status_code == 201, (accepted, response.text)
        assert client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True}
                          ).status_code == 200
        assert post(f"Patient/{pid}/_history/2").status_code == 201  # the version exists now
        assert post(f"Patient/{pid}/_history/3").status_code == 422
