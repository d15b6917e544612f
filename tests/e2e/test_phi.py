"""PHI at rest: nothing readable in any table, any object of the object bucket or any log, exact hashed search,
tamper and transplant detection, and root-key rotation with re-encryption."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from typing import Any

import pytest

from esus.domain.search_legacy import normalise_email, normalise_phone
from tests.conftest import EXAMPLES, REPO, SYNTHEA, RunningStack, new_tenant, start_stack
from tests.e2e.phi_scan import NOISE, TABLES, assert_no_phi_in_clear, phi_values


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Its own stack: every item of every table, every object and the whole log are scanned for PHI."""
    yield from start_stack(tmp_path_factory)


@pytest.fixture(scope="module")
def rotation_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Its own stack, re-reading the root key on every use (max age 0 s instead of the local default 5 s), so a
    rotation is seen at once without waiting; the rotated key stays out of the shared stack. Only the rotation
    test uses it: re-reading the key on every use makes each request several Secrets Manager calls slower."""
    yield from start_stack(tmp_path_factory, ESUS_ROOT_KEY_MAX_AGE_SECONDS="0")


def _patients() -> list[dict[str, Any]]:
    found = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(EXAMPLES.glob("Patient-*.json"))]
    for bundle_path in sorted(SYNTHEA.glob("*.json")):
        bundle = json.loads(bundle_path.read_text(encoding="utf-8"))
        found += [e["resource"] for e in bundle.get("entry", []) if e["resource"]["resourceType"] == "Patient"]
    return found


@pytest.fixture(scope="module")
def loaded(stack: RunningStack) -> dict[str, Any]:
    patients = _patients()
    assert len(patients) > 50, "the shared example and Synthea data must be next to the repo"
    tenant = new_tenant()
    ids: list[str] = []
    with stack.client(tenant) as client:
        for patient in patients:
            response = client.post("/Patient", json=patient)
            assert response.status_code == 201, response.text
            ids.append(response.json()["id"])
        for path in sorted(EXAMPLES.glob("*.json")):
            example = json.loads(path.read_text(encoding="utf-8"))
            if example["resourceType"] not in ("Patient", "Provenance"):
                client.post(f"/{example['resourceType']}", json=example)
        # Documents about patients, too large for a DynamoDB item, and raw Binary content naming them: their sealed
        # bodies go to the object bucket.
        for patient, pid in list(zip(patients, ids, strict=True))[:5]:
            about = " ".join(sorted(phi_values(patient)))
            document = {"resourceType": "DocumentReference", "status": "current",
                        "subject": {"reference": f"Patient/{pid}"}, "description": f"Letter about {about}",
                        "content": [{"attachment": {"contentType": "application/pdf", "title": about,
                                                    "data": base64.b64encode(os.urandom(450_000)).decode()}}]}
            assert client.post("/DocumentReference", json=document).status_code == 201
            raw = client.post("/Binary", content=f"Discharge summary: {about}".encode(),
                              headers={"Content-Type": "text/plain"})
            assert raw.status_code == 201, raw.text
        for pid in ids[:5]:  # references to patients from another type, from a Provenance agent and entity
            by_patient = {"resourceType": "Provenance", "agent": [{"who": {"reference": f"Patient/{pid}"}}]}
            observation = {"resourceType": "Observation", "status": "final", "code": {"text": "weight"},
                           "subject": {"reference": f"Patient/{pid}"}}
            response = client.post("/Observation", json=observation, headers={"X-Provenance": json.dumps(by_patient)})
            assert response.status_code == 201, response.text
            attestation = {"resourceType": "Provenance", "target": [{"reference": f"Patient/{pid}"}],
                           "agent": [{"who": {"reference": "Practitioner/1"},
                                      "onBehalfOf": {"reference": "Organization/1"}}],
                           "entity": [{"role": "source", "what": {"reference": f"Patient/{pid}"}}]}
            response = client.post("/Provenance", json=attestation)
            assert response.status_code == 201, response.text
    return {"tenant": tenant, "patients": patients, "ids": ids}


def _objects(stack: RunningStack) -> list[bytes]:
    """Every object in the stack's object bucket, raw."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack.state["aws_endpoint"])
    bucket = stack.state["ObjectBucket"]
    keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return [s3.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys]


def test_no_phi_plaintext_in_any_table_or_log(stack: RunningStack, loaded: dict[str, Any]) -> None:
    """Every item of every table (the Provenance index and the change log included): no name, address,
    birth date, phone, email or identifier, as stored or normalised, and no reference to a patient."""
    items = [item for table in TABLES for item in stack.scan(table)]
    assert_no_phi_in_clear(items, loaded["patients"], loaded["ids"], "".join(stack.output))
    # The object bucket: clear skeletons (ids, timestamps) and sealed elements only.
    probes = set().union(*(phi_values(p) for p in loaded["patients"]))
    objects = _objects(stack)
    assert len(objects) >= 11  # the five documents, the five Binary bodies, the large official example
    in_objects = NOISE.sub(b"~", b"\n".join(objects))
    leaked = sorted(p for p in probes if p.encode() in in_objects or json.dumps(p)[1:-1].encode() in in_objects)
    assert not leaked, f"PHI stored in clear in the object bucket: {leaked[:10]}"


def test_every_phone_and_email_finds_exactly_its_patients(stack: RunningStack, loaded: dict[str, Any]) -> None:
    expected: dict[tuple[str, str], set[str]] = defaultdict(set)
    for patient, pid in zip(loaded["patients"], loaded["ids"], strict=True):
        for telecom in patient.get("telecom", []):
            value = telecom.get("value")
            if telecom.get("system") == "phone" and value and normalise_phone(value):
                expected[("phone", normalise_phone(value))].add(pid)
            if telecom.get("system") == "email" and value:
                expected[("email", normalise_email(value))].add(pid)
    assert len([k for k in expected if k[0] == "phone"]) > 30 and [k for k in expected if k[0] == "email"]
    raw_values = {}
    for patient in loaded["patients"]:
        for telecom in patient.get("telecom", []):
            if telecom.get("value") and telecom.get("system") in ("phone", "email"):
                key = telecom["system"], (normalise_phone if telecom["system"] == "phone" else normalise_email)(
                    telecom["value"])
                raw_values[key] = telecom["value"]
    with stack.client(loaded["tenant"]) as client:
        for (param, _), pids in expected.items():
            bundle = client.get("/Patient", params={param: raw_values[(param, _)], "_count": 100}).json()
            assert {e["resource"]["id"] for e in bundle["entry"]} == pids, (param, raw_values[(param, _)])
            assert bundle["total"] == len(pids)


def test_identifier_and_telecom_search(stack: RunningStack, loaded: dict[str, Any]) -> None:
    pairs = list(zip(loaded["patients"], loaded["ids"], strict=True))
    patient, pid = next((p, i) for p, i in pairs
                        if any(x.get("system") == "http://hl7.org/fhir/sid/us-ssn" for x in p.get("identifier", [])))
    ssn = next(x["value"] for x in patient["identifier"] if x.get("system") == "http://hl7.org/fhir/sid/us-ssn")
    phone = next(t["value"] for t in patient["telecom"] if t.get("system") == "phone")

    def having(wanted: dict[str, str], element: str) -> set[str]:
        return {i for p, i in pairs if any(wanted.items() <= x.items() for x in p.get(element, []))}

    same_ssn = having({"system": "http://hl7.org/fhir/sid/us-ssn", "value": ssn}, "identifier")
    same_phone = having({"system": "phone", "value": phone}, "telecom")
    assert pid in same_ssn & same_phone
    with stack.client(loaded["tenant"]) as client:
        def ids(**params: str) -> set[str]:
            return {e["resource"]["id"] for e in client.get("/Patient", params=params).json()["entry"]}

        assert ids(identifier=f"http://hl7.org/fhir/sid/us-ssn|{ssn}") == same_ssn
        assert pid in ids(identifier=ssn)
        assert ids(identifier=f"http://other.example|{ssn}") == set()
        assert pid in ids(telecom=phone)
        assert ids(telecom=f"phone|{phone}", identifier=ssn) == same_ssn & same_phone  # AND
        posted = client.post("/Patient/_search", content=f"identifier={ssn}",
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert pid in {e["resource"]["id"] for e in posted.json()["entry"]}


def test_phone_normalisation_and_paging(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        created = [client.post("/Patient", json={"resourceType": "Patient", "telecom": [
            {"system": "phone", "value": variant}]}).json()["id"]
            for variant in ("+1 (555) 326-5839", "555.326.5839", "001 555 326 5839", "1-555-326-5839")]
        near_miss = {"resourceType": "Patient", "telecom": [{"system": "phone", "value": "555-326-5830"}]}
        client.post("/Patient", json=near_miss)
        seen: list[str] = []
        url: str | None = "/Patient?phone=5553265839&_count=3"
        while url:
            bundle = client.get(url).json()
            assert bundle["total"] == 4
            seen += [e["resource"]["id"] for e in bundle["entry"]]
            url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        assert sorted(seen) == sorted(created)
        # Updates and deletes are visible at once: the index moves in the same transaction.
        first = created[0]
        client.put(f"/Patient/{first}", json={"resourceType": "Patient", "id": first, "telecom": [
            {"system": "email", "value": " New@Example.COM "}]})
        client.delete(f"/Patient/{created[1]}")
        assert client.get("/Patient", params={"phone": "555-326-5839"}).json()["total"] == 2
        assert [e["resource"]["id"] for e in client.get("/Patient", params={"email": "new@example.com"}).json()[
            "entry"]] == [first]
        lenient = client.get("/Patient", params={"email": "new@example.com", "shoe": "9"},
                             headers={"Prefer": "handling=lenient"}).json()
        assert lenient["total"] == 1 and "shoe" not in lenient["link"][0]["url"]


def _first_patient_item(stack: RunningStack, tenant: str) -> tuple[dict[str, Any], str]:
    item = next(i for i in stack.scan("ResourcesTable") if i["pk"]["S"].startswith(f"{tenant}|Patient|"))
    return item, item["pk"]["S"].rsplit("|", 1)[1]


def test_tampered_or_transplanted_ciphertext_is_a_loud_500(stack: RunningStack) -> None:
    tenant, other_tenant = new_tenant(), new_tenant()
    with stack.client(tenant) as client:
        a = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Alpha"}],
                                          "telecom": [{"system": "phone", "value": "555-000-0001"}]}).json()["id"]
        b = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Bravo"}]}).json()["id"]
        client.put(f"/Patient/{b}", json={"resourceType": "Patient", "id": b, "name": [{"family": "Bravo2"}]})
    with stack.client(other_tenant) as client:
        c = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Charlie"}]}).json()["id"]
    ddb, resources, history = stack.dynamodb(), stack.table("ResourcesTable"), stack.table("HistoryTable")

    def get(table: str, key: dict[str, Any]) -> dict[str, Any]:
        return ddb.get_item(TableName=table, Key=key)["Item"]

    def expect_500(path: str, as_tenant: str) -> None:
        with stack.client(as_tenant) as client:
            response = client.get(path)
        assert response.status_code == 500, response.text
        text = response.text
        assert response.json()["resourceType"] == "OperationOutcome"
        assert "Alpha" not in text and "Bravo" not in text and "Traceback" not in text and "InvalidTag" not in text

    key_a = {"pk": {"S": f"{tenant}|Patient|{a}"}}
    key_b = {"pk": {"S": f"{tenant}|Patient|{b}"}}
    original_a = get(resources, key_a)
    # 1. One flipped byte.
    envelope = bytearray(original_a["phi"]["M"]["name"]["B"])
    envelope[-1] ^= 0x01
    ddb.put_item(TableName=resources, Item={**original_a, "phi": {"M": {**original_a["phi"]["M"],
                                                                        "name": {"B": bytes(envelope)}}}})
    expect_500(f"/Patient/{a}", tenant)
    # 2. Moved to another element of the same resource.
    sealed_a = original_a["phi"]["M"]
    swapped = {**sealed_a, "name": sealed_a["telecom"], "telecom": sealed_a["name"]}
    ddb.put_item(TableName=resources, Item={**original_a, "phi": {"M": swapped}})
    expect_500(f"/Patient/{a}", tenant)
    # 3. Moved to another resource of the same tenant.
    item_b = get(resources, key_b)
    ddb.put_item(TableName=resources, Item={**item_b, "phi": {"M": {**item_b["phi"]["M"],
                                                                    "name": original_a["phi"]["M"]["name"]}}})
    expect_500(f"/Patient/{b}", tenant)
    # 4. Moved to another version of the same resource.
    v1 = get(history, {"pk": key_b["pk"], "v": {"N": "1"}})
    v2 = get(history, {"pk": key_b["pk"], "v": {"N": "2"}})
    ddb.put_item(TableName=history, Item={**v2, "phi": v1["phi"]})
    expect_500(f"/Patient/{b}/_history/2", tenant)
    # 5. Moved to another tenant.
    key_c = {"pk": {"S": f"{other_tenant}|Patient|{c}"}}
    item_c = get(resources, key_c)
    ddb.put_item(TableName=resources, Item={**item_c, "phi": {"M": {**item_c["phi"]["M"],
                                                                    "name": original_a["phi"]["M"]["name"]}}})
    expect_500(f"/Patient/{c}", other_tenant)
    # Restored data reads fine again: the failures above were the integrity check, not breakage.
    for table, original in ((resources, original_a), (resources, item_b), (history, v2), (resources, item_c)):
        ddb.put_item(TableName=table, Item=original)
    with stack.client(tenant) as client:
        assert client.get(f"/Patient/{a}").json()["name"] == [{"family": "Alpha"}]
    logs = "".join(stack.output)
    assert "integrity failure" in logs and "Alpha" not in logs


def _cli(stack: RunningStack, *args: str) -> str:
    env = {**os.environ, "ESUS_DEV_DIR": str(stack.dev_dir)}
    done = subprocess.run([sys.executable, "-m", "esus_dev.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def _key_versions(stack: RunningStack, tenant: str) -> set[str]:
    versions = set()
    for table in ("ResourcesTable", "HistoryTable"):
        for item in stack.scan(table):
            if item["pk"]["S"].startswith(f"{tenant}|"):
                for envelope in item.get("phi", {}).get("M", {}).values():
                    raw = envelope["B"]
                    versions.add(raw[2:2 + raw[1]].decode())
    return versions


def test_rotation_then_reencryption(rotation_stack: RunningStack) -> None:
    stack = rotation_stack
    tenant = new_tenant()
    with stack.client(tenant) as client:
        old = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "Before"}],
                                            "telecom": [{"system": "email", "value": "before@rotation.test"}]}).json()
    before = _key_versions(stack, tenant)
    assert len(before) == 1
    assert "now current" in _cli(stack, "rotate-key")  # seen by the next request (key max age 0 s)
    with stack.client(tenant) as client:
        new = client.post("/Patient", json={"resourceType": "Patient", "name": [{"family": "After"}],
                                            "telecom": [{"system": "email", "value": "after@rotation.test"}]}).json()
        assert client.get(f"/Patient/{old['id']}").json() == old  # old key version still decrypts
        assert client.get("/Patient", params={"email": "before@rotation.test"}).json()["total"] == 1
        assert client.get("/Patient", params={"email": "after@rotation.test"}).json()["total"] == 1
    mixed = _key_versions(stack, tenant)
    assert len(mixed) == 2 and before < mixed
    newest = max(mixed, key=int)
    assert "Re-encrypted" in _cli(stack, "reencrypt")
    assert _key_versions(stack, tenant) == {newest}
    index_items = stack.tenant_items(tenant)["IndexTable"]
    assert index_items and all(f"|k{newest}." in i["pk"]["S"] for i in index_items if "|Patient|" in i["pk"]["S"])
    with stack.client(tenant) as client:
        assert client.get(f"/Patient/{old['id']}").json() == old
        assert client.get(f"/Patient/{new['id']}").json() == new
        assert client.get("/Patient", params={"email": "before@rotation.test"}).json()["total"] == 1
        history = client.get(f"/Patient/{old['id']}/_history/1").json()
        assert history["name"] == [{"family": "Before"}]
