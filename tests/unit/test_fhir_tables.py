"""The generated FHIR tables (esus.fhir_types, fhir_bindings.json) are current, the served types are the R4
types the R4B models can validate, and required bindings are enforced at every depth."""

from __future__ import annotations

import json

import pytest

from esus.domain.bindings import allowed_codes, code_issues
from esus.domain.fhir import RESOURCE_TYPES, SUPPORTED_TYPES, validate_resource
from esus.errors import InvalidRequest
from esus.fhir_types import NOT_GENERIC, WITHOUT_R4B_MODEL
from esus_dev.codegen import gen_fhir_shapes as shapes
from esus_dev.codegen import gen_fhir_tables as gen
from tests.conftest import EXAMPLES, REPO, SYNTHEA

if not gen.SCHEMA.exists():
    pytest.skip("../shared/fhir-spec/r4/fhir.schema.json is not next to the repo", allow_module_level=True)

# Elements Medplum's build of the schema adds to R4 types (from R5, or its own); no R4 client sends them.
SCHEMA_EXTRAS = {("DeviceDefinition", "classification"), ("HealthcareService", "offeredIn"),
                 ("ObservationDefinition", "publisher"), ("OperationOutcome", "resource"),
                 ("OperationOutcome", "status")}


def test_committed_tables_are_current() -> None:
    types_text, bindings_text = gen.render(gen.load_schema())
    assert gen.TYPES_MODULE.read_text(encoding="utf-8") == types_text, "run esus_dev.codegen.gen_fhir_tables"
    assert gen.BINDINGS_JSON.read_text(encoding="utf-8") == bindings_text, "run esus_dev.codegen.gen_fhir_tables"


def test_every_schema_type_is_served_or_explained() -> None:
    schema_types = set(gen.schema_resource_types(gen.load_schema()))
    assert RESOURCE_TYPES | WITHOUT_R4B_MODEL | set(NOT_GENERIC) == schema_types
    assert not RESOURCE_TYPES & (WITHOUT_R4B_MODEL | set(NOT_GENERIC))
    assert len(RESOURCE_TYPES) == 124
    assert {"ServiceRequest", "Coverage", "Device", "ImagingStudy", "MedicationAdministration", "Medication",
            "CareTeam", "QuestionnaireResponse", "Consent", "Task", "RelatedPerson", "Specimen", "Flag",
            "SupplyDelivery", "PractitionerRole", "Location", "Binary"} <= RESOURCE_TYPES


def test_only_the_types_redesigned_in_r4b_differ_from_r4() -> None:
    """An R4 element the R4B model does not know would be refused: only Evidence/EvidenceVariable have such."""
    from fhir.resources.R4B import get_fhir_model_class

    definitions = gen.load_schema()["definitions"]
    differing = {}
    for resource_type in sorted(SUPPORTED_TYPES | {"Evidence", "EvidenceVariable"}):
        known = {f.alias or n for n, f in get_fhir_model_class(resource_type).model_fields.items()}
        r4 = {e for e in definitions[resource_type]["properties"] if e != "resourceType"}
        unknown = {e for e in r4 - known if (resource_type, e) not in SCHEMA_EXTRAS}
        if unknown:
            differing[resource_type] = unknown
    assert set(differing) == {"Evidence", "EvidenceVariable"}
    assert {t for t, why in NOT_GENERIC.items() if why.startswith("redesigned in R4B")} == set(differing)


def test_bindings_cover_nested_datatypes_and_backbones() -> None:
    assert allowed_codes("Patient", "gender") == ("male", "female", "other", "unknown")
    assert allowed_codes("ContactPoint", "system") == ("phone", "fax", "email", "pager", "url", "sms", "other")
    assert allowed_codes("HumanName", "use") is not None and allowed_codes("Address", "use") is not None
    assert allowed_codes("Patient_Contact", "gender") == allowed_codes("Patient", "gender")
    assert allowed_codes("Observation_ReferenceRange", "type") is None  # a CodeableConcept, not a code
    assert allowed_codes("Quantity", "comparator") == ("<", "<=", ">=", ">")
    assert allowed_codes("Patient", "name") is None


def test_code_issues_name_the_path_and_the_allowed_codes() -> None:
    patient = {"resourceType": "Patient", "gender": "banana",
               "contact": [{"gender": "female"}, {"gender": "x", "telecom": [{"system": "pigeon"}]}],
               "name": [{"use": "nickname"}, {"use": "alias"}],
               "_birthDate": {"extension": [{"url": "u", "valueContactPoint": {"system": "fax"}},
                                            {"url": "u", "valueHumanName": {"use": "maiden-ish"}}]},
               "contained": [{"resourceType": "Observation", "status": "not-a-status", "code": {"text": "x"}}]}
    issues = {i.expression: i.diagnostics for i in code_issues("Patient", patient)}
    assert set(issues) == {"Patient.gender", "Patient.contact[1].gender", "Patient.contact[1].telecom[0].system",
                           "Patient.name[1].use", "Patient._birthDate.extension[1].valueHumanName.use",
                           "Patient.contained[0].status"}
    assert "'banana'" in issues["Patient.gender"] and "male, female, other, unknown" in issues["Patient.gender"]
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "component": [{"code": {"text": "c"}, "valueQuantity": {"value": 1, "comparator": "~"},
                                  "referenceRange": [{"low": {"value": 1, "comparator": "<"}},
                                                     {"high": {"value": 2, "comparator": "about"}}]}]}
    assert [i.expression for i in code_issues("Observation", observation)] == [
        "Observation.component[0].valueQuantity.comparator",
        "Observation.component[0].referenceRange[1].high.comparator",
    ]
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": {"resourceType": "Patient", "gender": "banana"}}]}
    assert [i.expression for i in code_issues("Bundle", bundle)] == ["Bundle.entry[0].resource.gender"]


def test_validate_resource_refuses_codes_outside_required_bindings() -> None:
    with pytest.raises(InvalidRequest) as raised:
        validate_resource("Patient", {"resourceType": "Patient", "gender": "banana"})
    assert [(i.code, i.expression) for i in raised.value.issues] == [("code-invalid", "Patient.gender")]
    assert "male, female, other, unknown" in raised.value.diagnostics
    with pytest.raises(InvalidRequest):
        validate_resource("Observation", {"resourceType": "Observation", "status": "not-a-status",
                                          "code": {"text": "x"}})
    assert validate_resource("Patient", {"resourceType": "Patient", "gender": "female"})
    provenance = {"resourceType": "Provenance", "recorded": "2024-01-01T00:00:00Z",
                  "target": [{"reference": "Patient/1"}], "agent": [{"who": {"reference": "Organization/1"}}],
                  "entity": [{"role": "borrowed", "what": {"reference": "Patient/2"}}]}
    with pytest.raises(InvalidRequest) as raised:
        validate_resource("Provenance", provenance)
    assert [i.expression for i in raised.value.issues] == ["Provenance.entity[0].role"]


def test_bundles_stored_as_resources_are_documents_messages_or_collections() -> None:
    for kind in ("transaction", "batch", "searchset", "history", "transaction-response"):
        with pytest.raises(InvalidRequest, match="not stored"):
            validate_resource("Bundle", {"resourceType": "Bundle", "type": kind})
    assert validate_resource("Bundle", {"resourceType": "Bundle", "type": "collection"})


def test_every_official_example_and_synthea_resource_holds_valid_codes() -> None:
    resources = [json.loads(p.read_text(encoding="utf-8")) for p in sorted(EXAMPLES.glob("*.json"))]
    for path in sorted(SYNTHEA.glob("*.json")):
        resources += [e["resource"] for e in json.loads(path.read_text(encoding="utf-8")).get("entry", [])]
    assert len(resources) > 1000
    bad = {f"{r['resourceType']}/{r.get('id')}": code_issues(r["resourceType"], r) for r in resources}
    assert {k: v for k, v in bad.items() if v} == {}


def test_fast_validation_table_is_current() -> None:
    """fhir_shapes_r4b.json is what the installed fhir.resources models say (esus_dev.codegen.gen_fhir_shapes)."""
    assert shapes.SHAPES_JSON.read_text(encoding="utf-8") == shapes.render(shapes.build()), \
        "run python -m esus_dev.codegen.gen_fhir_shapes"


def test_the_validation_libraries_are_pinned_to_the_versions_the_fast_check_was_built_from() -> None:
    """The layer and the dev environment install exactly the pydantic, fhir.resources and fhir_core the table was
    generated from: a newer fhir_core that tightened a check could otherwise reject what the fast check proves."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    source = {canonicalize_name(name): version
              for name, version in json.loads(shapes.SHAPES_JSON.read_text(encoding="utf-8"))["source"].items()}
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["dependencies"]
    layer = [line.split("#", 1)[0].strip() for line in (REPO / "shared" / "requirements.txt").read_text().splitlines()]
    for requirements in (project, [line for line in layer if line]):
        pins = {canonicalize_name(r.name): str(r.specifier)
                for r in map(Requirement, requirements) if canonicalize_name(r.name) in source}
        assert pins == {name: f"=={version}" for name, version in source.items()}


def test_the_shape_generator_fails_closed_on_what_the_fast_check_does_not_mirror() -> None:
    """A model class that checks more than the table can say (an overridden checking method, another validator,
    a constraint on a field) is left out or stops the generator; it never becomes a looser shape."""
    import typing

    from annotated_types import MaxLen
    from fhir.resources.R4B import get_fhir_model_class
    from fhir_core.types import String
    from pydantic import Field, model_validator

    name = get_fhir_model_class("HumanName")
    assert shapes.class_shape(name, []) is not None

    class OwnChoiceRule(name):  # type: ignore[misc, valid-type]
        def _validate_one_of_many(self) -> None:
            pass

    class OwnValidator(name):  # type: ignore[misc, valid-type]
        @model_validator(mode="after")
        def extra(self) -> typing.Any:
            return self

    class TightenedString(name):  # type: ignore[misc, valid-type]
        family: typing.Annotated[str, MaxLen(3)] = Field(default="x")

    class ConstrainedPrimitive(name):  # type: ignore[misc, valid-type]
        text: typing.Annotated[str, String(), MaxLen(3)] | None = None

    assert shapes.class_shape(OwnChoiceRule, []) is None
    assert shapes.class_shape(OwnValidator, []) is None
    with pytest.raises(SystemExit, match="constraints"):
        shapes.class_shape(TightenedString, [])
    assert shapes.class_shape(ConstrainedPrimitive, [])["fields"]["text"] == shapes.UNSUPPORTED  # type: ignore[index]


def test_only_a_string_part_of_a_wider_string_parameter_is_indexed_under_it() -> None:
    """The generator marks `indexed_under` only when the narrow element is a `string` (a complex part, such as a
    contact's HumanName under the contact, has values string_values would not take from the wider one)."""
    from esus_dev.codegen.gen_search_params import SCHEMA, _mark_indexed_under

    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    params = {code: {"type": "string", "expression": expression} for code, expression in {
        "name": "Patient.name", "family": "Patient.name.family", "contact": "Patient.contact",
        "contact-name": "Patient.contact.name", "use": "Patient.name.use"}.items()}
    _mark_indexed_under(params, schema)
    assert {code: p.get("indexed_under") for code, p in params.items()} == {
        "name": None, "family": "name", "contact": None, "contact-name": None, "use": None}
