"""The generated FHIRPath plans answer exactly what fhirpathpy answers (same values, same order), on real data: every
official R4 example, every resource of the Synthea corpus, and hand-made corner cases (choice types, primitive
extensions, unions with duplicates, `where` on a repeated element)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from esus.domain import search_semantics
from esus.domain.search_params import SearchParam, params_for, searchable_types
from tests.conftest import EXAMPLES, SYNTHEA, nested_resources

SYNTHEA_FILES = sorted(SYNTHEA.glob("*.json"))
if not os.environ.get("ESUS_FULL_CORPUS"):
    SYNTHEA_FILES = SYNTHEA_FILES[:4]  # `make test-full` walks all of them

CORNER_CASES: list[dict[str, Any]] = [
    {"resourceType": "Patient", "deceasedDateTime": "2020-01-01"},
    {"resourceType": "Patient", "deceasedBoolean": False},
    {"resourceType": "Patient", "deceasedBoolean": True},
    {"resourceType": "Patient", "_deceasedBoolean": {"extension": [{"url": "http://x", "valueCode": "unknown"}]}},
    {"resourceType": "Patient", "birthDate": "1970", "_birthDate": {"id": "b", "extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
         "valueDateTime": "1970-01-01T10:00:00Z"}]}},
    {"resourceType": "Patient", "name": [{"given": ["Ann", None, "Ann"], "_given": [None, {"extension": [
        {"url": "http://x", "valueString": "y"}]}, None], "family": "Ng"}, {"family": "Ng", "given": ["Ann"]}],
     "telecom": [{"system": "email", "value": "a@x.org"}, {"value": "no-system"},
                 {"system": "email", "_system": {"id": "s"}, "value": "b@x.org"},
                 {"system": "phone", "value": "555"}, {"system": "email", "value": "a@x.org"}],
     "address": [{"city": "Oslo", "line": ["1", "2"]}, {"city": "Oslo", "line": ["1", "2"]}]},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "high",
     "component": [{"code": {"text": "a"}, "valueQuantity": {"value": 1, "unit": "mg"}},
                   {"code": {"text": "b"}, "valueCodeableConcept": {"text": "pos"}},
                   {"code": {"text": "c"}, "valueQuantity": {"value": 1, "unit": "mg"}}]},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
     "valueCodeableConcept": {"text": "neg", "coding": [{"code": "n"}]}, "effectivePeriod": {"start": "2020"}},
    {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 2},
     "_valueQuantity": {"extension": [{"url": "http://x"}]}},
    {"resourceType": "Condition", "subject": {"reference": "Patient/1"}, "onsetAge": {"value": 40},
     "abatementString": "gone"},
    {"resourceType": "ActivityDefinition", "status": "draft", "useContext": [
        {"code": {"code": "focus"}, "valueCodeableConcept": {"text": "a"}},
        {"code": {"code": "age"}, "valueRange": {"low": {"value": 1}}}],
     "relatedArtifact": [{"type": "derived-from", "resource": "http://a"}, {"type": "citation", "resource": "b"}]},
]




def _corpus() -> Iterator[dict[str, Any]]:
    yield from CORNER_CASES
    for path in [*sorted(EXAMPLES.glob("*.json")), *SYNTHEA_FILES]:
        yield from nested_resources(json.loads(path.read_text(encoding="utf-8")))


def _by_fhirpathpy(param: SearchParam, resource: dict[str, Any]) -> list[Any]:
    try:
        values = search_semantics._compiled(param.expression)(resource)
    except Exception:  # noqa: BLE001 (as extract: fhirpathpy raises bare Exceptions on data it cannot walk)
        return []
    return [v for v in values if v is not None]


def test_almost_every_parameter_has_a_plan() -> None:
    params = [p for t in searchable_types() for p in params_for(t).values()]
    unplanned = sorted(p.expression for p in params if p.plan is None)
    assert len(unplanned) <= len(params) // 100, unplanned


def test_plans_answer_what_fhirpathpy_answers_on_real_data() -> None:
    compared, nonempty = 0, 0
    for resource in _corpus():
        for param in params_for(resource["resourceType"]).values():
            if param.plan is None:
                continue
            expected = _by_fhirpathpy(param, resource)
            got = search_semantics.extract(param, resource)
            assert got == expected, (resource["resourceType"], resource.get("id"), param.code, param.expression)
            compared += 1
            nonempty += bool(expected)
    assert compared > 15_000 and nonempty > 5_000  # the corpus exercised the plans, not only empty answers


@pytest.mark.parametrize(("resource_type", "code", "resource", "expected"), [
    ("Patient", "email", CORNER_CASES[5], [{"system": "email", "value": "a@x.org"}] * 2),
    ("Patient", "deceased", CORNER_CASES[0], [True]),
    ("Patient", "deceased", CORNER_CASES[1], [False]),
    ("Patient", "deceased", {"resourceType": "Patient"}, [False]),
    ("Observation", "component-value-quantity", CORNER_CASES[6], [{"value": 1, "unit": "mg"}]),  # a union: distinct
    ("Observation", "value-string", CORNER_CASES[7], ["neg"]),
    ("Observation", "value-quantity", CORNER_CASES[8], [{"value": 2}]),
    ("Patient", "address-city", {"resourceType": "Observation", "city": "x"}, []),
])
def test_plans_by_hand(resource_type: str, code: str, resource: dict[str, Any], expected: list[Any]) -> None:
    """Known answers, so the comparison above cannot pass by both sides being wrong the same way."""
    param = params_for(resource_type)[code]
    assert param.plan is not None
    assert search_semantics.extract(param, resource) == expected
