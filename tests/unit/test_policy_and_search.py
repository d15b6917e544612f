"""The PHI policy covers every supported type; search normalisation; scopes."""

from __future__ import annotations

import pytest
from fhir.resources.R4B import get_fhir_model_class

from esus.domain.fhir import SUPPORTED_TYPES
from esus.domain.search_legacy import hashed_index_values, hashed_query_value, normalise_email, normalise_phone
from esus.errors import Forbidden
from esus.security.auth import CREATE, DELETE, READ, SEARCH, UPDATE, Principal
from esus.security.phi import CLEAR_ELEMENTS, NAMED_PHI_ELEMENTS, is_clear


@pytest.mark.parametrize("resource_type", sorted(SUPPORTED_TYPES))
def test_policy_covers_every_type_and_never_clears_named_phi(resource_type: str) -> None:
    assert resource_type in CLEAR_ELEMENTS
    fields = {f.alias or n for n, f in get_fhir_model_class(resource_type).model_fields.items()}
    for element in CLEAR_ELEMENTS[resource_type]:
        assert element in fields, f"{resource_type}.{element} is not an element"
    for element in NAMED_PHI_ELEMENTS:
        assert not is_clear(resource_type, element)
    assert not is_clear(resource_type, "extension") and not is_clear(resource_type, "note")


def test_phone_and_email_normalisation() -> None:
    assert normalise_phone("+1 (555) 326-5839") == normalise_phone("555.326.5839") == "5553265839"
    assert normalise_phone("001 555 326 5839") == "5553265839"
    assert normalise_phone("(03) 5555 6473") == "0355556473"
    assert normalise_phone("x1234") == "1234"
    assert normalise_email("  Jane.Doe@Example.COM ") == "jane.doe@example.com"


def test_index_values_and_query_values_agree() -> None:
    patient = {"telecom": [{"system": "phone", "value": "+1 555-326-5839"},
                           {"system": "email", "value": "A@B.org"}, {"system": "url", "value": "https://x"}],
               "identifier": [{"system": "urn:mrn", "value": " 12345 "}]}
    values = hashed_index_values("Patient", patient)
    assert ("phone", hashed_query_value("phone", "555 326 5839")) in values
    assert ("email", hashed_query_value("email", "a@b.ORG")) in values
    assert ("telecom", hashed_query_value("telecom", "email|A@B.org")) in values
    assert ("identifier", hashed_query_value("identifier", "urn:mrn|12345")) in values
    assert ("identifier", hashed_query_value("identifier", "12345")) in values
    assert hashed_index_values("Observation", patient) == set()


@pytest.mark.parametrize(("scopes", "resource_type", "interaction", "allowed"), [
    ("user/*.*", "Patient", DELETE, True),
    ("user/Patient.read", "Patient", READ, True),
    ("user/Patient.read", "Patient", SEARCH, True),
    ("user/Patient.read", "Patient", UPDATE, False),
    ("user/Patient.write", "Patient", CREATE, True),
    ("user/Patient.write", "Patient", READ, False),
    ("user/Observation.rs", "Patient", READ, False),
    ("system/*.cruds", "Observation", UPDATE, True),
    ("system/*.rs", "Observation", UPDATE, False),
    ("patient/*.*", "Patient", READ, False),
    ("openid fhirUser", "Patient", READ, False),
    ("user/Patient.read user/Patient.write", "Patient", DELETE, True),
])
def test_scopes(scopes: str, resource_type: str, interaction: str, allowed: bool) -> None:
    principal = Principal("acme", tuple(scopes.split()), "Practitioner/1", "sub")
    if allowed:
        principal.require(resource_type, interaction)
    else:
        with pytest.raises(Forbidden):
            principal.require(resource_type, interaction)
