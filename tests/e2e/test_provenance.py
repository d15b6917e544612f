"""Provenance: seed 000/004 replayed, US Core rules, search, paging, chain of custody, X-Provenance."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import RunningStack, new_tenant

SEED_000_PROVENANCE = {
    "resourceType": "Provenance",
    "target": [{"reference": "DiagnosticReport/bb22cc33-dd44-ee55-ff66-778899001122"}],
    "recorded": "2024-01-15T10:30:00Z",
    "activity": {"coding": [{"code": "import", "display": "Imported from external system"}]},
    "agent": [{
        "who": {"reference": "Practitioner/a7b1c2d3-e4f5-6789-abcd-ef0123456789"},
        "onBehalfOf": {"reference": "Organization/9a8b7c6d-5e4f-3210-9876-543210fedcba"},
    }],
    "entity": [{"role": "source", "what": {"reference": "DocumentReference/cc33dd44-ee55-ff66-7788-990011223344"}}],
}


def _ids(bundle: dict) -> list[str]:
    return [e["resource"]["id"] for e in bundle["entry"]]


def _ensure_target(client: Any, reference: str) -> None:
    """A Provenance may only target existing resources: create the seed's target under its id."""
    resource_type, resource_id = reference.split("/")
    body: dict[str, Any] = {"resourceType": resource_type, "id": resource_id}
    if resource_type in ("DiagnosticReport", "Observation"):
        body.update(status="final", code={"text": "seed target"})
    response = client.put(f"/{resource_type}/{resource_id}", json=body)
    assert response.status_code in (200, 201), response.text


def test_seed_000_provenance_created_and_found(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        _ensure_target(client, SEED_000_PROVENANCE["target"][0]["reference"])
        created = client.post("/Provenance", json=SEED_000_PROVENANCE)
        assert created.status_code == 201, created.text
        record = created.json()
        # The client's claims are kept; the server's time and the authenticated caller are added.
        assert record["agent"][0] == SEED_000_PROVENANCE["agent"][0]
        assert record["agent"][1]["who"] == {"reference": "Practitioner/123", "type": "Practitioner"}
        assert record["agent"][1]["type"]["coding"][0]["code"] == "enterer"
        assert record["occurredDateTime"] == SEED_000_PROVENANCE["recorded"]
        assert record["recorded"] == record["meta"]["lastUpdated"] != SEED_000_PROVENANCE["recorded"]
        assert created.headers["Location"].endswith(f"/Provenance/{record['id']}/_history/1")
        read = client.get(f"/Provenance/{record['id']}")
        assert read.status_code == 200 and read.json() == record and read.headers["ETag"] == 'W/"1"'
        assert client.get(f"/Provenance/{record['id']}/_history/1").json() == record
        assert client.get(f"/Provenance/{record['id']}/_history/2").status_code == 404
        for params in (
            {"target": "DiagnosticReport/bb22cc33-dd44-ee55-ff66-778899001122"},
            {"target": f"{stack.base_url}/DiagnosticReport/bb22cc33-dd44-ee55-ff66-778899001122"},
            {"agent": "Practitioner/a7b1c2d3-e4f5-6789-abcd-ef0123456789"},
            {"agent": "Organization/9a8b7c6d-5e4f-3210-9876-543210fedcba"},
            {"entity": "DocumentReference/cc33dd44-ee55-ff66-7788-990011223344"},
            {"_id": record["id"]},
            {"_id": record["id"], "agent": "Practitioner/a7b1c2d3-e4f5-6789-abcd-ef0123456789"},
        ):
            bundle = client.get("/Provenance", params=params).json()
            if "target" in params:  # the target's own creation record comes first
                assert _ids(bundle)[1:] == [record["id"]] and len(bundle["entry"]) == 2, params
            else:
                assert _ids(bundle) == [record["id"]], params
        miss = client.get("/Provenance", params={"agent": "Practitioner/someone-else"}).json()
        assert miss["total"] == 0 and miss["entry"] == []


def test_patient_parameter_and_seed_004_bundle_shape(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        bundle = client.get("/Provenance", params={"patient": f"Patient/{pid}"}).json()
        assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset" and bundle["total"] == 1
        relations = [link["relation"] for link in bundle["link"]]
        assert relations[:2] == ["self", "first"] and "last" in relations
        assert all(link["url"].startswith(stack.base_url) for link in bundle["link"])
        entry = bundle["entry"][0]
        assert entry["fullUrl"] == f"{stack.base_url}/Provenance/{entry['resource']['id']}"
        resource = entry["resource"]
        assert {"id", "target", "recorded", "activity", "agent"} <= set(resource)
        assert resource["target"] == [{"reference": f"Patient/{pid}/_history/1", "type": "Patient"}]
        assert resource["activity"]["coding"][0] == {
            "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "CREATE"}
        assert resource["agent"][0]["who"] == {"reference": "Practitioner/123", "type": "Practitioner"}
        assert resource["agent"][0]["onBehalfOf"]["type"] == "Organization"
        assert resource["policy"] == ["https://esus.health/integrity-policy"]
        assert client.get("/Provenance", params={"patient": pid}).json()["total"] == 1
        unknown = client.get("/Provenance/a47c7b0e-bbb4-42cd-bc4a-df259d148ea1")
        assert unknown.status_code == 404
        assert unknown.json()["issue"][0] == {
            "severity": "error", "code": "not-found",
            "diagnostics": "Unknown Provenance resource 'a47c7b0e-bbb4-42cd-bc4a-df259d148ea1'",
            "details": {"text": "Unknown Provenance resource 'a47c7b0e-bbb4-42cd-bc4a-df259d148ea1'"}}


def test_us_core_rules_reject_with_element_paths(stack: RunningStack) -> None:
    cases = {
        "Provenance.target": {k: v for k, v in SEED_000_PROVENANCE.items() if k != "target"},
        "Provenance.recorded": {**SEED_000_PROVENANCE, "recorded": "2024-01-15"},  # not an instant
        "Provenance.agent": {k: v for k, v in SEED_000_PROVENANCE.items() if k != "agent"},
        "Provenance.agent[0].onBehalfOf": {**SEED_000_PROVENANCE, "agent": [
            {"who": {"reference": "Practitioner/a7b1c2d3"}}]},
        "Provenance.agent[0].who": {**SEED_000_PROVENANCE, "agent": [
            {"onBehalfOf": {"reference": "Organization/1"}}]},
    }
    tenant = new_tenant()
    with stack.client(tenant) as client:
        for element, body in cases.items():
            response = client.post("/Provenance", json=body)
            assert response.status_code == 400, element
            expressions = [e for i in response.json()["issue"] for e in i.get("expression", [])]
            assert element in expressions, (element, response.text)
    assert stack.tenant_items(tenant)["ProvenanceTable"] == []
    # Who is an Organization: onBehalfOf is optional. Without `recorded` the server's time is all there is.
    with stack.client(tenant) as client:
        _ensure_target(client, SEED_000_PROVENANCE["target"][0]["reference"])
        ok = {**SEED_000_PROVENANCE, "agent": [{"who": {"reference": "Organization/1"}}]}
        assert client.post("/Provenance", json=ok).status_code == 201
        no_recorded = {k: v for k, v in SEED_000_PROVENANCE.items() if k != "recorded"}
        created = client.post("/Provenance", json=no_recorded)
        assert created.status_code == 201 and "occurredDateTime" not in created.json()
        assert created.json()["recorded"] == created.json()["meta"]["lastUpdated"]


def test_chain_of_custody_matches_history_one_to_one(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        for n in range(3):
            client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "gender": "unknown",
                                                "birthDate": f"200{n}"})
        assert client.delete(f"/Patient/{pid}").status_code == 204
        history = client.get(f"/Patient/{pid}/_history").json()["entry"]
        chain = client.get("/Provenance", params={"target": f"Patient/{pid}"}).json()
    assert len(history) == 5 and chain["total"] == 5
    targets = [e["resource"]["target"][0]["reference"] for e in chain["entry"]]
    assert targets == [f"Patient/{pid}/_history/{v}" for v in range(1, 6)]  # in order
    activities = [e["resource"]["activity"]["coding"][0]["code"] for e in chain["entry"]]
    assert activities == ["CREATE", "UPDATE", "UPDATE", "UPDATE", "DELETE"]
    recorded = [e["resource"]["recorded"] for e in chain["entry"]]
    assert recorded == [h["response"]["lastModified"] for h in reversed(history)]


def test_versioned_target_matches_one_version(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": True})
        versioned = client.get("/Provenance", params={"target": f"Patient/{pid}/_history/2"}).json()
        assert [e["resource"]["target"][0]["reference"] for e in versioned["entry"]] == [f"Patient/{pid}/_history/2"]
        both = client.get("/Provenance", params={
            "target": f"Patient/{pid}/_history/1,Patient/{pid}/_history/2"}).json()
        assert both["total"] == 2


def test_recorded_prefixes_and_post_search(stack: RunningStack) -> None:
    """`recorded` is the server's time, so the search is checked against the instants it assigned."""
    with stack.client(new_tenant()) as client:
        target = SEED_000_PROVENANCE["target"][0]["reference"]
        _ensure_target(client, target)
        (origin,) = [e["resource"]["recorded"] for e in client.get("/Provenance", params={"target": target}).json()[
            "entry"]]  # the target's own creation record
        stamps = []
        for day in ("2024-01-10", "2024-01-15", "2024-01-20"):
            created = client.post("/Provenance", json={**SEED_000_PROVENANCE, "recorded": f"{day}T10:30:00Z"})
            stamps.append(created.json()["recorded"])
        first, middle, last = stamps
        assert first < middle < last

        def recorded(*values: str) -> list[str]:
            params = [("target", target)] + [("recorded", v) for v in values]
            bundle = client.get("/Provenance", params=params).json()
            return [e["resource"]["recorded"] for e in bundle["entry"]]

        assert recorded(f"eq{middle}") == [middle]
        assert recorded(middle) == [middle]
        assert recorded(f"ge{middle}") == [middle, last]
        assert recorded(f"gt{middle}") == [last]
        assert recorded(f"le{middle}") == [origin, first, middle]
        assert recorded(f"lt{middle}") == [origin, first]
        assert recorded(f"ge{first}", f"le{middle}") == [first, middle]
        assert recorded(middle[:7]) == [s for s in (origin, *stamps) if s[:7] == middle[:7]]
        assert recorded("2024-01-15") == []  # the clients' claimed times are not `recorded`
        assert client.get("/Provenance", params={"target": target, "recorded": "ge-soon"}).status_code == 400
        posted = client.post("/Provenance/_search", content=f"target={target}&recorded=gt{middle}",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert posted.status_code == 200 and posted.json()["total"] == 1


def test_paging_250_provenances_exactly_once(stack: RunningStack) -> None:
    target = "Observation/paged-target"
    with stack.client(new_tenant()) as client:
        _ensure_target(client, target)
        created = {e["resource"]["id"] for e in client.get("/Provenance", params={"target": target}).json()["entry"]}
        for n in range(250):
            body = {**SEED_000_PROVENANCE, "target": [{"reference": target}],
                    "recorded": f"2024-02-{1 + n // 24:02d}T{n % 24:02d}:00:00Z"}
            created.add(client.post("/Provenance", json=body, headers={"Prefer": "return=representation"}).json()["id"])
        for count in (1, 7, 10, 100, 1000):
            seen: list[str] = []
            url: str | None = f"/Provenance?target={target}&_count={count}"
            pages = 0
            while url:
                bundle = client.get(url).json()
                assert bundle["total"] == 251  # with the target's own record
                assert len(bundle["entry"]) <= min(count, 100)
                seen += _ids(bundle)
                links = {link["relation"]: link["url"] for link in bundle["link"]}
                url = links.get("next")
                pages += 1
                if count == 1 and pages > 3:
                    break  # walking 250 single pages adds nothing; spot-check the first few
            if count == 1:
                assert len(seen) == len(set(seen)) == 4
                continue
            assert len(seen) == 251 and set(seen) == created, count
        default = client.get("/Provenance", params={"target": target}).json()
        assert len(default["entry"]) == 10  # _count default 10, as in seed 004
        last = next(link["url"] for link in default["link"] if link["relation"] == "last")
        assert len(client.get(last).json()["entry"]) == 1  # 251 = 25 full pages + 1


def test_x_provenance_is_kept_with_the_caller_added_atomically(stack: RunningStack) -> None:
    header = {
        "resourceType": "Provenance",
        "activity": {"coding": [{"code": "import", "display": "Imported from external system"}]},
        "agent": [{"who": {"reference": "Device/importer-1"}, "onBehalfOf": {"reference": "Organization/acme"}}],
        "entity": [{"role": "source", "what": {"reference": "DocumentReference/source-file-1"}}],
    }
    tenant = new_tenant()
    with stack.client(tenant) as client:
        created = client.post("/Patient", json={"resourceType": "Patient"},
                              headers={"X-Provenance": json.dumps(header)})
        pid = created.json()["id"]
        chain = client.get("/Provenance", params={"target": f"Patient/{pid}"}).json()["entry"]
        assert len(chain) == 1
        record = chain[0]["resource"]
        assert record["target"] == [{"reference": f"Patient/{pid}/_history/1", "type": "Patient"}]
        assert record["agent"][0]["who"] == {"reference": "Device/importer-1"}
        assert record["agent"][1]["who"] == {"reference": "Practitioner/123", "type": "Practitioner"}  # the caller
        assert record["recorded"] == created.json()["meta"]["lastUpdated"]
        assert client.get("/Provenance", params={"entity": "DocumentReference/source-file-1"}).json()["total"] == 1
        # A stale If-Match stores neither the version nor its Provenance.
        stale = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid},
                           headers={"If-Match": "7", "X-Provenance": json.dumps(header)})
        assert stale.status_code == 412
        assert client.get("/Provenance", params={"entity": "DocumentReference/source-file-1"}).json()["total"] == 1
        # An invalid X-Provenance (US Core: Device without onBehalfOf) rejects the write.
        bad = {**header, "agent": [{"who": {"reference": "Device/importer-1"}}]}
        rejected = client.put(f"/Patient/{pid}", json={"resourceType": "Patient", "id": pid, "active": False},
                              headers={"X-Provenance": json.dumps(bad)})
        assert rejected.status_code == 400
        assert client.get(f"/Patient/{pid}").json()["meta"]["versionId"] == "1"
        deleted = client.delete(f"/Patient/{pid}", headers={"X-Provenance": json.dumps(header)})
        assert deleted.status_code == 204
        assert client.get("/Provenance", params={"entity": "DocumentReference/source-file-1"}).json()["total"] == 2


def test_system_token_agent_is_a_device(stack: RunningStack) -> None:
    with stack.client(new_tenant(), scope="system/*.cruds", fhir_user=None) as client:
        pid = client.post("/Patient", json={"resourceType": "Patient"}).json()["id"]
        record = client.get("/Provenance", params={"target": f"Patient/{pid}"}).json()["entry"][0]["resource"]
    assert record["agent"][0]["who"]["type"] == "Device"
    assert record["agent"][0]["onBehalfOf"]["type"] == "Organization"


def test_search_requires_a_driving_parameter(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        response = client.get("/Provenance")
        assert response.status_code == 400
        assert "target" in response.json()["issue"][0]["diagnostics"]
        assert client.get("/Provenance", params={"target": "not a reference"}).status_code == 400
