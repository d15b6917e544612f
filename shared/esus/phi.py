"""PHI policy and the resource codec that applies it.

Policy (declarative, per type): encrypted by default. Every top-level element of a stored resource is
sealed with AES-256-GCM, one envelope per element, EXCEPT the few non-identifying elements listed in
CLEAR_ELEMENTS for its type. A new or unexpected element (an extension, a new R5 field, a free-text
note) is therefore never stored in clear by accident. The server needs no plaintext to search: PHI
search goes through hashed indexes (esus.search), computed before encryption.
"""

from __future__ import annotations

import json
from typing import Any

from esus.crypto import FieldCipher, FieldContext
from esus.errors import IntegrityFailure

CLEAR_COMMON: frozenset[str] = frozenset({"resourceType", "id", "meta", "implicitRules", "language"})

CLEAR_ELEMENTS: dict[str, frozenset[str]] = {
    "Patient": frozenset({"active"}),
    "Practitioner": frozenset({"active"}),
    "PractitionerRole": frozenset({"active"}),
    "Organization": frozenset({"active"}),
    "Location": frozenset({"status", "mode"}),
    "Observation": frozenset({"status", "category", "code"}),
    "DiagnosticReport": frozenset({"status", "category", "code"}),
    "DocumentReference": frozenset({"status", "docStatus"}),
    "Encounter": frozenset({"status", "class"}),
    "Condition": frozenset({"clinicalStatus", "verificationStatus", "category"}),
    "Procedure": frozenset({"status"}),
    "Immunization": frozenset({"status"}),
    "MedicationRequest": frozenset({"status", "intent"}),
    "AllergyIntolerance": frozenset({"clinicalStatus", "verificationStatus", "type", "category"}),
    "CarePlan": frozenset({"status", "intent"}),
    "Goal": frozenset({"lifecycleStatus"}),
    "Claim": frozenset({"status", "use"}),
    "ExplanationOfBenefit": frozenset({"status", "use", "outcome"}),
    "Provenance": frozenset({"recorded", "activity", "policy"}),
}

# Elements the specification names as PHI; a test proves none is in any type's clear list.
NAMED_PHI_ELEMENTS: tuple[str, ...] = (
    "name", "telecom", "address", "identifier", "birthDate", "photo", "contact", "text",
)


def is_clear(resource_type: str, element: str) -> bool:
    return element in CLEAR_COMMON or element in CLEAR_ELEMENTS.get(resource_type, frozenset())


class ResourceCodec:
    """Resource dict <-> (clear JSON with null placeholders that keep element order, sealed elements)."""

    def __init__(self, cipher: FieldCipher) -> None:
        self._cipher = cipher

    def encode(self, ctx: FieldContext, resource: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
        clear: dict[str, Any] = {}
        sealed: dict[str, bytes] = {}
        for element, value in resource.items():
            if is_clear(ctx.resource_type, element):
                clear[element] = value
            else:
                clear[element] = None
                plaintext = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
                sealed[element] = self._cipher.encrypt(ctx, element, plaintext)
        return json.dumps(clear, ensure_ascii=False, separators=(",", ":")), sealed

    def decode(self, ctx: FieldContext, clear_json: str, sealed: dict[str, bytes]) -> dict[str, Any]:
        resource: dict[str, Any] = json.loads(clear_json)
        placeholders = {element for element, value in resource.items() if value is None}
        if placeholders != set(sealed):
            raise IntegrityFailure("Stored data does not match its sealed elements")
        for element, envelope in sealed.items():
            resource[element] = json.loads(self._cipher.decrypt(ctx, element, envelope))
        return resource

    def key_versions(self, sealed: dict[str, bytes]) -> set[str]:
        return {self._cipher.key_version_of(envelope) for envelope in sealed.values()}
