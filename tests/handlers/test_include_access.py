"""_include/_revinclude obey the caller's scopes and tenant: nothing is included that it could not read or find
directly (user/ scopes per type, r or s), nor anything of another tenant with the same ids."""

from __future__ import annotations

from typing import Any

import pytest

from tests.handlers.conftest import InProcessStack


def included(local: InProcessStack, path: str, scope: str, tenant: str = "acme") -> set[str]:
    result = local.request("GET", path, scope=scope, tenant=tenant)
    assert result.status == 200, result.body[:300]
    return {e["resource"]["resourceType"] for e in local.json(result)["entry"] if e["search"]["mode"] == "include"}


@pytest.fixture
def observation(local: InProcessStack) -> dict[str, Any]:
    patient = local.json(local.request("POST", "/Patient", {"resourceType": "Patient", "name": [{"family": "Inc"}]}))
    body = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": f"Patient/{patient['id']}"}}
    return dict(local.json(local.request("POST", "/Observation", body)))


@pytest.mark.parametrize(("scope", "expected"), [
    ("user/Observation.rs", set()),
    ("user/Observation.rs user/Patient.r", {"Patient"}),  # readable directly
    ("user/Observation.rs user/Patient.s", {"Patient"}),  # findable directly
    ("user/Observation.rs user/Patient.cud", set()),
    ("user/*.read", {"Patient", "Provenance"}),
    ("system/Observation.s system/Provenance.s", {"Provenance"}),
])
def test_includes_need_read_or_search_on_the_included_type(local: InProcessStack, observation: dict[str, Any],
                                                            scope: str, expected: set[str]) -> None:
    path = (f"/Observation?_id={observation['id']}&_include=Observation:subject"
            "&_revinclude=Provenance:target")
    assert included(local, path, scope) == expected


def test_includes_stay_in_the_tenant(local: InProcessStack, observation: dict[str, Any]) -> None:
    # Another tenant holds a Patient and an Observation with the same ids as acme's, and a Provenance each.
    subject = observation["subject"]["reference"].split("/")[1]
    other = {"resourceType": "Patient", "id": subject, "name": [{"family": "Elsewhere"}]}
    assert local.request("PUT", f"/Patient/{subject}", other, tenant="globex").status == 201
    copy = {k: v for k, v in observation.items() if k != "meta"}
    assert local.request("PUT", f"/Observation/{observation['id']}", copy, tenant="globex").status == 201
    result = local.request("GET", f"/Observation?_id={observation['id']}&_include=Observation:subject"
                                  "&_revinclude=Provenance:target")
    body = local.json(result)
    assert b"Elsewhere" not in result.body
    provenance = [e["resource"] for e in body["entry"] if e["resource"]["resourceType"] == "Provenance"]
    assert len(provenance) == 1  # acme's create only, not globex's upsert
    assert provenance[0]["agent"][-1]["onBehalfOf"]["reference"] == "Organization/acme"
