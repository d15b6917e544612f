"""The Provenance the server writes with every version skips the FHIR model validation (it would load the models on
a delete's first request). These tests hold it to the R4B model and US Core anyway, for any token: whatever the
token carries, the record either validates or the write is refused before anything is stored."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.provenance import Provenance
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from esus.domain import provenance as prov
from esus.errors import InvalidRequest
from esus.model import Version
from esus.security.auth import Principal
from esus.settings import Settings

SETTINGS = Settings()
ACTIVITIES = sorted(set(prov.ACTIVITY_BY_METHOD.values()))
# Any text, surrogates and unusual whitespace included; and the shapes real fhirUser claims take.
TOKEN_TEXT = st.one_of(
    st.text(st.characters(codec=None), max_size=40),
    st.sampled_from(["Practitioner/1", "https://idp.example.org/fhir/PractitionerRole/a.b", "Patient/p-1",
                     "\u00a0", " ", "\t", "Device/x y"]),
)


def _version(deleted: bool) -> Version:
    return Version(resource_type="Patient", resource_id="p-1", version=3, last_updated="2026-12-01T10:00:00.123Z",
                   deleted=deleted, resource=None if deleted else {"resourceType": "Patient", "id": "p-1"},
                   method="DELETE" if deleted else "PUT")


def _model_accepts(record: dict[str, object]) -> bool:
    try:
        Provenance.model_validate(record)
    except (ValidationError, ValueError, TypeError):
        return False
    return True


@given(fhir_user=st.none() | TOKEN_TEXT.filter(bool), subject=TOKEN_TEXT.filter(bool),
       activity=st.sampled_from(ACTIVITIES), deleted=st.booleans())
def test_the_server_record_is_refused_exactly_when_the_model_would_refuse_it(
        fhir_user: str | None, subject: str, activity: str, deleted: bool) -> None:
    principal = Principal("acme", ("system/*.cruds",), fhir_user, subject)
    version = _version(deleted)
    unchecked = prov._identified(prov.server_provenance(SETTINGS, principal, version, activity), "prov-1",
                                 version.last_updated)
    try:
        record = prov.server_record(SETTINGS, principal, version, activity, "prov-1")
    except InvalidRequest:
        assert not _model_accepts(unchecked)
        return
    assert record == unchecked
    assert _model_accepts(record)
    prov.check_us_core(record)  # raises if the record broke US Core 3.1.1


@pytest.mark.parametrize("fhir_user", ["\u00a0", "\u2003\u2003"])
def test_a_token_string_the_model_rejects_gets_400_naming_the_claim(fhir_user: str) -> None:
    principal = Principal("acme", ("system/*.cruds",), fhir_user, "client-1")
    with pytest.raises(InvalidRequest, match="fhirUser"):
        prov.server_record(SETTINGS, principal, _version(False), "UPDATE", "prov-1")
    record = prov._identified(prov.server_provenance(SETTINGS, principal, _version(False), "UPDATE"), "p",
                              "2026-12-01T10:00:00Z")
    assert not _model_accepts(record)  # the refusal above is the model's own verdict, not a stricter one
