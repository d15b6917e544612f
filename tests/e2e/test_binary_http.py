"""Binary over HTTP against the local stack (its API Gateway emulation of binary media types and Lambda's 6 MB
payload): raw bytes in, raw bytes out, the largest raw Binary the API takes round-trips, and beyond it the 413
is an OperationOutcome."""

from __future__ import annotations

import os

from esus.limits import DEFAULT_MAX_BODY_BYTES
from tests.conftest import RunningStack, new_tenant

LARGEST_RAW = DEFAULT_MAX_BODY_BYTES // 4 * 3  # 4,620,288 bytes: base64 in the Lambda event


def test_the_largest_raw_binary_round_trips_over_http(stack: RunningStack) -> None:
    content = b"%PDF-1.7\n" + os.urandom(LARGEST_RAW - 9)
    with stack.client(new_tenant()) as client:
        created = client.post("/Binary", content=content, headers={"Content-Type": "application/pdf"})
        assert created.status_code == 201, created.text[:300]
        location = created.headers["Location"].split("/fhir/", 1)[1].rsplit("/_history", 1)[0]
        raw = client.get(f"/{location}", headers={"Accept": "application/pdf"})
        assert raw.status_code == 200 and raw.headers["Content-Type"] == "application/pdf"
        assert raw.content == content
        resource = client.get(f"/{location}", headers={"Accept": "application/fhir+json"}).json()
        assert resource["resourceType"] == "Binary" and resource["contentType"] == "application/pdf"

        over = client.post("/Binary", content=content + b"!", headers={"Content-Type": "application/pdf"})
        assert over.status_code == 413
        outcome = over.json()
        assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["code"] == "too-costly"
        assert f"the limit is {DEFAULT_MAX_BODY_BYTES}" in outcome["issue"][0]["diagnostics"]
        listed = client.get("/Binary").json()
        assert listed["total"] == 1  # nothing of the refused one was stored
