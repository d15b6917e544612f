"""Binary (FHIR http.html#binary) through the template's API Gateway emulation: raw content in and out by
Content-Type and Accept, the resource as FHIR JSON, every body sealed in the object bucket, and the size limit
Lambda's 6 MB payload sets (413 just over it)."""

from __future__ import annotations

import base64
import json
import os
from typing import Any

from esus.limits import LAMBDA_REQUEST_BYTES
from esus.settings import get_settings
from tests.handlers.conftest import InProcessStack

MARKER = b"Quasimodo Plaintextson, born 1482-01-06"
PDF = b"%PDF-1.7\n" + MARKER + b"\n" + bytes(range(256)) * 40 + b"\n%%EOF"  # not UTF-8
RAW_PDF = {"Content-Type": "application/pdf"}
ACCEPT_PDF = {"Accept": "application/pdf"}


def _objects(local: InProcessStack) -> dict[str, bytes]:
    client, bucket = local.s3._client, get_settings().object_bucket
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _stored_counts(local: InProcessStack) -> tuple[int, int, int]:
    return local.count("resources_table"), local.count("history_table"), len(_objects(local))


def _outcome(local: InProcessStack, result: Any) -> str:
    body = local.json(result)
    assert body["resourceType"] == "OperationOutcome", body
    return " ".join(i["diagnostics"] for i in body["issue"])


def test_raw_content_round_trips_and_the_resource_is_fhir_json(local: InProcessStack) -> None:
    created = local.request("POST", "/Binary", PDF, headers={**RAW_PDF, "X-Security-Context": "Patient/p1"})
    assert created.status == 201, created.body[:300]
    resource = local.json(created)
    binary_id = resource["id"]
    assert resource["contentType"] == "application/pdf" and base64.b64decode(resource["data"]) == PDF
    assert resource["securityContext"] == {"reference": "Patient/p1"}
    assert created.headers["Location"].endswith(f"/Binary/{binary_id}/_history/1")

    raw = local.request("GET", f"/Binary/{binary_id}", headers=ACCEPT_PDF)
    assert raw.status == 200 and raw.body == PDF
    assert raw.headers["Content-Type"] == "application/pdf" and raw.headers["ETag"] == 'W/"1"'
    for accept in ({"Accept": "application/fhir+json"}, {"Accept": "*/*"}, {}):
        as_json = local.request("GET", f"/Binary/{binary_id}", headers=accept)
        assert as_json.status == 200 and local.json(as_json) == resource, accept
    assert local.request("GET", f"/Binary/{binary_id}/_history/1", headers=ACCEPT_PDF).body == PDF

    second = PDF.replace(b"1.7", b"2.0")
    updated = local.request("PUT", f"/Binary/{binary_id}", second, headers=RAW_PDF)
    assert updated.status == 200 and local.json(updated)["meta"]["versionId"] == "2"
    assert local.request("GET", f"/Binary/{binary_id}", headers=ACCEPT_PDF).body == second
    assert local.request("GET", f"/Binary/{binary_id}/_history/1", headers=ACCEPT_PDF).body == PDF
    history = local.json(local.request("GET", f"/Binary/{binary_id}/_history"))
    assert [base64.b64decode(e["resource"]["data"]) for e in history["entry"]] == [second, PDF]

    assert local.request("DELETE", f"/Binary/{binary_id}").status == 204
    gone = local.request("GET", f"/Binary/{binary_id}", headers=ACCEPT_PDF)
    assert gone.status == 410 and "deleted" in _outcome(local, gone)  # errors stay OperationOutcomes


def test_every_binary_body_is_sealed_in_the_object_bucket(local: InProcessStack) -> None:
    small = local.json(local.request("POST", "/Binary", b"tiny " + MARKER, headers={"Content-Type": "text/plain"}))
    local.request("POST", "/Binary", PDF, headers=RAW_PDF)
    (current, *_) = local.ddb._client.scan(TableName=get_settings().resources_table)["Items"]
    assert "obj" in current and "phi" not in current
    objects = _objects(local)
    assert len(objects) == 2 and all(key.startswith("acme/Binary/") for key in objects)
    everything = b"".join(objects.values())
    assert MARKER not in everything and base64.b64encode(PDF)[:40] not in everything
    assert local.request("GET", f"/Binary/{small['id']}", headers={"Accept": "text/plain"}).body == b"tiny " + MARKER


def test_a_binary_sent_as_fhir_json_reads_back_as_raw_content(local: InProcessStack) -> None:
    png = b"\x89PNG\r\n\x1a\n" + os.urandom(2000)
    resource = {"resourceType": "Binary", "contentType": "image/png", "data": base64.b64encode(png).decode()}
    created = local.json(local.request("POST", "/Binary", resource))
    raw = local.request("GET", f"/Binary/{created['id']}", headers={"Accept": "image/png"})
    assert raw.body == png and raw.headers["Content-Type"] == "image/png"
    updated = local.request("PUT", f"/Binary/{created['id']}", {**created, "contentType": "image/png"})
    assert updated.status == 200  # same content: no new version
    assert local.json(updated)["meta"]["versionId"] == "1"


def test_raw_content_is_only_sent_as_bytes_where_api_gateway_lets_it(local: InProcessStack) -> None:
    pdf = local.json(local.request("POST", "/Binary", PDF, headers=RAW_PDF))
    # text/plain is no binary media type: API Gateway would hand back base64 text labelled application/pdf.
    refused = local.request("GET", f"/Binary/{pdf['id']}", headers={"Accept": "text/plain"})
    assert refused.status == 406
    text = _outcome(local, refused)
    assert "application/pdf" in text and "application/fhir+json" in text
    xml = b"<ClinicalDocument>" + MARKER + b"</ClinicalDocument>"
    cda = local.json(local.request("POST", "/Binary", xml, headers={"Content-Type": "text/xml; charset=utf-8"}))
    assert cda["contentType"] == "text/xml; charset=utf-8"
    read = local.request("GET", f"/Binary/{cda['id']}", headers={"Accept": "text/xml"})
    assert read.status == 200 and read.body == xml and read.headers["Content-Type"].startswith("text/xml")
    # A FHIR content type is the resource, never raw content; XML is not spoken here.
    fhir_xml = {"Content-Type": "application/fhir+xml"}
    assert local.request("POST", "/Binary", b"<Binary/>", headers=fhir_xml).status == 415
    assert local.request("POST", "/Binary", PDF, headers={"Content-Type": "pdf"}).status == 415


def test_a_document_reference_pointing_at_a_binary_reads_back(local: InProcessStack) -> None:
    binary = local.json(local.request("POST", "/Binary", PDF, headers=RAW_PDF))
    document = {"resourceType": "DocumentReference", "status": "current", "content": [{"attachment": {
        "contentType": "application/pdf", "url": f"Binary/{binary['id']}", "size": len(PDF)}}]}
    created = local.json(local.request("POST", "/DocumentReference", document))
    attachment = local.json(local.request("GET", f"/DocumentReference/{created['id']}"))["content"][0]["attachment"]
    fetched = local.request("GET", f"/{attachment['url']}", headers={"Accept": attachment["contentType"]})
    assert fetched.status == 200 and fetched.body == PDF and len(fetched.body) == attachment["size"]


def test_binary_needs_binary_scopes(local: InProcessStack) -> None:
    created = local.json(local.request("POST", "/Binary", PDF, headers=RAW_PDF))
    assert local.request("GET", f"/Binary/{created['id']}", headers=ACCEPT_PDF, scope="user/Patient.read").status == 403
    assert local.request("GET", f"/Binary/{created['id']}", headers=ACCEPT_PDF, scope="user/Binary.read").body == PDF
    assert local.request("POST", "/Binary", PDF, headers=RAW_PDF, scope="user/Binary.read").status == 403
    assert local.request("GET", f"/Binary/{created['id']}", tenant="other", headers=ACCEPT_PDF).status == 404


# ---------- the size limit ----------
def test_the_largest_raw_binary_round_trips_and_one_byte_more_is_a_413(local: InProcessStack) -> None:
    limit = get_settings().max_body_bytes
    largest = limit // 4 * 3  # base64 in the event: 4 bytes per 3
    content = os.urandom(largest)
    created = local.request("POST", "/Binary", content, headers={"Content-Type": "application/octet-stream"})
    assert created.status == 201, created.body[:300]
    binary_id = local.json(created)["id"]
    read = local.request("GET", f"/Binary/{binary_id}", headers={"Accept": "application/octet-stream"})
    assert read.status == 200 and read.body == content
    assert len(local.request("GET", f"/Binary/{binary_id}").body) > limit  # the resource fits a response too

    before = _stored_counts(local)
    over = local.request("POST", "/Binary", content + b"x", headers={"Content-Type": "application/octet-stream"})
    assert over.status == 413
    text = _outcome(local, over)
    assert local.json(over)["issue"][0]["code"] == "too-costly"
    assert f"the limit is {limit}" in text and "base64" in text
    assert _stored_counts(local) == before


def test_a_json_body_at_the_limit_is_stored_and_one_byte_more_is_a_413(local: InProcessStack) -> None:
    limit = get_settings().max_body_bytes

    def document(size: int) -> bytes:
        """A DocumentReference whose body takes exactly `size` bytes in the Lambda event (a JSON string)."""
        base = {"resourceType": "DocumentReference", "status": "current", "description": "x",
                "content": [{"attachment": {"contentType": "application/pdf", "data": ""}}]}
        room = size - len(json.dumps(json.dumps(base)))
        data = base64.b64encode(os.urandom(room // 4 * 3)).decode()
        base["content"][0]["attachment"]["data"] = data
        base["description"] = "x" * (1 + room - len(data))
        body = json.dumps(base)
        assert len(json.dumps(body)) == size
        return body.encode()

    at_limit = local.request("POST", "/DocumentReference", document(limit))
    assert at_limit.status == 201, at_limit.body[:300]
    stored = local.json(at_limit)
    read = local.json(local.request("GET", f"/DocumentReference/{stored['id']}"))
    assert read == stored
    before = _stored_counts(local)
    over = local.request("POST", "/DocumentReference", document(limit + 1))
    assert over.status == 413 and f"the limit is {limit}" in _outcome(local, over)
    assert _stored_counts(local) == before


def test_beyond_what_lambda_accepts_the_gateway_answers_and_nothing_runs(local: InProcessStack) -> None:
    """A 5 MB raw Binary is 6.7 MB base64 in the event: Lambda refuses the invocation (AWS answers 502, not the
    function); over 10 MB API Gateway itself answers 413. Both are the template's OperationOutcomes."""
    five_mb = os.urandom(5 * 1024 * 1024)
    assert len(base64.b64encode(five_mb)) > LAMBDA_REQUEST_BYTES
    refused = local.request("POST", "/Binary", five_mb, headers={"Content-Type": "application/octet-stream"})
    assert refused.status == 502 and local.json(refused)["resourceType"] == "OperationOutcome"
    huge = local.request("POST", "/Binary", os.urandom(10 * 1024 * 1024 + 1),
                         headers={"Content-Type": "application/octet-stream"})
    assert huge.status == 413 and local.json(huge)["resourceType"] == "OperationOutcome"
    assert _stored_counts(local) == (0, 0, 0)
