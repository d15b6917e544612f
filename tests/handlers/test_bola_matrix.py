"""BOLA matrix: every data route × a patient-scoped token for Patient P × data of P and of another patient Q.

The world: P and Q, each with Observations (one updated twice, one deleted; one of P's moved to Q afterwards, one
of P's naming Q as performer), an Encounter and the server's Provenance. For each token (SMART v2
`patient/*.cruds`, v1 `patient/*.read`, and a mixed `patient/*.rs user/Practitioner.read`) every cell runs twice:
on P's ids (it must work where the scopes allow: the matrix is not vacuous) and on Q's ids, where

- no response carries any of Q's content or any Q id the request did not name (bodies and headers);
- every answer equals the answer for an id nobody has (status, body, version headers): no existence oracle;
- nothing of Q's changes (checked at the end against what an unrestricted token sees).

Cells cover read, vread, instance/type/system history, search (GET and POST, with and without a patient
parameter, Provenance), compartment search, $everything, _include/_revinclude (incl. :iterate), update
(incl. moves between patients), PATCH (incl. a `test` oracle), delete, conditional create/update/delete,
batch and transaction Bundles and POST Provenance. A meta-check holds the cells to the route table: a new
data route fails here until it has cells.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from esus_dev.codegen.routes import FUNCTIONS
from esus_dev.localstack.stack import GatewayResult
from tests.handlers.conftest import InProcessStack

SECRETS = ("Qzyxsecretname", "q-secret-value-8841", "+1 555 0987", "q-secret-identifier")
TOKENS = ("patient/*.cruds", "patient/*.read", "patient/*.rs user/Practitioner.read")
NO_DATA_ROUTES = {"AuthorizerFunction", "MetadataFunction", "OpenApiFunction", "SmartConfigurationFunction"}


@dataclass
class World:
    ids: dict[str, dict[str, str]]  # side ("P"/"Q") -> name -> id or value
    q_state: dict[str, Any] = field(default_factory=dict)  # what an unrestricted token sees of Q's data


def build_world(local: InProcessStack) -> World:
    def create(body: dict[str, Any]) -> dict[str, Any]:
        result = local.request("POST", f"/{body['resourceType']}", body)
        assert result.status == 201, result.body[:300]
        return dict(local.json(result))

    marker = uuid.uuid4().hex[:8]
    practitioner = create({"resourceType": "Practitioner", "name": [{"family": "Doc"}]})["id"]
    ids: dict[str, dict[str, str]] = {}
    for side, family, value, ident in (("P", "Pfamily", "p-value", "p-ident"),
                                       ("Q", SECRETS[0], SECRETS[1], SECRETS[3])):
        patient = create({"resourceType": "Patient", "name": [{"family": family}],
                          "identifier": [{"system": "urn:t", "value": f"{ident}-{marker}"}],
                          "telecom": [{"system": "phone", "value": SECRETS[2] if side == "Q" else "+1 555 0100"}]})
        pid = patient["id"]

        def observation(text: str, pid: str = pid, ident: str = ident, value: str = value) -> dict[str, Any]:
            return {"resourceType": "Observation", "status": "final", "code": {"text": f"shared-{marker}"},
                    "subject": {"reference": f"Patient/{pid}"}, "valueString": value,
                    "performer": [{"reference": f"Practitioner/{practitioner}"}],
                    "identifier": [{"system": "urn:o", "value": f"{ident}-{text}-{marker}"}]}

        obs = create(observation("obs"))
        changed = {**observation("obs"), "id": obs["id"], "status": "amended"}
        assert local.request("PUT", f"/Observation/{obs['id']}", changed).status == 200
        deleted = create(observation("gone"))["id"]
        assert local.request("DELETE", f"/Observation/{deleted}").status == 204
        doomed = create(observation("doomed"))["id"]
        encounter = create({"resourceType": "Encounter", "status": "finished",
                            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                            "subject": {"reference": f"Patient/{pid}"}})["id"]
        provenance = local.json(local.request("GET", f"/Provenance?target=Patient/{pid}"))["entry"][0]["resource"]["id"]
        ids[side] = {"patient": pid, "obs": obs["id"], "deleted": deleted, "doomed": doomed, "enc": encounter,
                     "prov": provenance, "obs_ident": f"{ident}-obs-{marker}", "family": family,
                     "practitioner": practitioner}
    # One of P's Observations moved to Q (judged on the current version: P no longer reaches it), and one of
    # P's naming Q as performer (P reaches it; an _include must not bring Q along).
    moved = create(_obs_for(ids["P"]["patient"], marker, "moved"))
    moved_now = {**moved, "subject": {"reference": f"Patient/{ids['Q']['patient']}"}}
    assert local.request("PUT", f"/Observation/{moved['id']}", moved_now).status == 200
    ids["Q"]["moved"] = moved["id"]
    ids["P"]["moved"] = create(_obs_for(ids["P"]["patient"], marker, "still"))["id"]
    pointing = create({**_obs_for(ids["P"]["patient"], marker, "pointing"),
                       "performer": [{"reference": f"Patient/{ids['Q']['patient']}"}]})
    ids["P"]["pointing"] = pointing["id"]
    ids["Q"]["pointing"] = ids["Q"]["obs"]
    world = World(ids)
    world.q_state = q_state(local, world)
    return world


def _obs_for(pid: str, marker: str, text: str) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": f"shared-{marker}"},
            "subject": {"reference": f"Patient/{pid}"},
            "identifier": [{"system": "urn:o", "value": f"{text}-{marker}"}]}


def q_state(local: InProcessStack, world: World) -> dict[str, Any]:
    """Q's resources as an unrestricted token sees them (status, version, content)."""
    q = world.ids["Q"]
    state = {}
    for resource_type, key in (("Patient", "patient"), ("Observation", "obs"), ("Observation", "deleted"),
                               ("Observation", "moved"), ("Encounter", "enc"), ("Provenance", "prov")):
        result = local.request("GET", f"/{resource_type}/{q[key]}")
        state[f"{resource_type}/{key}"] = (result.status, result.headers.get("ETag"), result.body)
    found = local.json(local.request("GET", f"/Observation?subject=Patient/{q['patient']}&_count=100"))
    state["observations"] = sorted(e["resource"]["id"] for e in found["entry"])
    return state


@dataclass(frozen=True)
class Cell:
    route: str  # the function (routes.py) that answers
    method: str
    path: str  # `{patient}`, `{obs}` ... are the side's ids
    body: Any = None
    headers: dict[str, str] | None = None
    letters: str = "r"  # what the cell needs (its 403 decision)
    p_status: int | tuple[int, ...] = 200  # what P's side answers when the scopes allow it
    p_contains: str | None = None  # P's side must show this (not vacuous)


def cells() -> list[Cell]:
    obs_body = {"resourceType": "Observation", "id": "{obs}", "status": "corrected", "code": {"text": "x"},
                "subject": {"reference": "Patient/{patient}"}}
    new_obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
               "subject": {"reference": "Patient/{patient}"},
               "identifier": [{"system": "urn:o", "value": "{obs_ident}"}]}
    json_patch = {"Content-Type": "application/json-patch+json"}
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    bundle_put = {"request": {"method": "PUT", "url": "Observation/{obs}"}, "resource": obs_body}
    return [
        Cell("ReadFunction", "GET", "/Patient/{patient}", p_contains="{family}"),
        Cell("ReadFunction", "GET", "/Observation/{obs}", p_contains="{obs}"),
        Cell("ReadFunction", "GET", "/Observation/{deleted}", p_status=404),  # deleted: out of reach, like unknown
        Cell("ReadFunction", "GET", "/Observation/{moved}", p_contains="{moved}"),
        Cell("ReadFunction", "GET", "/Encounter/{enc}", p_contains="{enc}"),
        Cell("ReadFunction", "GET", "/Provenance/{prov}", p_contains="{prov}"),
        Cell("VreadFunction", "GET", "/Patient/{patient}/_history/1", p_contains="{family}"),
        Cell("VreadFunction", "GET", "/Observation/{obs}/_history/2", p_contains="amended"),
        Cell("VreadFunction", "GET", "/Observation/{deleted}/_history/1", p_status=404),
        Cell("VreadFunction", "GET", "/Provenance/{prov}/_history/1", p_contains="{prov}"),
        Cell("HistoryFunction", "GET", "/Patient/{patient}/_history", p_contains="{family}"),
        Cell("HistoryFunction", "GET", "/Observation/{obs}/_history", p_contains="amended"),
        Cell("TypeHistoryFunction", "GET", "/Observation/_history", letters="s", p_status=403),
        Cell("SystemHistoryFunction", "GET", "/_history", letters="s", p_status=403),
        Cell("SearchFunction", "GET", "/Observation?subject=Patient/{patient}", letters="s", p_contains="{obs}"),
        Cell("SearchFunction", "GET", "/Observation?patient={patient}&_count=2", letters="s", p_contains="{obs}"),
        Cell("SearchFunction", "GET", "/Observation?identifier=urn:o|{obs_ident}", letters="s", p_contains="{obs}"),
        Cell("SearchFunction", "GET", "/Observation?_id={obs}", letters="s", p_contains="{obs}"),
        Cell("SearchFunction", "GET", "/Patient?_id={patient}", letters="s", p_contains="{family}"),
        Cell("SearchFunction", "GET", "/Patient?name={family}", letters="s", p_contains="{family}"),
        Cell("SearchFunction", "GET", "/Encounter?subject={patient}", letters="s", p_contains="{enc}"),
        Cell("SearchFunction", "GET", "/Provenance?target=Patient/{patient}", letters="s", p_contains="{prov}"),
        Cell("SearchFunction", "GET", "/Provenance?patient={patient}", letters="s", p_contains="{prov}"),
        Cell("SearchFunction", "GET", "/Provenance?target=Observation/{obs}", letters="s"),
        Cell("SearchFunction", "POST", "/Observation/_search", "patient={patient}", form, letters="s",
             p_contains="{obs}"),
        Cell("SearchFunction", "GET", "/Patient?_id={patient}&_revinclude=Provenance:target", letters="s",
             p_contains="{prov}"),
        Cell("SearchFunction", "GET", "/Patient?_id={patient}&_revinclude=Observation:subject"
                                      "&_include:iterate=Observation:performer", letters="s", p_contains="{obs}"),
        Cell("SearchFunction", "GET", "/Observation?_id={pointing}&_include=Observation:performer"
                                      "&_include=Observation:subject", letters="s", p_contains="{pointing}"),
        Cell("SearchFunction", "GET", "/Encounter?_id={enc}&_include=Encounter:subject"
                                      "&_revinclude:iterate=Observation:subject", letters="s", p_contains="{enc}"),
        Cell("CompartmentSearchFunction", "GET", "/Patient/{patient}/Observation", letters="s", p_contains="{obs}"),
        Cell("CompartmentSearchFunction", "GET", "/Patient/{patient}/Encounter?_include=Encounter:subject",
             letters="s", p_contains="{enc}"),
        Cell("CompartmentSearchFunction", "GET", "/Patient/{patient}/Provenance", letters="s", p_contains="{prov}"),
        Cell("EverythingFunction", "GET", "/Patient/{patient}/$everything?_count=50", p_contains="{enc}"),
        Cell("EverythingFunction", "GET", "/Patient/{patient}/$everything?_type=Observation,Practitioner",
             p_contains="{obs}"),
        Cell("UpdateFunction", "PUT", "/Observation/{obs}", obs_body, letters="u", p_contains="corrected"),
        Cell("UpdateFunction", "PUT", "/Observation/{obs}", obs_body, {"If-Match": 'W/"2"'}, letters="u",
             p_status=(200, 412)),
        Cell("UpdateFunction", "PUT", "/Observation/{obs}", {**obs_body, "subject": {"reference": "Patient/{other}"}},
             letters="u", p_status=403),  # P's side: a move out of the compartment
        Cell("UpdateFunction", "PUT", "/Observation/{deleted}", {**obs_body, "id": "{deleted}"}, letters="cu",
             p_status=404),  # no revival (nor update-as-create) for a confined caller
        Cell("PatchFunction", "PATCH", "/Observation/{obs}", [{"op": "replace", "path": "/status", "value": "final"}],
             json_patch, letters="ru", p_contains="{obs}"),
        Cell("PatchFunction", "PATCH", "/Observation/{obs}", [{"op": "test", "path": "/valueString",
                                                               "value": SECRETS[1]}], json_patch, letters="ru",
             p_status=422),
        Cell("ConditionalUpdateFunction", "PUT", "/Observation?identifier=urn:o|{obs_ident}",
             {k: v for k, v in new_obs.items()}, letters="us", p_status=(200, 201)),
        Cell("CreateFunction", "POST", "/Observation", new_obs, {"If-None-Exist": "identifier=urn:o|{obs_ident}"},
             letters="cs", p_status=(200, 201)),
        Cell("CreateFunction", "POST", "/Observation", {k: v for k, v in new_obs.items() if k != "identifier"},
             letters="c", p_status=201),
        Cell("CreateFunction", "POST", "/Provenance", {
            "resourceType": "Provenance", "target": [{"reference": "Patient/{patient}"},
                                                     {"reference": "Observation/{obs}"}],
            "agent": [{"who": {"reference": "Organization/1"}}]}, letters="c", p_status=201),
        Cell("BundleFunction", "POST", "", {"resourceType": "Bundle", "type": "batch", "entry": [
            bundle_put, {"request": {"method": "DELETE", "url": "Observation/{deleted}"}},
            {"request": {"method": "POST", "url": "Observation", "ifNoneExist": "identifier=urn:o|{obs_ident}"},
             "resource": new_obs}]}, {"Prefer": "return=representation"}, letters="", p_status=200),  # per entry
        Cell("BundleFunction", "POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [bundle_put]},
             {"Prefer": "return=representation"}, letters="u", p_status=200),
        Cell("BundleFunction", "POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": [
            {"request": {"method": "DELETE", "url": "Observation/{obs}"}}]}, letters="d", p_status=(200, 404)),
        Cell("ConditionalDeleteFunction", "DELETE", "/Observation?identifier=urn:o|{obs_ident}", letters="ds",
             p_status=204),
        Cell("DeleteFunction", "DELETE", "/Observation/{doomed}", letters="d", p_status=(204, 404)),
    ]


def fill(value: Any, names: dict[str, str]) -> Any:
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {fill(k, names): fill(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, names) for v in value]
    return value


def send(local: InProcessStack, cell: Cell, names: dict[str, str], scope: str, patient: str) -> GatewayResult:
    path = fill(cell.path, names)
    if "?" in path:
        base, query = path.split("?", 1)
        path = base + "?" + "&".join(quote(part, safe="=:/,") for part in query.split("&"))
    headers = {"Content-Type": "application/fhir+json", **fill(cell.headers or {}, names)}
    body = fill(cell.body, names)
    if isinstance(body, str):  # a form body
        return local.stack.handle(cell.method, f"/fhir{path}", {
            **headers, "Authorization": "Bearer " + _token(local, scope, patient), "Host": "fhir.test"},
            body.encode(), "fhir.test")
    return local.request(cell.method, path, body, headers=headers, scope=scope, patient=patient)


def _token(local: InProcessStack, scope: str, patient: str) -> str:
    from pathlib import Path

    from esus_dev.localstack.devkeys import mint_token

    return mint_token("acme", scope, "Practitioner/1", directory=Path(local.dev_dir), patient=patient)


def granted(scope: str, resource_type: str) -> set[str]:
    """The letters the token's scopes grant on a type (anywhere or in the compartment)."""
    v1 = {"read": "rs", "write": "cud", "*": "cruds"}
    letters: set[str] = set()
    for one in scope.split():
        _, _, rest = one.partition("/")
        scope_type, _, access = rest.partition(".")
        if scope_type in ("*", resource_type):
            letters |= set(v1.get(access, access))
    return letters


def cell_type(cell: Cell) -> str:
    if cell.route == "BundleFunction" or cell.route == "ConditionalDeleteFunction":
        return "Observation"
    if cell.route == "SystemHistoryFunction":
        return "*"
    if cell.route == "EverythingFunction":
        return "Patient"
    path = cell.path.split("?")[0].strip("/").split("/")
    return path[2] if cell.route == "CompartmentSearchFunction" else path[0]


def normalised(result: GatewayResult, replace: dict[str, str]) -> tuple[int, Any, tuple[str, ...]]:
    text = result.body.decode()
    for old, new in replace.items():
        text = text.replace(old, new)
    body = json.loads(text) if text else None
    if isinstance(body, dict):
        body.pop("timestamp", None)
    return result.status, body, tuple(sorted(h for h in result.headers if h in ("ETag", "Location", "Last-Modified")))


def test_no_cell_leaks_another_patients_data(local: InProcessStack) -> None:
    world = build_world(local)
    p, q = world.ids["P"], world.ids["Q"]
    q_ids = {v for k, v in q.items() if k not in ("family", "obs_ident", "practitioner")}
    failures: list[str] = []
    for cell in cells():  # every token reads before any writes (the write cells come last)
        for scope in TOKENS:
            what = f"[{scope}] {cell.method} {cell.path}"
            allowed = set(cell.letters) <= granted(scope, cell_type(cell))
            # P's side: the scopes decide, and what they allow works (the matrix is not vacuous).
            mine = send(local, cell, {**p, "other": q["patient"]}, scope, p["patient"])
            if not allowed:
                if mine.status != 403:
                    failures.append(f"{what} on P: {mine.status}, expected 403 (scopes)")
            else:
                expected = cell.p_status if isinstance(cell.p_status, tuple) else (cell.p_status,)
                if mine.status not in expected:
                    failures.append(f"{what} on P: {mine.status} {mine.body[:160]!r}, expected {expected}")
                elif cell.p_contains and fill(cell.p_contains, p).encode() not in mine.body:
                    failures.append(f"{what} on P: does not show {cell.p_contains}")
            # Q's side: nothing of Q's, and the same answer as for ids nobody has.
            names = {**q, "other": p["patient"]}
            theirs = send(local, cell, names, scope, p["patient"])
            # P's own Observation names Q as performer: on P's side Q's id may show, never Q's content.
            for side, result, used, hidden in (("P", mine, {**p, "other": q["patient"]}, q_ids - {q["patient"]}),
                                               ("Q", theirs, names, q_ids)):
                request_text = json.dumps(fill([cell.path, cell.body, cell.headers], used))
                leaked = [s for s in (*SECRETS, *hidden) if s not in request_text and (
                    s.encode() in result.body or any(s in v for v in result.headers.values()))]
                if leaked:
                    failures.append(f"{what} on {side}: leaks {leaked} ({result.status}) {result.body[:200]!r}")
            if theirs.status < 400 and cell.method != "GET" and cell.route != "SearchFunction":
                continue  # a write that succeeded wrote P's data (checked below: Q's is unchanged)
            fresh = {k: (str(uuid.uuid4()) if v in q_ids else v) for k, v in names.items()}
            unknown = send(local, cell, fresh, scope, p["patient"])
            back = {fresh[k]: names[k] for k in fresh if fresh[k] != names[k]}
            if normalised(unknown, back) != normalised(theirs, {}):
                failures.append(f"{what} on Q: {theirs.status} {theirs.body[:160]!r} differs from an unknown id's "
                                f"{unknown.status} {unknown.body[:160]!r}")
    if q_state(local, world) != world.q_state:
        failures.append("a patient-scoped token changed Q's data")
    assert not failures, "\n".join(failures)


def test_the_matrix_covers_every_data_route() -> None:
    routes = {f.logical_id for f in FUNCTIONS if f.routes} - NO_DATA_ROUTES
    covered = {c.route for c in cells()}
    assert routes <= covered, f"routes without BOLA cells: {sorted(routes - covered)}"

