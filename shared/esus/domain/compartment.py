"""The Patient compartment (FHIR R4 CompartmentDefinition/patient): which resources belong to a patient.

The membership table (`compartment_patient_r4.json`) is generated from the official definition by
`python -m esus_dev.codegen.gen_compartment`: per type, the reference search parameters that link a resource
to its patient. A resource is in Patient P's compartment when any of them references Patient/P (Patient P
itself always is). Membership is judged on the content given, which callers take from the CURRENT version.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from esus.domain.fhir import PROVENANCE, REFERENCE_PATTERN
from esus.domain.search_params import params_for
from esus.errors import NotFound

if TYPE_CHECKING:
    from esus.domain.search_semantics import Criterion
    from esus.security.auth import Principal

TABLE = Path(__file__).with_name("compartment_patient_r4.json")
PATIENT = "Patient"
COMPARTMENT_DEFINITION = "http://hl7.org/fhir/CompartmentDefinition/patient"
# What lets a caller see a resource directly: reading it (r) or finding it by search (s).
SEE = frozenset("rs")


@lru_cache(maxsize=1)
def _table() -> dict[str, tuple[str, ...]]:
    raw = json.loads(TABLE.read_text(encoding="utf-8"))
    return {resource_type: tuple(codes) for resource_type, codes in raw["resources"].items()}


def compartment_types() -> frozenset[str]:
    """The types that can be in a patient's compartment."""
    return frozenset(_table())


def compartment_params(resource_type: str) -> tuple[str, ...]:
    """The reference parameters of `resource_type` that link it to a patient (empty: never in a compartment)."""
    return _table().get(resource_type, ())


def in_compartment(patient_id: str, resource_type: str, resource: dict[str, Any]) -> bool:
    if resource_type == PATIENT and resource.get("id") == patient_id:
        return True
    if resource_type == PROVENANCE:  # its `patient` parameter: the targets that are Patients
        return f"{PATIENT}/{patient_id}" in _references(t.get("reference") for t in _dicts(resource.get("target")))
    return patient_id in compartment_patients(resource_type, resource)


def compartment_patients(resource_type: str, resource: dict[str, Any]) -> set[str]:
    """The ids of the Patients whose compartment this content is in through its type's compartment parameters (a
    Patient is also in its own: not listed here)."""
    from esus.domain.search_semantics import extract, reference_values  # FHIRPath: not for the authorizer

    offered = params_for(resource_type)
    prefix = f"{PATIENT}/"
    return {reference[len(prefix):] for code in compartment_params(resource_type)
            for value in extract(offered[code], resource)
            for reference in reference_values(offered[code], value) if reference.startswith(prefix)}


def patients_named(criteria: Iterable[Criterion]) -> set[str]:
    """The ids of the Patients a search's reference parameters name (`subject=Patient/1`, `patient=1`)."""
    return {reference.split("/", 1)[1] for criterion in criteria if criterion.param.type == "reference"
            for value in criterion.values for reference in value.references if reference.startswith(f"{PATIENT}/")}


def refuse_other_patients(named: Iterable[str], patient_id: str) -> None:
    """A patient-confined search naming another patient is answered as if that patient did not exist."""
    others = sorted(set(named) - {patient_id})
    if others:
        raise NotFound(f"{PATIENT}/{others[0][:64]} is not known")


def visible(principal: Principal, resource_type: str, resource: dict[str, Any]) -> bool:
    """May the caller see this resource directly (read it or find it by search)? Anywhere with a user/ or
    system/ scope; with only patient/ scopes, when it is in the token's patient's compartment."""
    if principal.granted(resource_type) & SEE:
        return True
    return bool(principal.granted_in_compartment(resource_type) & SEE) and principal.patient is not None \
        and in_compartment(principal.patient, resource_type, resource)


def may_see_type(principal: Principal, resource_type: str) -> bool:
    """Can the caller see any resource of this type at all (before reading anything)?"""
    return bool((principal.granted(resource_type) | principal.granted_in_compartment(resource_type)) & SEE)


def _references(values: Iterable[Any]) -> set[str]:
    found = set()
    for value in values:
        match = REFERENCE_PATTERN.match(value.strip()) if isinstance(value, str) else None
        if match:
            found.add(f"{match.group('type')}/{match.group('id')}")
    return found


def _dicts(value: Any) -> list[dict[str, Any]]:
    return [v for v in value if isinstance(v, dict)] if isinstance(value, list) else []
