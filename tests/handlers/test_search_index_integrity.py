"""The search index under `esus verify` (docs/SEARCH.md): stale items are expected after updates and
deletes (counted, not reported), missing ones (a crash between a version and its deferred items) are
reported and repaired by `--repair-index`, which also removes the stale ones."""

from __future__ import annotations

import pytest

from esus.container import services
from esus.domain import search_index, search_semantics
from esus.ops.verify import VerifyReport, verify_all
from esus.settings import get_settings
from tests.handlers.conftest import InProcessStack

PATIENT = {"resourceType": "Patient", "name": [{"family": "Chalmers", "given": ["Peter"]}], "birthDate": "1974"}


def _verify(repair: bool = False) -> VerifyReport:
    return verify_all(services(), "acme", repair_index=repair)


def test_stale_missing_and_repair(local: InProcessStack) -> None:
    created = local.json(local.request("POST", "/Patient", PATIENT))
    pid = created["id"]
    local.request("PUT", f"/Patient/{pid}", {**created, "name": [{"family": "Baker"}]})
    report = _verify()
    assert report.ok, report.problems
    assert report.tenant("acme").stale_index_items > 0  # version 1's items: harmless, cleaned lazily
    # A crash after the version's transaction and before its index items: some of them are missing.
    settings, ddb = get_settings(), local.ddb._client
    victims = [i for i in ddb.scan(TableName=settings.index_table)["Items"]
               if i["sk"]["S"].endswith("|000000000002") and "|name|" in i["pk"]["S"]]
    assert victims
    for victim in victims:
        ddb.delete_item(TableName=settings.index_table, Key={"pk": victim["pk"], "sk": victim["sk"]})
    assert local.json(local.request("GET", "/Patient?family=baker"))["total"] == 0  # not found: incomplete
    damaged = _verify()
    assert not damaged.ok and all("is missing" in p for p in damaged.problems), damaged.problems
    assert len(damaged.problems) == len(victims)
    repaired = _verify(repair=True)
    assert repaired.tenant("acme").repaired_index_items == len(victims) + report.tenant("acme").stale_index_items
    after = _verify()
    assert after.ok and after.tenant("acme").stale_index_items == 0
    assert local.json(local.request("GET", "/Patient?family=baker"))["total"] == 1
    assert local.json(local.request("GET", "/Patient?family=chal"))["total"] == 0


def test_an_idx_missing_what_the_content_needs_is_reported(local: InProcessStack) -> None:
    pid = local.json(local.request("POST", "/Patient", PATIENT))["id"]
    settings, ddb = get_settings(), local.ddb._client
    key = {"pk": {"S": f"acme|Patient|{pid}"}}
    item = ddb.get_item(TableName=settings.resources_table, Key=key)["Item"]
    item["idx"] = {"L": item["idx"]["L"][1:]}  # the version no longer lists one of its items
    ddb.put_item(TableName=settings.resources_table, Item=item)
    report = _verify()
    assert any("idx does not list 1 index item" in p for p in report.problems), report.problems


def _index_params(local: InProcessStack) -> set[str]:
    items = local.ddb._client.scan(TableName=get_settings().index_table)["Items"]
    return {i["pk"]["S"].split("|")[2] for i in items if i["pk"]["S"].startswith("acme|Patient|")}


ADDRESSED = {**PATIENT, "address": [{"line": ["534 Erewhon St"], "city": "Pleasantville", "state": "Vic",
                                     "postalCode": "3999", "country": "AU"}]}


def test_name_and_address_parts_are_found_through_the_wider_parameters_items(local: InProcessStack) -> None:
    """family, given and the address parts write no index items: their lookups read name's and address's, and
    every candidate is re-checked, so a given name never answers a family search."""
    pid = local.json(local.request("POST", "/Patient", ADDRESSED))["id"]
    decoy_body = {"resourceType": "Patient", "name": [{"family": "Peterson", "given": ["Chalmers"]}],
                  "address": [{"line": ["3999 Vic Rd"], "city": "Erewhon"}]}
    decoy = local.json(local.request("POST", "/Patient", decoy_body))["id"]
    assert _index_params(local) >= {"name", "address"}
    assert not _index_params(local) & {"family", "given", "address-city", "address-state", "address-postalcode",
                                       "address-country"}

    def found(query: str) -> set[str]:
        bundle = local.json(local.request("GET", f"/Patient?{query}"))
        return {e["resource"]["id"] for e in bundle.get("entry", [])}

    assert found("family=chal") == {pid} and found("given=chal") == {decoy} and found("name=chal") == {pid, decoy}
    assert found("given=pet") == {pid} and found("family=pet") == {decoy}
    assert found("address-city=pleas") == {pid} and found("address-city=erewhon") == {decoy}
    assert found("address-postalcode=3999") == {pid} and found("address-state=vic") == {pid}
    assert found("address-country=au") == {pid} and found("address=3999") == {pid, decoy}
    assert _verify().ok


def test_items_written_before_indexing_under_the_wider_parameter_stay_valid(
    local: InProcessStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Versions stored when family had index items of its own: still found, still verified; an update leaves
    those items stale, and --repair-index removes them."""
    with monkeypatch.context() as earlier:
        earlier.setattr(search_index, "index_terms", search_semantics.value_terms)
        created = local.json(local.request("POST", "/Patient", PATIENT))
    assert "family" in _index_params(local)
    assert local.json(local.request("GET", "/Patient?family=chalm"))["total"] == 1
    assert _verify().ok
    local.request("PUT", f"/Patient/{created['id']}", {**created, "name": [{"family": "Baker"}]})
    assert _verify().ok
    assert _verify(repair=True).tenant("acme").repaired_index_items > 0
    assert "family" not in _index_params(local) and _verify().ok
    assert local.json(local.request("GET", "/Patient?family=baker"))["total"] == 1


def _observation(patient_id: str, code: str = "8867-4") -> dict[str, object]:
    return {"resourceType": "Observation", "status": "final", "subject": {"reference": f"Patient/{patient_id}"},
            "code": {"coding": [{"system": "http://loinc.org", "code": code}]}}


def _everything(local: InProcessStack, pid: str) -> set[str]:
    """The compartment's members $everything returns (the Provenance of the Patient's writes left out)."""
    bundle = local.json(local.request("GET", f"/Patient/{pid}/$everything"))
    return {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle.get("entry", [])
            if e["resource"]["resourceType"] != "Provenance"}


def test_a_patients_compartment_is_one_partition_read_in_one_query(local: InProcessStack) -> None:
    """Every member version has one item in its patient's compartment partition (keyed by a token, never the id):
    $everything finds the members with one Query, whatever the number of types; a member that leaves the
    compartment stops being returned at once, and its old item is stale until repaired."""
    pid = local.json(local.request("POST", "/Patient", PATIENT))["id"]
    other = local.json(local.request("POST", "/Patient", PATIENT))["id"]
    oid = local.json(local.request("POST", "/Observation", _observation(pid)))["id"]
    eid = local.json(local.request("POST", "/Encounter", {"resourceType": "Encounter", "status": "finished",
                                                          "class": {"code": "AMB"},
                                                          "subject": {"reference": f"Patient/{pid}"}}))["id"]
    items = local.ddb._client.scan(TableName=get_settings().index_table)["Items"]
    members = sorted(i["sk"]["S"].rsplit("|", 1)[0] for i in items if "|Patient|_compartment|" in i["pk"]["S"])
    assert members == sorted([f"Encounter|{eid}", f"Observation|{oid}"])
    assert not [i for i in items if "_compartment" in i["pk"]["S"] and pid in i["pk"]["S"]]

    local.ddb.calls.clear()
    assert _everything(local, pid) == {f"Patient/{pid}", f"Observation/{oid}", f"Encounter/{eid}"}
    assert local.ddb.calls.count("query") <= 2  # the compartment partition, and Provenance's own index
    # the members of every type together, the Provenances beside them, then what they reference (the agent)
    assert local.ddb.calls.count("batch_get_item") == 3

    observation = local.json(local.request("GET", f"/Observation/{oid}"))
    local.request("PUT", f"/Observation/{oid}", {**observation, "subject": {"reference": f"Patient/{other}"}})
    assert _everything(local, pid) == {f"Patient/{pid}", f"Encounter/{eid}"}
    assert _everything(local, other) == {f"Patient/{other}", f"Observation/{oid}"}
    compartment = local.json(local.request("GET", f"/Patient/{pid}/Observation"))
    assert compartment["total"] == 0
    stale = _verify()
    assert stale.ok and stale.tenant("acme").stale_index_items > 0
    _verify(repair=True)
    assert _verify().tenant("acme").stale_index_items == 0


def test_members_stored_before_compartment_items_are_added_by_repair(
    local: InProcessStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An Observation written before compartment items existed: `esus verify` reports its idx incomplete, and
    `--repair-index` writes its item, after which $everything returns it."""
    pid = local.json(local.request("POST", "/Patient", PATIENT))["id"]
    with monkeypatch.context() as earlier:
        earlier.setattr(search_index, "compartment_patients", lambda resource_type, resource: set())
        oid = local.json(local.request("POST", "/Observation", _observation(pid)))["id"]
    assert _everything(local, pid) == {f"Patient/{pid}"}
    report = _verify()
    assert report.problems == [f"acme|Observation|{oid}: idx does not list 1 index item(s) its content needs "
                               "(esus verify --repair-index adds them)"]
    assert _verify(repair=True).ok
    assert _verify().ok
    assert _everything(local, pid) == {f"Patient/{pid}", f"Observation/{oid}"}
    assert local.json(local.request("GET", f"/Patient/{pid}/Observation"))["total"] == 1


def test_members_stored_before_compartment_items_are_added_after_a_key_rotation_too(
    local: InProcessStack, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under an older key the other items cannot be compared yet, but missing compartment items are still
    reported, and the repair moves the version to the current key with its complete idx (as reencrypt would)."""
    from esus.container import build_services, use_services
    from esus.ops.rotation import rotate_root_key

    pid = local.json(local.request("POST", "/Patient", PATIENT))["id"]
    with monkeypatch.context() as earlier:
        earlier.setattr(search_index, "compartment_patients", lambda resource_type, resource: set())
        oid = local.json(local.request("POST", "/Observation", _observation(pid)))["id"]
    settings = get_settings()
    rotate_root_key(local.secrets, settings.root_key_secret_id)
    use_services(build_services(settings, local.ddb, local.secrets, local.s3))
    assert _verify().problems == [f"acme|Observation|{oid}: idx does not list 1 index item(s) its content needs "
                                  "(esus verify --repair-index adds them)"]
    assert _verify(repair=True).ok and _verify().ok
    assert _everything(local, pid) == {f"Patient/{pid}", f"Observation/{oid}"}
