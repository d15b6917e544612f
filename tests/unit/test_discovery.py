"""Discovery: the CapabilityStatement declares the patient compartment, $everything and the _include and
_revinclude values per type (each one parses: what is declared works); the SMART configuration document; and
the _include/_revinclude grammar."""

from __future__ import annotations

import pytest

from esus.domain.includes import Include, parse_includes, split_includes
from esus.errors import InvalidRequest
from esus.http.capability import capability_statement, smart_configuration
from esus.settings import Settings


def test_capability_statement_declares_compartment_everything_and_includes() -> None:
    statement = capability_statement(Settings(), "https://fhir.example/fhir")
    rest = statement["rest"][0]
    assert rest["compartment"] == ["http://hl7.org/fhir/CompartmentDefinition/patient"]
    by_type = {r["type"]: r for r in rest["resource"]}
    assert by_type["Patient"]["operation"] == [
        {"name": "everything", "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything"}]
    assert "operation" not in by_type["Observation"]
    assert {"Observation:subject", "Observation:performer", "Observation:patient"} <= set(
        by_type["Observation"]["searchInclude"])
    assert "Observation:code" not in by_type["Observation"]["searchInclude"]  # a token, not a reference
    patient_rev = set(by_type["Patient"]["searchRevInclude"])
    assert {"Observation:subject", "Observation:patient", "Provenance:target", "Provenance:patient",
            "Encounter:subject"} <= patient_rev
    assert "Observation:patient" not in by_type["Practitioner"]["searchRevInclude"]  # resolve() is Patient
    assert "Provenance:patient" in by_type["Provenance"]["searchInclude"]
    for resource_type, entry in by_type.items():  # everything declared is accepted by the search
        parse_includes({"_include": entry.get("searchInclude", [])}, [resource_type])
        parse_includes({"_revinclude": entry.get("searchRevInclude", [])}, [resource_type])
    assert "extension" not in rest["security"]  # no OAuth endpoints configured: none advertised


def test_oauth_endpoints_are_advertised_when_configured() -> None:
    settings = Settings(smart_authorization_endpoint="https://idp.example/authorize",
                        smart_token_endpoint="https://idp.example/token", jwks_url="https://idp.example/jwks")
    (extension,) = capability_statement(settings, "https://fhir.example/fhir")["rest"][0]["security"]["extension"]
    assert extension["url"] == "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
    assert extension["extension"] == [{"url": "authorize", "valueUri": "https://idp.example/authorize"},
                                      {"url": "token", "valueUri": "https://idp.example/token"}]
    document = smart_configuration(settings)
    assert document["authorization_endpoint"] == "https://idp.example/authorize"
    assert document["token_endpoint"] == "https://idp.example/token"
    assert document["jwks_uri"] == "https://idp.example/jwks"
    assert {"patient/*.read", "patient/*.rs", "user/*.cruds", "system/*.read", "launch/patient"} <= set(
        document["scopes_supported"])
    assert {"permission-patient", "permission-user", "permission-v1", "permission-v2"} <= set(document["capabilities"])


def test_smart_configuration_leaves_unconfigured_endpoints_out() -> None:
    document = smart_configuration(Settings(smart_authorization_endpoint="", jwks_url=None))
    assert "authorization_endpoint" not in document and "token_endpoint" not in document
    assert document["issuer"] == Settings().jwt_issuer


def test_include_grammar() -> None:
    search, includes = split_includes({"code": ["x"], "_include": ["Observation:subject:Patient"],
                                       "_revinclude:iterate": ["Provenance:target"], "_count": ["2"]})
    assert search == {"code": ["x"], "_count": ["2"]}
    assert parse_includes(includes, ["Observation"]) == [
        Include(False, "Observation", "subject", "Patient", False),
        Include(True, "Provenance", "target", None, True)]
    assert parse_includes({"_include:recurse": ["Patient:general-practitioner"]}, ["Observation"])[0].iterate


@pytest.mark.parametrize(("params", "problem"), [
    ({"_include": ["*"]}, "not supported"),
    ({"_include": ["Observation"]}, "Type:param"),
    ({"_include": ["Observation:code"]}, "no reference search parameter"),
    ({"_include": ["Nope:subject"]}, "not a resource type"),
    ({"_include": ["Observation:subject:Medication"]}, "cannot reference"),
    ({"_include": ["Patient:organization"]}, "use _include:iterate"),  # on an Observation search
    ({"_include:deep": ["Observation:subject"]}, "only :iterate"),
    ({"_revinclude": ["Provenance:recorded"]}, "no reference search parameter"),
])
def test_bad_includes_are_a_400(params: dict[str, list[str]], problem: str) -> None:
    with pytest.raises(InvalidRequest, match=problem):
        parse_includes(params, ["Observation"])
