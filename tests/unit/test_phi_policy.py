"""The PHI policy, proved from the R4 definitions (fhir.schema.json), not from a hand-written list of elements:
for every served type, no element that can hold a name, address, telecom, identifier, date (birth dates
included), free text, attachment, binary data, contained resource or Reference is stored in clear. And the codec
seals a clear element whenever its value carries an extension or element id, which could hold any of those."""

from __future__ import annotations

import functools
import json
from typing import Any

import pytest

from esus.domain.fhir import SUPPORTED_TYPES
from esus.security.crypto import FieldCipher, FieldContext, IntegrityFailure, KeyRing, RootKeys
from esus.security.phi import CLEAR_ELEMENTS, META_CLEAR, ResourceCodec, is_clear
from tests.conftest import SHARED_DATA

SCHEMA = SHARED_DATA / "fhir-spec" / "r4" / "fhir.schema.json"
PHI_DATATYPES = {
    "HumanName": "name", "Address": "address", "ContactPoint": "telecom", "Identifier": "identifier",
    "Attachment": "attachment", "Reference": "reference", "Narrative": "free text", "Annotation": "free text",
    "string": "free text", "markdown": "free text", "xhtml": "free text", "base64Binary": "binary data",
    "date": "date", "dateTime": "date", "instant": "date", "ResourceList": "contained resource",
}
# Never looked into: the codec seals any clear value that carries one of these (test below).
CODEC_ENFORCED = {"id", "extension", "modifierExtension"}
# Judgement call (esus.security.phi docstring): the text of a terminology concept describes the code, not the person.
TERMINOLOGY_TEXT = {("CodeableConcept", "text"), ("Coding", "display"), ("Coding", "version")}
# Documented exceptions: the server's write instant (stored in clear anyway, as the item's `lu`) and the audit
# instant of a Provenance (for server-made records the same instant).
ALLOWED = {("Provenance", "recorded"), ("Meta", "lastUpdated")}


@functools.cache
def _definitions() -> dict[str, Any]:
    if not SCHEMA.exists():
        pytest.skip("../shared/fhir-spec/r4/fhir.schema.json is not next to the repo")
    return dict(json.loads(SCHEMA.read_text(encoding="utf-8"))["definitions"])


def _datatype(element: str, prop: dict[str, Any]) -> str | None:
    """The definition an element refers to; choice-type primitives are inlined, so read their name's suffix."""
    spec = prop.get("items", prop)
    if "enum" in spec or "const" in spec:
        return None
    if "$ref" in spec:
        return str(spec["$ref"]).rsplit("/", 1)[1]
    primitives = sorted((n for n, d in _definitions().items() if "properties" not in d), key=len, reverse=True)
    return next((p for p in primitives if element.lower().endswith(p.lower())), "unclassified inline type")


def phi_kinds(element: str, prop: dict[str, Any], seen: frozenset[str] = frozenset()) -> set[str]:
    """What PHI an element can hold, following its datatype down to primitives."""
    datatype = _datatype(element, prop)
    if datatype is None:
        return set()
    if datatype in PHI_DATATYPES:
        return {PHI_DATATYPES[datatype]}
    definition = _definitions().get(datatype)
    if definition is None:
        return {datatype}  # unknown: counts as PHI
    if "properties" not in definition or datatype in seen:
        return set()
    kinds: set[str] = set()
    for child, child_prop in definition["properties"].items():
        if child in CODEC_ENFORCED or child.startswith("_") or (datatype, child) in TERMINOLOGY_TEXT:
            continue
        kinds |= phi_kinds(child, child_prop, seen | {datatype})
    return kinds


def test_the_definitions_find_phi_where_expected() -> None:
    """The classifier is not vacuous: known PHI elements are found, known codes are not."""
    patient = _definitions()["Patient"]["properties"]
    assert phi_kinds("name", patient["name"]) == {"name"}
    assert phi_kinds("birthDate", patient["birthDate"]) == {"date"}
    assert phi_kinds("deceasedDateTime", patient["deceasedDateTime"]) == {"date"}
    assert "reference" in phi_kinds("contact", patient["contact"])
    assert {"name", "address", "telecom"} <= phi_kinds("contact", patient["contact"])
    assert phi_kinds("gender", patient["gender"]) == set()
    assert phi_kinds("active", patient["active"]) == set()
    observation = _definitions()["Observation"]["properties"]
    assert phi_kinds("code", observation["code"]) == set()
    assert phi_kinds("note", observation["note"]) == {"free text"}
    assert phi_kinds("effectivePeriod", observation["effectivePeriod"]) == {"date"}
    assert phi_kinds("performer", observation["performer"]) == {"reference"}
    assert phi_kinds("valueString", observation["valueString"]) == {"free text"}


@pytest.mark.parametrize("resource_type", sorted(SUPPORTED_TYPES))
def test_no_element_that_can_hold_phi_is_clear(resource_type: str) -> None:
    leaks = []
    for element, prop in _definitions()[resource_type]["properties"].items():
        if element == "meta" or not is_clear(resource_type, element) or (resource_type, element) in ALLOWED:
            continue
        kinds = phi_kinds(element, prop)
        if kinds or element.startswith("_"):
            leaks.append(f"{resource_type}.{element}: {sorted(kinds) or 'primitive extension'}")
    assert not leaks
    assert CLEAR_ELEMENTS[resource_type] <= set(_definitions()[resource_type]["properties"])


def test_only_the_label_part_of_meta_is_clear() -> None:
    meta = _definitions()["Meta"]["properties"]
    leaks = {e: phi_kinds(e, meta[e]) for e in META_CLEAR if ("Meta", e) not in ALLOWED}
    assert leaks == {e: set() for e in leaks}
    assert phi_kinds("source", meta["source"]) == set()  # a uri: sealed anyway, it may name a person or device
    assert "source" not in META_CLEAR and "extension" not in META_CLEAR


@pytest.fixture
def codec() -> ResourceCodec:
    secret = RootKeys.generate().serialize()
    return ResourceCodec(FieldCipher(KeyRing(lambda: secret, max_age_seconds=300)))


def test_meta_labels_clear_source_and_extensions_sealed(codec: ResourceCodec) -> None:
    ctx = FieldContext("acme", "Observation", "o1", 2)
    resource = {
        "resourceType": "Observation", "id": "o1",
        "meta": {"versionId": "2", "lastUpdated": "2024-01-01T00:00:00.000Z", "source": "urn:device:jane-doe-pump",
                 "profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-observation-lab"],
                 "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                 "tag": [{"system": "urn:t", "code": "x", "extension": [{"url": "u", "valueString": "John Smith"}]}]},
        "status": "final",
        "code": {"coding": [{"code": "1-8", "extension": [{"url": "u", "valueString": "Jane Doe"}]}]},
        "category": [{"text": "Laboratory"}],
    }
    clear, sealed = codec.encode(ctx, resource)
    assert codec.decode(ctx, clear, sealed) == resource
    assert list(codec.decode(ctx, clear, sealed)["meta"]) == list(resource["meta"])
    for secret in ("jane-doe-pump", "John Smith", "Jane Doe"):
        assert secret not in clear
    assert set(sealed) == {"meta.source", "meta.tag", "code"}
    assert '"R"' in clear and "us-core-observation-lab" in clear and "Laboratory" in clear
    stored = json.loads(clear)
    del stored["meta"]["source"]  # a sealed meta element removed from the clear document
    with pytest.raises(IntegrityFailure):
        codec.decode(ctx, json.dumps(stored), sealed)
    with pytest.raises(IntegrityFailure):  # or its envelope dropped
        codec.decode(ctx, clear, {k: v for k, v in sealed.items() if k != "meta.source"})


def test_a_sealed_meta_element_cannot_be_moved_to_another_element(codec: ResourceCodec) -> None:
    ctx = FieldContext("acme", "Patient", "p1", 1)
    clear, sealed = codec.encode(ctx, {"resourceType": "Patient", "id": "p1", "meta": {"source": "urn:a"},
                                       "name": [{"text": "x"}]})
    moved = json.loads(clear)
    moved["meta"]["profile"] = None
    del moved["meta"]["source"]
    with pytest.raises(IntegrityFailure):
        codec.decode(ctx, json.dumps(moved), {"meta.profile": sealed["meta.source"], "name": sealed["name"]})
