"""PHI policy and the resource codec that applies it.

Policy (declarative, per type): encrypted by default. Every top-level element of a stored resource is
sealed with AES-256-GCM, one envelope per element, EXCEPT the few non-identifying elements listed in
CLEAR_ELEMENTS for its type. A new or unexpected element (an extension, a new R5 field, a free-text
note) is therefore never stored in clear by accident. The server needs no plaintext to search: PHI
search goes through hashed indexes (esus.domain.search_legacy), computed before encryption.

What may be clear, for every type (tests/unit/test_phi_policy.py proves it from the R4 definitions):
- resourceType, id, implicitRules, language, and of `meta` only versionId, lastUpdated, profile, security and
  tag. Every other meta element (source, which can be a URI naming a person or device; extension) is sealed
  on its own as `meta.<element>`.
- codes with a required binding the schema enumerates (status, intent, use, ...; esus.fhir_types), except
  demographics about a person (gender);
- the hand-kept choices of CHOSEN_CLEAR: status-like codes the schema does not enumerate, `active` flags, and
  the category/code/class concepts of clinical types. Judgement call: a CodeableConcept or Coding is clear with
  its terminology text (CodeableConcept.text, Coding.display), which describes the code, not the person.
- A clear element is stored clear only if it carries no extension, modifierExtension or element id at any
  depth (those can hold anything, a name or a reference included); otherwise that version seals it.
Never clear: anything that can hold a name, address, telecom, identifier, date, free text (string, markdown,
Narrative, Annotation), attachment, binary data, contained resource or Reference.
"""

from __future__ import annotations

import json
from typing import Any

from esus.fhir_types import REQUIRED_CODE_ELEMENTS, RESOURCE_TYPES
from esus.security.crypto import FieldCipher, FieldContext, IntegrityFailure

CLEAR_COMMON: frozenset[str] = frozenset({"resourceType", "id", "meta", "implicitRules", "language"})
META = "meta"
META_CLEAR: frozenset[str] = frozenset({"versionId", "lastUpdated", "profile", "security", "tag"})
SEALED_META_PREFIX = "meta."
# Keys that make a clear value unsafe wherever they occur inside it (see the module docstring).
UNSAFE_KEYS: frozenset[str] = frozenset({"extension", "modifierExtension", "id"})
# Enumerated codes that still describe a person.
DEMOGRAPHIC_CODES: frozenset[str] = frozenset({"gender"})

CHOSEN_CLEAR: dict[str, frozenset[str]] = {
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

CLEAR_ELEMENTS: dict[str, frozenset[str]] = {
    resource_type: CHOSEN_CLEAR.get(resource_type, frozenset())
    | (REQUIRED_CODE_ELEMENTS.get(resource_type, frozenset()) - DEMOGRAPHIC_CODES)
    for resource_type in sorted(RESOURCE_TYPES | {"Provenance"})
}

# Elements the specification names as PHI; a test proves none is in any type's clear list.
NAMED_PHI_ELEMENTS: tuple[str, ...] = (
    "name", "telecom", "address", "identifier", "birthDate", "photo", "contact", "text",
)


def is_clear(resource_type: str, element: str) -> bool:
    return element in CLEAR_COMMON or element in CLEAR_ELEMENTS.get(resource_type, frozenset())


def is_clear_meta(element: str) -> bool:
    return element in META_CLEAR


def plain_value(value: Any) -> bool:
    """True when a value of a clear element may be stored clear: present and free of UNSAFE_KEYS (and of
    primitive extensions, `_element`) at any depth."""
    if value is None:
        return False
    pending = [value]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            if not UNSAFE_KEYS.isdisjoint(node) or any(k[:1] == "_" for k in node):
                return False
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return True


class ResourceCodec:
    """Resource dict <-> (clear JSON with null placeholders that keep element order, sealed elements)."""

    def __init__(self, cipher: FieldCipher) -> None:
        self._cipher = cipher

    def encode(self, ctx: FieldContext, resource: dict[str, Any]) -> tuple[str, dict[str, bytes]]:
        clear: dict[str, Any] = {}
        sealed: dict[str, bytes] = {}
        for element, value in resource.items():
            if element.startswith(SEALED_META_PREFIX):  # no FHIR element name has a dot; this one would read back
                raise ValueError(f"{element!r} is not an element name")  # as a meta element: refuse, never mix
            if element == META and isinstance(value, dict):  # split: labels clear, the rest sealed per element
                clear[element] = {}
                for sub, sub_value in value.items():
                    if is_clear_meta(sub) and plain_value(sub_value):
                        clear[element][sub] = sub_value
                    else:
                        clear[element][sub] = None
                        sealed[SEALED_META_PREFIX + sub] = self._seal(ctx, SEALED_META_PREFIX + sub, sub_value)
            elif is_clear(ctx.resource_type, element) and (element in ("resourceType", "id") or plain_value(value)):
                clear[element] = value
            else:
                clear[element] = None
                sealed[element] = self._seal(ctx, element, value)
        return json.dumps(clear, ensure_ascii=False, separators=(",", ":")), sealed

    def _seal(self, ctx: FieldContext, element: str, value: Any) -> bytes:
        plaintext = json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
        return self._cipher.encrypt(ctx, element, plaintext)

    def decode(self, ctx: FieldContext, clear_json: str, sealed: dict[str, bytes]) -> dict[str, Any]:
        resource: dict[str, Any] = json.loads(clear_json)
        placeholders = {element for element, value in resource.items() if value is None}
        meta = resource.get(META)
        if isinstance(meta, dict):
            placeholders |= {SEALED_META_PREFIX + sub for sub, value in meta.items() if value is None}
        if placeholders != set(sealed):
            raise IntegrityFailure("Stored data does not match its sealed elements")
        for element, envelope in sealed.items():
            value = json.loads(self._cipher.decrypt(ctx, element, envelope))
            if element.startswith(SEALED_META_PREFIX):
                resource[META][element[len(SEALED_META_PREFIX):]] = value
            else:
                resource[element] = value
        return resource

    def key_versions(self, sealed: dict[str, bytes]) -> set[str]:
        return {self._cipher.key_version_of(envelope) for envelope in sealed.values()}
