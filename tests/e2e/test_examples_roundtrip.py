"""The official FHIR R4 examples round-trip: create, read back equal apart from id and the server's
meta.versionId/meta.lastUpdated (their tags, security labels, profiles and source are kept). Those too large for
a DynamoDB item (DiagnosticReport-gingival-mass, ~750 KB with its embedded PDF) keep their sealed body in the
object bucket."""

from __future__ import annotations

import json

import pytest

from tests.conftest import EXAMPLES, RunningStack, new_tenant, strip_server_fields

EXAMPLE_FILES = sorted(p for p in EXAMPLES.glob("*.json") if not p.name.startswith("Provenance-"))
LARGER_THAN_AN_ITEM = "DiagnosticReport-gingival-mass.json"


def _client_meta(resource: dict) -> dict:
    return {k: v for k, v in resource.get("meta", {}).items() if k not in ("versionId", "lastUpdated")}


@pytest.mark.skipif(not EXAMPLE_FILES, reason="../shared/fhir-examples/r4 is not next to the repo")
def test_every_official_example_round_trips(stack: RunningStack) -> None:
    failures = []
    with stack.client(new_tenant()) as client:
        for path in EXAMPLE_FILES:
            example = json.loads(path.read_text(encoding="utf-8"))
            created = client.post(f"/{example['resourceType']}", json=example)
            if created.status_code != 201:
                failures.append(f"{path.name}: {created.status_code} {created.text[:200]}")
                continue
            read = client.get(f"/{example['resourceType']}/{created.json()['id']}").json()
            if strip_server_fields(read) != strip_server_fields(example):
                failures.append(f"{path.name}: read back differs")
            if _client_meta(read) != _client_meta(example):
                failures.append(f"{path.name}: meta differs: {read.get('meta')} vs {example.get('meta')}")
            if [k for k in read if k not in ("id", "meta")] != [k for k in example if k not in ("id", "meta")]:
                failures.append(f"{path.name}: element order changed")
    assert len(EXAMPLE_FILES) > 100 and LARGER_THAN_AN_ITEM in {p.name for p in EXAMPLE_FILES}
    assert len((EXAMPLES / LARGER_THAN_AN_ITEM).read_bytes()) > 400_000
    assert not failures, "\n".join(failures)
