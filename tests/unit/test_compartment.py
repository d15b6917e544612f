"""Patient compartment membership and SMART patient scopes (Principal, authorizer)."""

from __future__ import annotations

import pytest

from esus.domain.compartment import in_compartment
from esus.errors import Forbidden, Unauthorized
from esus.security.auth import Principal


def test_membership() -> None:
    obs = {"resourceType": "Observation", "id": "o", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/p1"}}
    assert in_compartment("p1", "Observation", obs)
    assert not in_compartment("p2", "Observation", obs)
    assert not in_compartment("p", "Observation", obs)  # whole ids, never prefixes
    performed = {**obs, "subject": {"reference": "Group/g"}, "performer": [{"reference": "Patient/p2"}]}
    assert in_compartment("p2", "Observation", performed)  # any compartment parameter (OR)
    assert not in_compartment("p1", "Observation", performed)
    absolute = {**obs, "subject": {"reference": "https://elsewhere.example/fhir/Patient/p1"}}
    assert in_compartment("p1", "Observation", absolute)
    assert in_compartment("p1", "Patient", {"resourceType": "Patient", "id": "p1"})
    linked = {"resourceType": "Patient", "id": "p9",
              "link": [{"other": {"reference": "Patient/p1"}, "type": "seealso"}]}
    assert in_compartment("p1", "Patient", linked) and not in_compartment("p2", "Patient", linked)
    assert not in_compartment("p1", "Practitioner", {"resourceType": "Practitioner", "id": "p1"})
    provenance = {"resourceType": "Provenance", "id": "v", "target": [{"reference": "Patient/p1/_history/3"}]}
    assert in_compartment("p1", "Provenance", provenance) and not in_compartment("p2", "Provenance", provenance)
    about_obs = {"resourceType": "Provenance", "id": "v", "target": [{"reference": "Observation/o"}]}
    assert not in_compartment("p1", "Provenance", about_obs)


def principal(scope: str, patient: str | None = "p1") -> Principal:
    return Principal("acme", tuple(scope.split()), None, "sub", patient)


@pytest.mark.parametrize(("scope", "letters", "expected"), [
    ("patient/*.read", "r", "p1"), ("patient/Observation.read", "s", "p1"), ("patient/*.rs", "rs", "p1"),
    ("patient/Observation.cruds", "cud", "p1"), ("user/Observation.r patient/Observation.s", "r", None),
    ("user/Observation.r patient/Observation.s", "s", "p1"), ("user/Observation.r patient/Observation.s", "rs", "p1"),
    ("system/*.read patient/*.read", "rs", None),
])
def test_patient_scopes_confine_to_the_compartment(scope: str, letters: str, expected: str | None) -> None:
    assert principal(scope).confined_to("Observation", letters) == expected


@pytest.mark.parametrize(("scope", "resource_type", "letters", "patient"), [
    ("patient/*.read", "Observation", "c", "p1"),  # v1 read = rs
    ("patient/Observation.rs", "Condition", "r", "p1"),
    ("patient/*.read", "Practitioner", "r", "p1"),  # never in a patient compartment
    ("patient/*.read", "*", "s", "p1"),  # system-level interactions span every type
    ("patient/*.read", "Observation", "r", None),  # no launch context: patient/ scopes grant nothing
])
def test_patient_scopes_refused(scope: str, resource_type: str, letters: str, patient: str | None) -> None:
    with pytest.raises(Forbidden):
        principal(scope, patient).confined_to(resource_type, letters)


def test_authorizer_context_carries_a_valid_patient_only() -> None:
    context = {"tenant": "acme", "scope": "patient/*.read", "exp": "9999999999", "patient": "p-1.x"}
    assert Principal.from_authorizer_context(context).patient == "p-1.x"
    assert Principal.from_authorizer_context({**context, "patient": ""}).patient is None
    with pytest.raises(Unauthorized):
        Principal.from_authorizer_context({**context, "patient": "Patient/p1"})


def test_the_authorizer_verifies_and_passes_the_patient_claim() -> None:
    import time

    import jwt
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from esus.security.auth import TokenVerifier, authorizer_context
    from esus.settings import Settings

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    verifier = TokenVerifier(Settings(jwt_public_keys_pem=public, jwks_url=None))

    def token(**claims: object) -> str:
        now = int(time.time())
        body = {"iss": "https://esus.local/issuer", "aud": "esus-fhir", "exp": now + 600, "sub": "u1",
                "tenant": "acme", "scope": "patient/*.read", **claims}
        return jwt.encode(body, key, algorithm="ES256")

    context = authorizer_context(verifier.verify(token(patient="p1")))
    assert context["patient"] == "p1"
    assert Principal.from_authorizer_context(context).confined_to("Observation", "r") == "p1"
    assert authorizer_context(verifier.verify(token()))["patient"] == ""
    for bad in ("Patient/p1", 42, "", "x" * 65):
        with pytest.raises(Unauthorized):
            verifier.verify(token(patient=bad))


def test_esus_token_names_the_patient(tmp_path: object, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    import jwt

    from esus_dev.cli import main

    monkeypatch.setenv("ESUS_DEV_DIR", str(tmp_path))
    main(["token", "--tenant", "acme", "--scope", "patient/*.read", "--patient", "p-1"])
    claims = jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    assert (claims["patient"], claims["scope"]) == ("p-1", "patient/*.read")
    main(["token", "--tenant", "acme"])
    assert "patient" not in jwt.decode(capsys.readouterr().out.strip(), options={"verify_signature": False})
    with pytest.raises(SystemExit) as exited:
        main(["token", "--tenant", "acme", "--patient", "Patient/p-1"])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and "--patient takes a Patient id" in err and "Traceback" not in err
