"""Provenance's own index (target, agent, patient, entity): keys are keyed 128-bit tokens per tenant and
parameter, never a reference in clear; searches find records under every live key version; `esus
reencrypt` moves the items to the current key (clear items of older records included); `esus verify`
checks them."""

from __future__ import annotations

import json
import re
from typing import Any

from esus.container import build_services, services, use_services
from esus.ops.rotation import reencrypt_all, rotate_root_key
from esus.ops.verify import verify_all
from esus.settings import get_settings
from tests.handlers.conftest import InProcessStack

PROVENANCE_KEY = re.compile(r"^(acme|beta)\|Provenance\|(target|agent|patient|entity)\|k(\d+)\.[0-9a-f]{32}$")


def _key_version(key: str) -> str:
    """The key version a Provenance index key's token was made with ("" when it is not a token)."""
    match = PROVENANCE_KEY.match(key)
    return match.group(3) if match else ""


def _write(local: InProcessStack) -> dict[str, str]:
    """A Patient, an Observation about it written by the patient (X-Provenance) and an attestation that
    names the patient as entity."""
    pid = local.json(local.request("POST", "/Patient", {"resourceType": "Patient", "name": [{"family": "Tok"}]}))["id"]
    by_patient = {"resourceType": "Provenance", "agent": [{"who": {"reference": f"Patient/{pid}"}}]}
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "subject": {"reference": f"Patient/{pid}"}}
    created = local.request("POST", "/Observation", observation, headers={"X-Provenance": json.dumps(by_patient)})
    assert created.status == 201, created.body
    attestation = {"resourceType": "Provenance", "target": [{"reference": f"Patient/{pid}/_history/1"}],
                   "agent": [{"who": {"reference": "Practitioner/9"}, "onBehalfOf": {"reference": "Organization/1"}}],
                   "entity": [{"role": "source", "what": {"reference": f"Patient/{pid}"}}]}
    attested = local.request("POST", "/Provenance", attestation)
    assert attested.status == 201, attested.body
    return {"pid": pid, "oid": local.json(created)["id"], "attestation": local.json(attested)["id"]}


def _found(local: InProcessStack, query: str, tenant: str = "acme") -> list[str]:
    result = local.request("GET", f"/Provenance?{query}", tenant=tenant)
    assert result.status == 200, result.body
    return sorted(e["resource"]["id"] for e in local.json(result).get("entry", []))


def _index_items(local: InProcessStack) -> list[dict[str, Any]]:
    return list(local.ddb._client.scan(TableName=get_settings().index_table)["Items"])


def _provenance_keys(local: InProcessStack) -> list[str]:
    return [str(i["pk"]["S"]) for i in _index_items(local) if "|Provenance|" in i["pk"]["S"]]


def _searches(local: InProcessStack, ids: dict[str, str]) -> dict[str, list[str]]:
    pid, oid = ids["pid"], ids["oid"]
    return {query: _found(local, query) for query in (
        f"target=Patient/{pid}", f"target=Patient/{pid}/_history/1", f"patient={pid}", f"patient=Patient/{pid}",
        f"agent=Patient/{pid}", f"entity=Patient/{pid}", f"target=Observation/{oid}", "agent=Practitioner/9",
    )}


def _check_searches(found: dict[str, list[str]], ids: dict[str, str]) -> None:
    pid, oid = ids["pid"], ids["oid"]
    patients_own = found[f"target=Observation/{oid}"]
    assert len(patients_own) == 1  # the Observation's write record, with the patient as agent
    assert found[f"agent=Patient/{pid}"] == patients_own
    assert found[f"entity=Patient/{pid}"] == found["agent=Practitioner/9"] == [ids["attestation"]]
    # The Patient's own write record and the attestation both target version 1.
    assert len(found[f"target=Patient/{pid}"]) == 2 and ids["attestation"] in found[f"target=Patient/{pid}"]
    assert found[f"target=Patient/{pid}/_history/1"] == found[f"patient={pid}"] == found[f"patient=Patient/{pid}"] \
        == found[f"target=Patient/{pid}"]


def test_provenance_index_keys_are_keyed_tokens(local: InProcessStack) -> None:
    ids = _write(local)
    keys = _provenance_keys(local)
    assert len(keys) >= 8
    assert {_key_version(k) for k in keys} == {"1"}, keys
    # No index key of any kind names the patient (its own items carry its id in the sort key only).
    assert not [i for i in _index_items(local) if ids["pid"] in i["pk"]["S"]]
    assert not [i for i in _index_items(local) if "Patient/" in json.dumps(i)]
    found = _searches(local, ids)
    _check_searches(found, ids)
    # Tokens are per tenant: the same reference finds nothing elsewhere.
    assert _found(local, f"target=Patient/{ids['pid']}", tenant="beta") == []
    report = verify_all(services())
    assert report.ok, report.problems


def test_rotation_keeps_provenance_findable_and_reencryption_moves_its_index(local: InProcessStack) -> None:
    ids = _write(local)
    before = _searches(local, ids)
    settings = get_settings()
    rotate_root_key(local.secrets, settings.root_key_secret_id)
    use_services(build_services(settings, local.ddb, local.secrets))  # a fresh keyring sees key version 2
    assert _searches(local, ids) == before  # looked up under every live key version
    amended = {"resourceType": "Observation", "id": ids["oid"], "status": "amended", "code": {"text": "x"},
               "subject": {"reference": f"Patient/{ids['pid']}"}}
    later = local.request("PUT", f"/Observation/{ids['oid']}", amended)
    assert later.status == 200
    both = _found(local, f"target=Observation/{ids['oid']}")
    assert len(both) == 2  # one record under k1, one under k2
    before[f"target=Observation/{ids['oid']}"] = both
    assert {_key_version(k) for k in _provenance_keys(local)} == {"1", "2"}
    moved = reencrypt_all(services())
    assert moved.provenance_items == 3 and not moved.failed_keys  # the three records written under k1
    keys = _provenance_keys(local)
    assert {_key_version(k) for k in keys} == {"2"}, keys
    assert _searches(local, ids) == before
    report = verify_all(services())
    assert report.ok, report.problems
    assert reencrypt_all(services()).provenance_items == 0  # nothing left to move


def test_clear_provenance_index_of_older_records_is_reported_then_moved(local: InProcessStack) -> None:
    """Records written before Provenance references were tokenised had `Patient/<id>` in their index keys
    and no `ikv`: verify names them, reencrypt replaces their items with tokens."""
    ids = _write(local)
    before = _searches(local, ids)
    settings, ddb, store = get_settings(), local.ddb._client, services().store
    records = ddb.scan(TableName=settings.provenance_table)["Items"]
    for item in records:  # rewrite each record's index as the earlier code stored it
        plain = {k: ddb_value for k, ddb_value in item.items() if k != "ikv"}
        ddb.put_item(TableName=settings.provenance_table, Item=plain)
        tenant = item["pk"]["S"].split("|", 1)[0]
        record = store.provenances(tenant, [item["pk"]["S"].rsplit("|", 1)[1]])[0]
        kv = item["ikv"]["S"]
        store.delete_index_items([e.ref for e in services().resources.provenance_index(
            tenant, record, item["rec"]["S"], kv)])
        store.put_index_items(services().resources.provenance_index(tenant, record, item["rec"]["S"], None))
    assert [i for i in _index_items(local) if f"Patient/{ids['pid']}" in i["pk"]["S"]]
    report = verify_all(services())
    in_clear = [p for p in report.problems if "in clear" in p]
    assert len(in_clear) == len(records) == 3, report.problems
    # Pass 1 finds write records through the tokens only: until reencrypt, those versions look unrecorded.
    assert sorted(set(report.problems) - set(in_clear)) == sorted(
        f"acme|{t}|{i} v1: 0 Provenance records (expected 1)" for t, i in (("Patient", ids["pid"]),
                                                                          ("Observation", ids["oid"])))
    moved = reencrypt_all(services())
    assert moved.provenance_items == 3 and not moved.failed_keys
    assert not [i for i in _index_items(local) if ids["pid"] in i["pk"]["S"]]
    assert {_key_version(k) for k in _provenance_keys(local)} == {"1"}
    assert _searches(local, ids) == before
    report = verify_all(services())
    assert report.ok, report.problems
