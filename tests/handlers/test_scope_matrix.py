"""Scopes × routes: every route answers exactly what the README's scope table allows.

The oracle is the README table (the documented contract), parsed here, and a small independent reading of
SMART scopes. For every generated scope set (SMART v1 and v2, c/r/u/d/s subsets, types and wildcards,
user/system/patient contexts, with or without a `patient` launch context naming the stored Patient) and every
route: a route the scopes do not allow answers 403 with an OperationOutcome that carries none of the resource,
no version headers, and the same answer whether or not the target exists; a route they allow never answers
403, except what the README's patient-scope rules refuse to a token whose letters come from patient/ scopes
(a write that would land outside the compartment, type-level history).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from esus.security.auth import INTERACTION_SCOPES
from esus_dev.localstack.stack import GatewayResult
from tests.conftest import REPO
from tests.handlers.conftest import InProcessStack

SECRET_NAME = "Zyxwquinn"  # a value only the stored Patient holds
V1 = {"read": "rs", "write": "cud", "*": "cruds"}


def readme_table() -> dict[str, set[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("<!-- scope-table:start -->", 1)[1].split("<!-- scope-table:end -->", 1)[0]
    table: dict[str, set[str]] = {}
    for line in block.strip().splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        needs = cells[2].split(";")[0]  # "also c when it creates" is tested separately below
        table[cells[0].strip("`")] = set(re.findall(r"`([cruds])`", needs))
    return table


def test_readme_table_is_the_code_table() -> None:
    assert readme_table() == {name: set(letters) for name, letters in INTERACTION_SCOPES.items()}


COMPARTMENT_TYPES = {"Patient"}  # of the probed types; "*" (system level) never is


def granted(scopes: list[str], resource_type: str, patient: str | None = None, contexts: tuple[str, ...] = (
        "user", "system", "patient")) -> set[str]:
    """Letters granted on a type: patient/ scopes count only with a launch context, on compartment types."""
    letters: set[str] = set()
    for scope in scopes:
        context, _, rest = scope.partition("/")
        scope_type, _, access = rest.partition(".")
        if context not in contexts or scope_type not in ("*", resource_type):
            continue
        if context == "patient" and (patient is None or resource_type not in COMPARTMENT_TYPES):
            continue
        letters |= set(V1.get(access, access))
    return letters


SCOPE = st.builds(
    lambda context, scope_type, access: f"{context}/{scope_type}.{access}",
    st.sampled_from(["user", "system", "patient"]),
    st.sampled_from(["Patient", "Observation", "*"]),
    st.one_of(st.sampled_from(["read", "write", "*"]),
              st.sets(st.sampled_from("cruds"), min_size=1).map(lambda s: "".join(c for c in "cruds" if c in s))),
)
SCOPES = st.lists(SCOPE, min_size=1, max_size=3)


@dataclass
class Probe:
    interaction: str
    method: str
    path: str
    body: Any = None
    headers: dict[str, str] | None = None
    extra: str = ""  # letters needed beyond the interaction's (an update that creates needs c)
    scope_type: str = "Patient"
    # Refused (403) when these letters come only from patient/ scopes (the README's patient-scope rules): a
    # write that would land outside the compartment (a new Patient is not the token's patient), creating under
    # an id of its choosing (once the update itself is allowed anywhere), type-level history.
    refused_when_confined: Callable[[set[str]], bool] = lambda confined: False
    # When the interaction's own letters are confined to the compartment, the server never creates here (no
    # update-as-create for a confined update: an unknown id is a 404), so `extra` is not needed.
    no_extra_when_confined: bool = False


def probes(pid: str, doomed: str, marker: str) -> list[Probe]:
    fresh = str(uuid.uuid4())
    patient = {"resourceType": "Patient", "identifier": [{"system": "urn:t", "value": marker}]}
    return [
        Probe("create", "POST", "/Patient", {"resourceType": "Patient"},
              refused_when_confined=lambda confined: "c" in confined),
        Probe("conditional-create", "POST", "/Patient", patient,
              {"If-None-Exist": f"identifier=urn:t|{marker}", "Prefer": "return=representation"}),
        Probe("read", "GET", f"/Patient/{pid}"),
        Probe("vread", "GET", f"/Patient/{pid}/_history/1"),
        Probe("history-instance", "GET", f"/Patient/{pid}/_history"),
        Probe("update", "PUT", f"/Patient/{pid}", {**patient, "id": pid, "active": True}),
        Probe("update", "PUT", f"/Patient/{fresh}", {"resourceType": "Patient", "id": fresh}, extra="c",
              refused_when_confined=lambda confined: "c" in confined and "u" not in confined,
              no_extra_when_confined=True),
        Probe("patch", "PATCH", f"/Patient/{pid}", [], {"Content-Type": "application/json-patch+json"}),
        Probe("conditional-update", "PUT", f"/Patient?identifier=urn:t|{marker}",
              {**patient, "active": False}),
        Probe("conditional-update", "PUT", f"/Patient?identifier=urn:t|none-{marker}",
              {"resourceType": "Patient"}, extra="c", refused_when_confined=lambda confined: "c" in confined),
        Probe("conditional-delete", "DELETE", f"/Patient?identifier=urn:t|none-{marker}"),
        Probe("search-type", "GET", f"/Patient?identifier=urn:t|{marker}"),
        Probe("history-type", "GET", "/Patient/_history", refused_when_confined=lambda confined: "s" in confined),
        Probe("history-system", "GET", "/_history", scope_type="*"),
        Probe("delete", "DELETE", f"/Patient/{doomed}"),
    ]


def assert_refused(result: GatewayResult, what: str) -> None:
    assert result.status == 403, (what, result.status, result.body[:200])
    body = json.loads(result.body)
    assert body["resourceType"] == "OperationOutcome" and body["issue"][0]["code"] == "forbidden", what
    assert SECRET_NAME.encode() not in result.body, what
    assert not {"ETag", "Location", "Last-Modified"} & set(result.headers), (what, result.headers)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(scopes=SCOPES, with_patient=st.booleans())
@example(scopes=["patient/*.cruds"], with_patient=True)  # every interaction confined to the compartment
@example(scopes=["patient/Patient.rs"], with_patient=False)  # patient/ scopes without a launch context
@example(scopes=["user/Patient.u", "patient/Patient.cs"], with_patient=True)  # mixed: union, per letter
@example(scopes=["patient/Patient.cud", "user/Patient.rs"], with_patient=True)
def test_every_route_answers_what_the_scopes_allow(local: InProcessStack, scopes: list[str],
                                                   with_patient: bool) -> None:
    marker = uuid.uuid4().hex
    stored = {"resourceType": "Patient", "name": [{"family": SECRET_NAME}],
              "identifier": [{"system": "urn:t", "value": marker}]}
    pid = local.json(local.request("POST", "/Patient", stored))["id"]
    doomed = local.json(local.request("POST", "/Patient", {"resourceType": "Patient"}))["id"]
    scope = " ".join(scopes)
    patient = pid if with_patient else None  # the launch context: the stored Patient's compartment
    for probe in probes(pid, doomed, marker):
        own = set(INTERACTION_SCOPES[probe.interaction])
        own_confined = own <= granted(scopes, probe.scope_type, patient) and not own <= granted(
            scopes, probe.scope_type, contexts=("user", "system"))
        needed = own | (set() if probe.no_extra_when_confined and own_confined else set(probe.extra))
        allowed = needed <= granted(scopes, probe.scope_type, patient)
        confined = needed - granted(scopes, probe.scope_type, contexts=("user", "system"))
        if allowed and confined and probe.refused_when_confined(confined):
            allowed = False
        what = f"{scope} (patient={patient}): {probe.method} {probe.path}"
        headers = {"Content-Type": "application/fhir+json", **(probe.headers or {})}
        result = local.request(probe.method, probe.path, probe.body, headers=headers, scope=scope, patient=patient)
        if allowed:
            assert result.status != 403, (what, result.body[:200])
        else:
            assert_refused(result, what)
            if probe.method == "GET" and probe.path.startswith(f"/Patient/{pid}"):
                unknown = probe.path.replace(pid, str(uuid.uuid4()))
                other = local.request("GET", unknown, headers=headers, scope=scope, patient=patient)
                assert (other.status, json.loads(other.body)) == (result.status, json.loads(result.body)), what


def test_an_update_that_would_create_stores_nothing_without_c(local: InProcessStack) -> None:
    fresh = str(uuid.uuid4())
    result = local.request("PUT", f"/Patient/{fresh}", {"resourceType": "Patient", "id": fresh},
                           scope="user/Patient.u")
    assert_refused(result, "update-as-create")
    assert local.request("GET", f"/Patient/{fresh}").status == 404
    deleted = local.json(local.request("POST", "/Patient", {"resourceType": "Patient"}))["id"]
    assert local.request("DELETE", f"/Patient/{deleted}").status == 204
    revive = local.request("PUT", f"/Patient/{deleted}", {"resourceType": "Patient", "id": deleted},
                           scope="user/Patient.u", headers={"If-Match": 'W/"2"'})
    assert_refused(revive, "revival with If-Match")
    assert local.request("GET", f"/Patient/{deleted}").status == 410


BUNDLE_CASES = [
    # (scope, entry, allowed)
    ("user/Patient.c", {"request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:t|{m}"}},
     False),
    ("user/Patient.cs", {"request": {"method": "POST", "url": "Patient", "ifNoneExist": "identifier=urn:t|{m}"}},
     True),
    ("user/Patient.c", {"request": {"method": "POST", "url": "Patient"}}, True),
    ("user/Patient.u", {"request": {"method": "PUT", "url": "Patient/{new}"}}, False),
    ("user/Patient.cu", {"request": {"method": "PUT", "url": "Patient/{new}"}}, True),
    ("user/Patient.u", {"request": {"method": "PUT", "url": "Patient/{pid}"}}, True),
    ("user/Patient.cru", {"request": {"method": "DELETE", "url": "Patient/{pid}"}}, False),
    ("user/Patient.d", {"request": {"method": "DELETE", "url": "Patient/{pid}"}}, True),
]


@pytest.mark.parametrize("kind", ["batch", "transaction"])
@pytest.mark.parametrize(("scope", "entry", "allowed"), BUNDLE_CASES)
def test_bundle_entries_need_their_stand_alone_scopes(
    local: InProcessStack, kind: str, scope: str, entry: dict[str, Any], allowed: bool,
) -> None:
    marker = uuid.uuid4().hex
    stored = {"resourceType": "Patient", "name": [{"family": SECRET_NAME}],
              "identifier": [{"system": "urn:t", "value": marker}]}
    pid = local.json(local.request("POST", "/Patient", stored))["id"]
    new = str(uuid.uuid4())
    request = {k: v.format(m=marker, new=new, pid=pid) for k, v in entry["request"].items()}
    bundle_entry: dict[str, Any] = {"request": request}
    if request["method"] != "DELETE":
        resource_id = request["url"].split("/")[1] if "/" in request["url"] else None
        bundle_entry["resource"] = {**stored, **({"id": resource_id} if resource_id else {})}
    bundle = {"resourceType": "Bundle", "type": kind, "entry": [bundle_entry]}
    result = local.request("POST", "", bundle, scope=scope, headers={"Prefer": "return=representation"})
    if kind == "transaction" and not allowed:
        assert_refused(result, f"{kind} {scope} {request}")
    else:
        assert result.status == 200, result.body[:300]
        response_entry = local.json(result)["entry"][0]
        status = response_entry["response"]["status"]
        if allowed:
            assert not status.startswith("403"), (scope, request, status)
        else:
            assert status.startswith("403"), (scope, request, status)
            assert SECRET_NAME.encode() not in result.body and "resource" not in response_entry
    # Nothing was written by a refused entry: the stored Patient is still version 1 and `new` is unknown.
    current = local.json(local.request("GET", f"/Patient/{pid}"))
    if not allowed:
        assert current["meta"]["versionId"] == "1"
        assert local.request("GET", f"/Patient/{new}").status == 404
