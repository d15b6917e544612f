"""hypothesis over Bundles (batch and transaction): entries of every method, valid and broken urls,
conditional entries (ifNoneExist, repeated or not), If-Match, urn:uuid references between entries, broken
resources, Prefer headers and scopes. Whatever arrives: never a 5xx (neither the response nor any batch
entry), errors are OperationOutcomes, a batch answers every entry, a refused transaction stores nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.handlers.conftest import InProcessStack

TABLES = ("resources_table", "history_table", "provenance_table")
KNOWN_ID = "fuzz-known"
IDS = st.sampled_from([KNOWN_ID, KNOWN_ID, "fuzz-other", "fuzz-third", "a" * 65, "..", "x/y", ""])
URN = st.sampled_from([f"urn:uuid:{uuid.UUID(int=n)}" for n in range(3)])
JUNK = st.one_of(st.none(), st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=2))


def patient(resource_id: str | None, reference: str | None, extra: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Patient", **extra}
    if resource_id is not None:
        body["id"] = resource_id
    if reference is not None:
        body["generalPractitioner"] = [{"reference": reference}]
    return body


RESOURCES = st.one_of(
    st.builds(patient, st.one_of(st.none(), IDS), st.one_of(st.none(), URN, st.just("Practitioner/1")),
              st.fixed_dictionaries({}, optional={
                  "identifier": st.just([{"system": "urn:fuzz", "value": "1"}]),
                  "gender": st.sampled_from(["female", "banana"]),
                  "birthDate": st.sampled_from(["1961", "not-a-date"]),
                  "meta": st.just({"tag": [{"code": "x"}]}),
              })),
    st.builds(lambda status: {"resourceType": "Observation", "status": status, "code": {"text": "t"}},
              st.sampled_from(["final", "nonsense"])),
    JUNK,
)
@st.composite
def entries(draw: st.DrawFn) -> Any:
    """Mostly well-formed entries (so the run reaches the write paths), sometimes broken in one place."""
    method = draw(st.sampled_from(["PUT", "POST", "DELETE", "GET", "PATCH", "BREW"]) if draw(st.integers(0, 9)) == 9
                  else st.sampled_from(["PUT", "POST", "DELETE"]))
    resource_id = draw(IDS)
    resource_type = draw(st.sampled_from(["Patient", "Observation"]) if draw(st.integers(0, 9)) < 9
                         else st.sampled_from(["Nope", "Provenance", ""]))
    url = resource_type if method == "POST" else f"{resource_type}/{resource_id}"
    if draw(st.integers(0, 9)) == 9:
        url = draw(st.sampled_from(["", "Patient/a/b", "Patient?identifier=x"]))
    request: dict[str, Any] = {"method": method, "url": url}
    if method == "POST" and draw(st.booleans()):
        request["ifNoneExist"] = draw(st.sampled_from(
            ["identifier=urn:fuzz|1", "identifier=urn:fuzz|2", "", "shoe=1", "_id=x"]))
    if method != "POST" and draw(st.booleans()):
        request["ifMatch"] = draw(st.sampled_from(['W/"1"', '"2"', "3", "junk", 'W/"99999999999999999999"']))
    entry: dict[str, Any] = {"request": request}
    if draw(st.booleans()):
        entry["fullUrl"] = draw(URN)
    if method != "DELETE" or draw(st.booleans()):
        resource = draw(RESOURCES)
        if draw(st.integers(0, 9)) < 8:  # mostly a resource that fits its url, with optional broken fields
            resource = {**draw(RESOURCES.filter(lambda r: isinstance(r, dict))), "resourceType": resource_type}
            if method == "PUT":
                resource["id"] = resource_id
        entry["resource"] = resource
    return draw(JUNK) if draw(st.integers(0, 9)) == 9 else entry


@st.composite
def bundles(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 9:  # now and then a broken envelope
        return draw(st.fixed_dictionaries({"resourceType": st.sampled_from(["Bundle", "Patient"])},
                                          optional={"type": st.one_of(JUNK, st.just("collection")), "entry": JUNK}))
    return {"resourceType": "Bundle", "type": draw(st.sampled_from(["batch", "transaction"])),
            "entry": draw(st.lists(entries(), max_size=6))}


HEADERS = st.fixed_dictionaries({}, optional={
    "Prefer": st.sampled_from(["return=representation", "return=minimal", "return=OperationOutcome", "junk"]),
})
SCOPES = st.sampled_from(["user/*.*", "user/Patient.c", "user/Patient.cs", "user/*.rs", "user/Patient.cud"])


def stored(local: InProcessStack) -> dict[str, int]:
    return {table: local.count(table) for table in TABLES}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bundle=bundles(), headers=HEADERS, scope=SCOPES)
def test_bundles_never_fail_badly(local: InProcessStack, bundle: dict[str, Any], headers: dict[str, str],
                                  scope: str) -> None:
    if local.request("GET", f"/Patient/{KNOWN_ID}").status == 404:
        local.request("PUT", f"/Patient/{KNOWN_ID}", {"resourceType": "Patient", "id": KNOWN_ID})
    before = stored(local)
    result = local.request("POST", "", bundle, headers=headers, scope=scope)
    what = (json.dumps(bundle)[:300], headers, scope, result.status, result.body[:300])
    assert result.status < 500, what
    assert result.headers.get("Content-Type", "").startswith("application/fhir+json"), what
    body = json.loads(result.body)
    if result.status >= 400:
        assert body["resourceType"] == "OperationOutcome" and body["issue"], what
        assert stored(local) == before, what  # a refused Bundle (or transaction) stores nothing
        return
    assert body["resourceType"] == "Bundle", what
    assert body["type"] == f"{bundle['type']}-response", what
    assert len(body["entry"]) == len(bundle["entry"]), what  # every entry answered, in order
    for entry in body["entry"]:
        status = int(entry["response"]["status"].split()[0])
        assert status < 500, what
        if status >= 400:
            assert entry["response"]["outcome"]["resourceType"] == "OperationOutcome", what
