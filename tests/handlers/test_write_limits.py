"""Writes that used to end in a 500 (security review, issue 10): index-token collisions, writes over
DynamoDB's 100-item transaction limit, batch entries that fail unexpectedly, and JSON Patch growth."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from esus.container import services
from esus.domain.search_legacy import normalise_phone
from esus.limits import MAX_RESOURCE_BYTES
from esus.ops.verify import verify_all
from esus.security.crypto import BlindIndex
from tests.handlers.conftest import InProcessStack

TABLES = ("resources_table", "history_table", "provenance_table", "index_table")
JSON_PATCH = {"Content-Type": "application/json-patch+json"}


@pytest.fixture
def checked(local: InProcessStack) -> Iterator[InProcessStack]:
    """After each test the whole store still satisfies every integrity invariant."""
    yield local
    local.ddb.faults.clear()
    report = verify_all(services())
    assert report.ok, report.problems


def _counts(local: InProcessStack) -> dict[str, int]:
    return {t: local.count(t) for t in TABLES}


def _colliding_phones(local: InProcessStack) -> tuple[str, str]:
    """Two different phone numbers whose truncated phone tokens are equal under this tenant's key.
    With 16-bit tokens a collision turns up after a few hundred numbers (birthday bound)."""
    bits = services().settings.token_bits_phone
    blind = BlindIndex(services().keyring, {"phone": bits})
    seen: dict[str, str] = {}
    for n in range(200_000):
        phone = f"555{n:07d}"
        token = blind.token("acme", "phone", normalise_phone(phone))
        if token in seen:
            return seen[token], phone
        seen[token] = phone
    raise AssertionError("no collision found")  # pragma: no cover (2^-100000-ish)


def _phones(count: int) -> list[dict[str, str]]:
    return [{"system": "phone", "value": f"555-01{n:02d}-{n:04d}"} for n in range(count)]


def _outcome_text(local: InProcessStack, result: Any) -> str:
    body = local.json(result)
    assert body["resourceType"] == "OperationOutcome"
    return " ".join(i["diagnostics"] for i in body["issue"])


# ---------- colliding index tokens ----------
def test_two_phones_with_colliding_tokens_are_stored_and_both_found(checked: InProcessStack) -> None:
    local = checked
    first, second = _colliding_phones(local)
    patient = {"resourceType": "Patient", "name": [{"family": "Collide"}],
               "telecom": [{"system": "phone", "value": first}, {"system": "phone", "value": second}]}
    created = local.request("POST", "/Patient", patient)
    assert created.status == 201, created.body[:300]
    patient_id = local.json(created)["id"]
    for phone in (first, second):
        found = local.json(local.request("GET", f"/Patient?phone={phone}"))
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [patient_id], phone
    # Updating (the stored index refs hold the shared item once) and a transaction entry work too.
    updated = local.request("PUT", f"/Patient/{patient_id}", {**local.json(created), "active": True})
    assert updated.status == 200, updated.body[:300]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": patient}]}
    assert local.request("POST", "", bundle).status == 200


# ---------- the 100-item transaction limit ----------
def test_patient_with_40_phones_is_stored_and_found_by_every_phone(checked: InProcessStack) -> None:
    """Search index items never take a transaction's room (docs/SEARCH.md: beside the version when they do
    not fit), so a resource with many indexed values is written in full, by every write path."""
    local = checked
    big = {"resourceType": "Patient", "telecom": _phones(40)}
    created = local.request("POST", "/Patient", big)
    assert created.status == 201, created.body[:300]
    pid = local.json(created)["id"]
    for point in _phones(40)[::13]:
        found = local.json(local.request("GET", f"/Patient?phone={point['value']}"))
        assert [e["resource"]["id"] for e in found.get("entry", [])] == [pid], point
    small = local.json(local.request("POST", "/Patient", {"resourceType": "Patient", "telecom": _phones(2)}))
    for method, path, body, headers in (
        ("PUT", f"/Patient/{small['id']}", {**small, "telecom": _phones(40)}, None),
        ("PATCH", f"/Patient/{small['id']}", [{"op": "replace", "path": "/telecom", "value": _phones(40)}],
         JSON_PATCH),
    ):
        result = local.request(method, path, body, headers=headers)
        assert result.status == 200, (method, result.body[:300])
    transaction = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"request": {"method": "POST", "url": "Patient"}, "resource": big}]}
    assert local.request("POST", "", transaction).status == 200


def test_provenance_with_120_targets_is_a_clear_413(checked: InProcessStack) -> None:
    local = checked
    agent = [{"who": {"reference": "Organization/1"}}]
    # Too big is refused before the targets are read (so these need not exist).
    targets = [{"reference": f"Patient/p{n}"} for n in range(120)]
    before = _counts(local)
    result = local.request("POST", "/Provenance", {"resourceType": "Provenance", "target": targets,
                                                   "recorded": "2024-01-15T10:30:00Z", "agent": agent})
    assert result.status == 413 and "at most 100" in _outcome_text(local, result)
    # X-Provenance cannot name targets, but each agent is indexed: 120 agents are too many as well.
    header = json.dumps({"resourceType": "Provenance", "recorded": "2024-01-15T10:30:00Z",
                         "agent": [{"who": {"reference": f"Organization/o{n}"}} for n in range(120)]})
    result = local.request("POST", "/Patient", {"resourceType": "Patient"}, headers={"X-Provenance": header})
    assert result.status == 413 and "at most 100" in _outcome_text(local, result)
    assert _counts(local) == before


# ---------- batch: every entry gets its own result ----------
@pytest.mark.parametrize(("fault", "status", "absent"), [
    (ClientError({"Error": {"Code": "ThrottlingException", "Message": "injected"}}, "TransactWriteItems"), "429",
     "injected"),
    (ClientError({"Error": {"Code": "InternalServerError", "Message": "injected"}}, "TransactWriteItems"), "503",
     "injected"),
    (ClientError({"Error": {"Code": "ValidationException", "Message": "injected"}}, "TransactWriteItems"), "500",
     "injected"),
    (RuntimeError("secret detail: Peter Chalmers"), "500", "Peter"),
])
def test_batch_entry_failing_unexpectedly_gets_its_own_outcome(
    checked: InProcessStack, fault: Exception, status: str, absent: str
) -> None:
    local = checked
    calls: list[int] = []

    def second_write_fails(_: dict[str, Any]) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise fault

    local.ddb.faults["transact_write_items"] = second_write_fails
    entries = [{"request": {"method": "POST", "url": "Patient"},
                "resource": {"resourceType": "Patient", "name": [{"family": f"Entry{n}"}]}} for n in range(3)]
    result = local.request("POST", "", {"resourceType": "Bundle", "type": "batch", "entry": entries})
    assert result.status == 200, result.body[:300]
    responses = [e["response"] for e in local.json(result)["entry"]]
    assert [r["status"].split()[0] for r in responses] == ["201", status, "201"]
    failed = json.dumps(responses[1]["outcome"])
    assert absent not in failed and "Traceback" not in failed
    if status == "500":
        assert "correlation id" in failed
    assert local.count("resources_table") == 2


def test_batch_entries_over_the_item_limit_each_answer_413(checked: InProcessStack) -> None:
    """An X-Provenance with 120 agents makes every entry's write too big: each entry says so, none is
    stored, and the batch itself still answers 200 with every entry's result."""
    local = checked
    header = json.dumps({"resourceType": "Provenance",
                         "agent": [{"who": {"reference": f"Organization/o{n}"}} for n in range(120)]})
    entries = [{"request": {"method": "POST", "url": "Patient"}, "resource": {"resourceType": "Patient"}}] * 3
    result = local.request("POST", "", {"resourceType": "Bundle", "type": "batch", "entry": entries},
                           headers={"X-Provenance": header})
    assert result.status == 200
    assert [e["response"]["status"].split()[0] for e in local.json(result)["entry"]] == ["413", "413", "413"]
    assert _counts(local) == dict.fromkeys(TABLES, 0)


# ---------- transaction: the same condition twice ----------
def test_transaction_with_the_same_if_none_exist_twice_is_a_400_naming_both_entries(checked: InProcessStack) -> None:
    local = checked

    def entry(condition: str) -> dict[str, Any]:
        return {"request": {"method": "POST", "url": "Patient", "ifNoneExist": condition},
                "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "7"}]}}

    other = {"request": {"method": "POST", "url": "Observation"},
             "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}}
    for conditions in (("identifier=urn:mrn|7", "identifier=urn:mrn|7"),
                       ("identifier=urn:mrn|7", "identifier=urn:mrn%7C7")):  # the same search, spelled differently
        bundle = {"resourceType": "Bundle", "type": "transaction",
                  "entry": [entry(conditions[0]), other, entry(conditions[1])]}
        result = local.request("POST", "", bundle)
        assert result.status == 400, result.body[:300]
        text = _outcome_text(local, result)
        assert "Bundle.entry[0]" in text and "Bundle.entry[2]" in text and "ifNoneExist" in text
    assert _counts(local) == dict.fromkeys(TABLES, 0)
    # Once the resource exists, one conditional entry finds it (and different conditions still work).
    single = {"resourceType": "Bundle", "type": "transaction", "entry": [entry("identifier=urn:mrn|7"), other]}
    assert local.request("POST", "", single).status == 200
    again = local.request("POST", "", single)
    assert local.json(again)["entry"][0]["response"]["status"].startswith("200")


# ---------- JSON Patch growth ----------
def test_json_patch_doubling_attack_is_refused_and_nothing_is_stored(checked: InProcessStack) -> None:
    local = checked
    created = local.json(local.request("POST", "/Patient", {
        "resourceType": "Patient", "name": [{"family": "Doubling", "given": ["x" * 1000]}]}))
    before = _counts(local)
    doubling = [{"op": "copy", "from": "/name", "path": "/name/-"} for _ in range(14)]  # 1 KB -> 16 MB
    result = local.request("PATCH", f"/Patient/{created['id']}", doubling, headers=JSON_PATCH)
    assert result.status == 413
    assert f"larger than {MAX_RESOURCE_BYTES} bytes" in _outcome_text(local, result)
    too_many = [{"op": "test", "path": "/id", "value": created["id"]}] * 101
    result = local.request("PATCH", f"/Patient/{created['id']}", too_many, headers=JSON_PATCH)
    assert result.status == 413 and "at most 100 operations" in _outcome_text(local, result)
    # A small document can still nest deeply: each copy of a chain into its own leaf doubles the depth.
    chain: Any = {}
    for _ in range(90):
        chain = {"a": chain}
    nesting = [{"op": "add", "path": "/x", "value": chain}] + [
        {"op": "copy", "from": "/x", "path": "/x" + "/a" * (90 * 2**n)} for n in range(5)]
    result = local.request("PATCH", f"/Patient/{created['id']}", nesting, headers=JSON_PATCH)
    assert result.status == 422, result.body[:300]
    assert "more than 100 levels" in _outcome_text(local, result)
    assert _counts(local) == before
    assert local.json(local.request("GET", f"/Patient/{created['id']}"))["meta"]["versionId"] == "1"


def test_recorded_that_overflows_utc_is_not_a_500(checked: InProcessStack) -> None:
    """0001-01-01T00:00:00+01:00 is a valid-looking instant before year 1 in UTC (OverflowError)."""
    local = checked
    patient = local.json(local.request("POST", "/Patient", {"resourceType": "Patient"}))
    provenance = {"resourceType": "Provenance", "target": [{"reference": f"Patient/{patient['id']}"}],
                  "recorded": "0001-01-01T00:00:00+01:00", "agent": [{"who": {"reference": "Organization/1"}}]}
    result = local.request("POST", "/Provenance", provenance)
    assert result.status in (201, 400), result.body[:300]  # 201 if the server's own time is recorded instead
    header = json.dumps({k: v for k, v in provenance.items() if k != "target"})
    result = local.request("POST", "/Patient", {"resourceType": "Patient"}, headers={"X-Provenance": header})
    assert result.status in (201, 400), result.body[:300]


def test_contained_resource_of_an_unknown_type_is_a_400_not_a_500(checked: InProcessStack) -> None:
    """fhir.resources looks a nested resource's type up in a table and raised a KeyError for an unknown one, which
    reached the client as a 500. Contained, in a stored Bundle's entry, and in a transaction entry alike; nothing
    is stored for them."""
    local = checked
    before = _counts(local)
    bodies = [
        ("/Patient", {"resourceType": "Patient", "contained": [{"resourceType": "Foo", "id": "x"}]}),
        ("/Bundle", {"resourceType": "Bundle", "type": "collection",
                     "entry": [{"resource": {"resourceType": "Nope"}}]}),
        ("", {"resourceType": "Bundle", "type": "transaction", "entry": [{
            "resource": {"resourceType": "Patient", "contained": [{"resourceType": "Foo"}]},
            "request": {"method": "POST", "url": "Patient"}}]}),
    ]
    for path, body in bodies:
        result = local.request("POST", path, body)
        assert result.status == 400, (path, result.status, result.body[:300])
        assert "is not a FHIR R4 type" in _outcome_text(local, result), result.body[:300]
    # A resourceType that is not even a string (a TypeError inside fhir_core) is named with its path too.
    result = local.request("POST", "/Patient", {"resourceType": "Patient", "contained": [{"resourceType": 5}]})
    assert result.status == 400, result.body[:300]
    issue = local.json(result)["issue"][0]
    assert issue["expression"] == ["Patient.contained[0].resourceType"] and "concatenate" not in issue["diagnostics"]
    assert _counts(local) == before
    # A contained resource of a type the models know, but the server does not serve on its own, is still fine.
    citation = {"resourceType": "Patient", "contained": [{"resourceType": "Citation", "id": "c", "status": "draft"}]}
    assert local.request("POST", "/Patient", citation).status == 201
