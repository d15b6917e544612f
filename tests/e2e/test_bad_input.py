"""Bad input: the right OperationOutcome with the right status, and nothing stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from esus.limits import DEFAULT_MAX_BODY_BYTES
from tests.conftest import RunningStack, new_tenant

# Just over the request body limit (counted as the body sits in the Lambda event), still inside Lambda's 6 MB.
BIG_TEXT = "x" * (DEFAULT_MAX_BODY_BYTES + 1000)


def _deep_extension(levels: int) -> dict[str, Any]:
    extension: dict[str, Any] = {"url": "http://example.org/x", "valueString": "leaf"}
    for _ in range(levels):
        extension = {"url": "http://example.org/x", "extension": [extension]}
    return extension


def _cases(existing_id: str, base: str) -> list[tuple[str, str, str, dict[str, str], bytes, int, str]]:
    patient = json.dumps({"resourceType": "Patient", "id": existing_id}).encode()
    nested = ("[" * 100_000 + "]" * 100_000).encode()
    deep_bundle = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "request": {"method": "POST", "url": "Patient"},
        "resource": {"resourceType": "Patient", "extension": [_deep_extension(150)]}}]}).encode()
    conditional = {"request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:mrn|42"},
                   "resource": {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": "42"}]}}
    twice = json.dumps({"resourceType": "Bundle", "type": "transaction", "entry": [conditional, conditional]}).encode()
    return [
        # (name, method, path, headers, body, status, issue code)
        ("malformed json", "POST", "/Patient", {}, b'{"resourceType": "Patient",', 400, "invalid"),
        ("not an object", "POST", "/Patient", {}, b'["Patient"]', 400, "invalid"),
        ("empty body", "POST", "/Patient", {}, b"", 400, "invalid"),
        ("wrong resourceType", "POST", "/Patient", {}, b'{"resourceType": "Observation"}', 400, "invalid"),
        ("invalid fhir", "POST", "/Patient", {}, b'{"resourceType": "Patient", "birthDate": "1 May"}', 400, "invalid"),
        ("unknown element", "POST", "/Patient", {}, b'{"resourceType": "Patient", "shoeSize": 9}', 400, "structure"),
        ("unknown type", "POST", "/Spaceship", {}, b'{"resourceType": "Spaceship"}', 404, "not-found"),
        ("wrong content type", "POST", "/Patient", {"Content-Type": "text/plain"}, patient, 415, "not-supported"),
        ("xml content type", "POST", "/Patient", {"Content-Type": "application/fhir+xml"}, b"<Patient/>", 415,
         "not-supported"),
        ("oversized body", "POST", "/Patient", {},
         json.dumps({"resourceType": "Patient", "text": {"status": "generated",
                     "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{BIG_TEXT}</div>'}}).encode(),
         413, "too-costly"),
        ("id mismatch", "PUT", f"/Patient/{existing_id}", {}, b'{"resourceType": "Patient", "id": "nope"}', 400,
         "invalid"),
        ("missing id", "PUT", f"/Patient/{existing_id}", {}, b'{"resourceType": "Patient"}', 400, "invalid"),
        ("bad if-match", "PUT", f"/Patient/{existing_id}", {"If-Match": "yesterday"}, patient, 400, "invalid"),
        ("zero if-match", "PUT", f"/Patient/{existing_id}", {"If-Match": 'W/"0"'}, patient, 400, "invalid"),
        ("bad id", "PUT", "/Patient/bad_id!", {}, b'{"resourceType": "Patient", "id": "bad_id!"}', 400, "invalid"),
        ("over-long id", "GET", "/Patient/" + "a" * 65, {}, b"", 400, "invalid"),
        ("bad x-provenance", "POST", "/Patient", {"X-Provenance": "{not json"}, b'{"resourceType": "Patient"}', 400,
         "invalid"),
        ("x-provenance with target", "POST", "/Patient",
         {"X-Provenance": json.dumps({"resourceType": "Provenance", "target": [{"reference": "Patient/1"}],
                                      "agent": [{"who": {"reference": "Organization/1"}}]})},
         b'{"resourceType": "Patient"}', 400, "invalid"),
        ("provenance update", "PUT", "/Provenance/abc", {}, b'{"resourceType": "Provenance", "id": "abc"}', 405,
         "not-supported"),
        ("provenance delete", "DELETE", "/Provenance/abc", {}, b"", 405, "not-supported"),
        ("unsupported search param", "GET", "/Patient?shoe=9", {}, b"", 400, "invalid"),
        ("bad _count", "GET", "/Patient?phone=1&_count=many", {}, b"", 400, "invalid"),
        ("unknown route", "GET", "/Patient/1/_history/1/extra", {}, b"", 404, "not-found"),
        ("unsupported method", "POST", f"/Patient/{existing_id}", {}, patient, 404, "not-found"),
        ("patch without json-patch", "PATCH", f"/Patient/{existing_id}", {}, b"[]", 415, "not-supported"),
        # Issue 10, finding 10: each of these was a 500.
        ("superscript _count", "GET", "/Patient?phone=1&_count=%C2%B2", {}, b"", 400, "invalid"),
        ("5,000-digit _count", "GET", "/Patient?phone=1&_count=" + "9" * 5000, {}, b"", 400, "invalid"),
        ("_since before year 1 in UTC", "GET", f"/Patient/{existing_id}/_history?_since=0001-01-01T00:00:00%2B01:00",
         {}, b"", 400, "invalid"),
        ("_at after year 9999 in UTC", "GET", "/_history?_at=9999-12-31T23:59:59-01:00", {}, b"", 400, "invalid"),
        ("JSON nested 100,000 deep", "POST", "/Patient", {}, nested, 400, "too-long"),
        ("JSON nested 100,000 deep in a Bundle", "POST", base, {}, nested, 400, "too-long"),
        ("resource nested 300 deep in a Bundle", "POST", base, {}, deep_bundle, 400, "too-long"),
        ("X-Provenance nested 5,000 deep", "POST", "/Patient", {"X-Provenance": "[" * 5000 + "]" * 5000},
         b'{"resourceType": "Patient"}', 400, "too-long"),
        ("the same ifNoneExist twice in a transaction", "POST", base, {}, twice, 400, "invalid"),
        # The same sweep: already 4xx, kept so they stay so.
        ("19-digit if-match", "PUT", f"/Patient/{existing_id}", {"If-Match": 'W/"' + "9" * 19 + '"'}, patient, 400,
         "invalid"),
        ("_since garbage", "GET", f"/Patient/{existing_id}/_history?_since=yesterday", {}, b"", 400, "invalid"),
        ("18-digit vread", "GET", f"/Patient/{existing_id}/_history/" + "9" * 18, {}, b"", 404, "not-found"),
        ("5,000-digit vread", "GET", f"/Patient/{existing_id}/_history/" + "9" * 5000, {}, b"", 404, "not-found"),
    ]


def test_bad_input_table(stack: RunningStack) -> None:
    tenant = new_tenant()
    with stack.client(tenant) as client:
        existing = client.post("/Patient", json={"resourceType": "Patient", "active": True}).json()["id"]
        before = {k: len(v) for k, v in stack.tenant_items(tenant).items()}
        failures = []
        for name, method, path, headers, body, status, code in _cases(existing, stack.base_url):
            response = client.request(method, path, headers=headers, content=body)
            problem = None
            if response.status_code != status:
                problem = f"status {response.status_code} != {status}: {response.text[:300]}"
            elif not response.headers.get("Content-Type", "").startswith("application/fhir+json"):
                problem = f"content type {response.headers.get('Content-Type')}"
            else:
                outcome = response.json()
                if outcome["resourceType"] != "OperationOutcome" or outcome["issue"][0]["code"] != code:
                    problem = f"outcome {outcome}"
                elif "Traceback" in response.text or "File \"" in response.text:
                    problem = "stack trace leaked"
            if problem:
                failures.append(f"{name}: {problem}")
        assert not failures, "\n".join(failures)
        after = {k: len(v) for k, v in stack.tenant_items(tenant).items()}
        assert after == before, "a rejected request stored something"
        assert client.get(f"/Patient/{existing}").json()["meta"]["versionId"] == "1"


def test_validation_issues_name_element_paths(stack: RunningStack) -> None:
    with stack.client(new_tenant()) as client:
        response = client.post("/Patient", json={"resourceType": "Patient", "birthDate": "soon",
                                                 "name": [{"given": "Peter"}]})
    assert response.status_code == 400
    expressions = {e for issue in response.json()["issue"] for e in issue.get("expression", [])}
    assert "Patient.birthDate" in expressions
    assert "Patient.name[0].given" in expressions


@pytest.mark.parametrize("content_type", ["application/fhir+json", "application/json",
                                          "application/fhir+json; charset=utf-8"])
def test_accepted_content_types(stack: RunningStack, content_type: str) -> None:
    with stack.client(new_tenant()) as client:
        response = client.post("/Patient", content=b'{"resourceType": "Patient"}',
                               headers={"Content-Type": content_type})
    assert response.status_code == 201
