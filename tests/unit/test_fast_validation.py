"""The fast acceptance check (`esus.domain.fast_validation.proves_valid`) is sound against fhir.resources.

Contract: `proves_valid(t, body)` is True only when `get_fhir_model_class(t).model_validate(deepcopy(body))` raises
nothing. False is always allowed (the server then asks fhir.resources, which stays the authority for every rejection
and every message); True on a body fhir.resources rejects would store invalid data. So every test here asserts
`proves_valid(t, body) => reference_accepts(t, body)` on: every real resource (official R4 examples, Synthea),
a table of near misses, bodies made by 1-3 random mutations of ~35 valid resources, and generated values of every
primitive type at a known path. The coverage tests keep the fast path from being a no-op: it proves most real
resources valid. proves_valid must also never raise and never change its input."""

from __future__ import annotations

import calendar
import copy
import functools
import json
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fhir.resources.R4B import get_fhir_model_class
from fhir_core.types import FhirBase, FhirElementOrResourceBase
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from pydantic import UUID4

from esus.domain.fast_validation import proves_valid
from esus.domain.fhir import SUPPORTED_TYPES
from tests.conftest import EXAMPLES, SYNTHEA, examples, nested_resources
from tests.fhir_minimal import minimal_instance

SYNTHEA_FILES = sorted(SYNTHEA.glob("*.json"))
if not os.environ.get("ESUS_FULL_CORPUS"):
    SYNTHEA_FILES = SYNTHEA_FILES[:4]  # `make test-full` walks all of them

# The fast path must prove at least this share of the Synthea resources valid (each entry's resource).
SYNTHEA_COVERAGE = 0.98  # measured: 100% of the sample and of the whole corpus (3,659)
# ... and every official Patient example the reference accepts that has no contained resources and no extensions on
# primitive lists (`_given: [...]`).
PATIENT_COVERAGE = 1.0

TYPES = sorted(SUPPORTED_TYPES)
XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'
UUID_V4 = "urn:uuid:c757873d-ec9a-4326-a141-556f43239520"


def _settings(ci_count: int) -> settings:
    return settings(max_examples=examples(ci_count),
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def reference_error(resource_type: str, body: Any) -> str | None:
    """What fhir.resources says about `body`: None when it accepts it, else the first words of its complaint."""
    try:
        get_fhir_model_class(resource_type).model_validate(copy.deepcopy(body))
    # ValidationError, ValueError and TypeError are the reference's rejections; anything else (a KeyError for an
    # unknown contained resourceType) is a crash the server maps to 500 - never something to prove valid.
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"[:400]
    return None


def reference_accepts(resource_type: str, body: Any) -> bool:
    return reference_error(resource_type, body) is None


def assert_sound(resource_type: str, body: Any, context: str = "") -> bool:
    """proves_valid => reference_accepts; proves_valid leaves its input alone. Returns proves_valid's answer."""
    snapshot = copy.deepcopy(body)
    proved = proves_valid(resource_type, body)
    assert isinstance(proved, bool), f"proves_valid returned {proved!r}"
    assert body == snapshot, "proves_valid changed its input"
    if proved:
        error = reference_error(resource_type, body)
        assert error is None, (
            f"proves_valid({resource_type!r}, ...) is True but fhir.resources rejects it: {error}\n{context}\n"
            f"body: {json.dumps(body, ensure_ascii=True, default=repr)[:3000]}")
    return proved


# --------------------------------------------------------------------------------------------------------------------
# Real data


def _resources(value: Any) -> Iterator[dict[str, Any]]:
    """A resource and every resource inside it, served types only."""
    return (r for r in nested_resources(value) if r["resourceType"] in SUPPORTED_TYPES)


@functools.cache
def _load(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _corpus() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in [*sorted(EXAMPLES.glob("*.json")), *SYNTHEA_FILES]:
        for resource in _resources(_load(str(path))):
            yield str(path.name), resource


def test_sound_on_every_real_resource() -> None:
    """Each real resource as it is, under another type's name, and with an unknown element in its last object."""
    count = proved = 0
    for name, resource in _corpus():
        rtype = resource["resourceType"]
        proved += assert_sound(rtype, resource, f"from {name}")
        assert_sound("Observation" if rtype == "Patient" else "Patient", resource, f"from {name}, other type")
        extended = copy.deepcopy(resource)
        _objects(extended)[-1][0]["unknownElement"] = "x"
        assert_sound(rtype, extended, f"from {name}, with an unknown element")
        count += 1
    print(f"real resources proved valid: {proved}/{count}")
    assert count > 500


# Bodies fhir.resources rejects, each next to a valid sibling a fast path could confuse it with. The comment says
# what the reference does; the fast path must answer False on every one.
def _obs(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, **fields}


def _pat(**fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **fields}


NEAR_MISSES: list[tuple[str, dict[str, Any]]] = [
    ("Patient", {"resourceType": "Observation"}),
    ("Patient", _pat(resourceType=1)),
    ("Patient", _pat(id="")), ("Patient", _pat(id="a" * 256)), ("Patient", _pat(id="abc\n")),
    ("Patient", _pat(id="a_b")), ("Patient", _pat(id=1)),
    ("Patient", _pat(gender="")), ("Patient", _pat(gender=" male")), ("Patient", _pat(gender="a  b")),
    ("Patient", _pat(gender="male\n")), ("Patient", _pat(gender="a\u00a0\u00a0b")), ("Patient", _pat(gender=True)),
    ("Patient", _pat(name=[{"family": ""}])), ("Patient", _pat(name=[{"family": "\x0b"}])),
    ("Patient", _pat(name=[{"family": "\u2003"}])), ("Patient", _pat(name=[{"family": "\x85"}])),
    ("Patient", _pat(name=[{"family": "\ud800"}])), ("Patient", _pat(name=[{"family": 1}])),
    ("Patient", _pat(name=[None])), ("Patient", _pat(name={"family": "x"})), ("Patient", _pat(name=[{"given": "x"}])),
    ("Patient", _pat(active=2)), ("Patient", _pat(active="maybe")),
    ("Patient", _pat(birthDate="2020-02-30")), ("Patient", _pat(birthDate="2019-02-29")),
    ("Patient", _pat(birthDate="2020-13")), ("Patient", _pat(birthDate="0000")),
    ("Patient", _pat(birthDate="20200101")),
    ("Patient", _pat(birthDate="2020-01-01T00:00:00Z")), ("Patient", _pat(birthDate="2020-01-01\n")),
    ("Patient", _pat(birthDate=86401)),
    ("Patient", _pat(deceasedDateTime="2020-01-01T10:00:00")),
    ("Patient", _pat(deceasedDateTime="2020-01-01T24:00:00Z")),
    ("Patient", _pat(deceasedDateTime="2016-02-30T23:59:60Z")), ("Patient", _pat(deceasedDateTime="2020-02-30")),
    ("Patient", _pat(deceasedDateTime="2020-00")), ("Patient", _pat(deceasedDateTime="2020-01-01T10:00Z")),
    ("Patient", _pat(deceasedDateTime="2020-01-01T10:00:00+14:30")), ("Patient", _pat(deceasedDateTime=True)),
    ("Patient", _pat(deceasedBoolean=True, deceasedDateTime="2020")),
    ("Patient", _pat(_birthDate={})), ("Patient", _pat(_birthDate={"id": 1})),
    ("Patient", _pat(_birthDate=[{"id": "a"}])),
    ("Patient", _pat(_birthDate={"extension": [{"valueString": "y"}]})), ("Patient", _pat(_name={"id": "a"})),
    ("Patient", _pat(_birthDate={"id": "a"}, birthDate__ext={"id": "b"})), ("Patient", _pat(class_fhir="x")),
    ("Patient", _pat(fhir_comments=1)), ("Patient", _pat(extension=[{}])),
    ("Patient", _pat(extension=[{"url": "http://x", "valueString": "a", "valueInteger": 1}])),
    ("Patient", _pat(text={"status": "generated"})), ("Patient", _pat(text={"div": XHTML})),
    ("Patient", _pat(contained=[{"resourceType": "Foo"}])), ("Patient", _pat(contained=[{"resourceType": "Quantity"}])),
    ("Patient", _pat(contained=[{"resourceType": None}])), ("Patient", _pat(contained=[{"resourceType": 1}])),
    ("Patient", _pat(contained={"resourceType": "Patient"})),
    ("Patient", _pat(managingOrganization=[{"reference": "Organization/1"}])),
    ("Patient", _pat(photo=[{"data": "abc"}])), ("Patient", _pat(photo=[{"data": "YQ"}])),
    ("Patient", _pat(photo=[{"data": 1}])), ("Patient", _pat(photo=[{"size": -1}])),
    ("Patient", _pat(photo=[{"size": 1.5}])), ("Patient", _pat(photo=[{"size": 2**31}])),
    ("Patient", _pat(multipleBirthInteger=2**31)), ("Patient", _pat(multipleBirthInteger="0x10")),
    ("Observation", {"resourceType": "Observation", "code": {"text": "x"}}),
    ("Observation", _obs(status=None)), ("Observation", {"resourceType": "Observation", "status": "final"}),
    ("Observation", {"resourceType": "Observation", "code": {"text": "x"}, "_status": {"id": "x"}}),
    ("Observation", _obs(valueQuantity={"value": True})), ("Observation", _obs(valueQuantity={"value": "01"})),
    ("Observation", _obs(valueQuantity={"value": "+1"})), ("Observation", _obs(valueQuantity={"value": " 1"})),
    ("Observation", _obs(valueQuantity={"value": "1."})), ("Observation", _obs(valueQuantity={"value": ".5"})),
    ("Observation", _obs(valueQuantity={"value": float("inf")})),
    ("Observation", _obs(valueTime="10:00")), ("Observation", _obs(valueTime="25:00:00")),
    ("Observation", _obs(valueTime="10:00:00Z")),
    ("Observation", _obs(valueInteger=-(2**31) - 1)), ("Observation", _obs(valueInteger=1.5)),
    ("Observation", _obs(issued="2020-01-01")), ("Observation", _obs(issued="2020-01-01T10:00:00")),
    ("Observation", _obs(issued="2020-02-30T10:00:00Z")),
    ("Observation", _obs(valueString="x", valueQuantity={"value": 1})), ("Observation", _obs(valueString="")),
    ("Observation", _obs(component=[{"valueString": "x"}])),
    ("Patient", _pat(text={"status": "generated", "div": 1})),
    ("Patient", _pat(extension=[{"url": "http://x", "valueUuid": "urn:uuid:c757873d-ec9a-1326-a141-556f43239520"}])),
    ("Patient", _pat(extension=[{"url": "http://x", "valueOid": "urn:oid:1.02"}])),
]


def _near_id(n: int) -> str:
    resource_type, body = NEAR_MISSES[n]
    return f"{n}-{resource_type}-{'-'.join(k for k in body if k != 'resourceType')}"


@pytest.mark.parametrize(("resource_type", "body"), NEAR_MISSES, ids=[_near_id(n) for n in range(len(NEAR_MISSES))])
def test_near_misses_are_not_proved_valid(resource_type: str, body: dict[str, Any]) -> None:
    assert not reference_accepts(resource_type, body), "the table holds only bodies fhir.resources rejects"
    assert not proves_valid(resource_type, body)


def test_proves_every_plain_official_patient_valid() -> None:
    """Every official Patient example without contained resources or primitive-list extensions is proved."""
    plain = [path.name for path in sorted(EXAMPLES.glob("Patient-*.json"))
             if reference_accepts("Patient", _load(str(path))) and _plain(_load(str(path)))]
    proved = [name for name in plain if proves_valid("Patient", _load(str(EXAMPLES / name)))]
    print(f"official Patient examples proved: {len(proved)}/{len(plain)}")
    assert len(plain) >= 15
    assert len(proved) >= PATIENT_COVERAGE * len(plain), sorted(set(plain) - set(proved))


def _plain(value: Any) -> bool:
    if isinstance(value, dict):
        return all(key != "contained" and not (key.startswith("_") and isinstance(item, list)) and _plain(item)
                   for key, item in value.items())
    if isinstance(value, list):
        return all(_plain(item) for item in value)
    return True


def test_proves_most_synthea_resources_valid() -> None:
    accepted = proved = 0
    by_type: dict[str, list[int]] = {}
    for path in SYNTHEA_FILES:
        for entry in _load(str(path))["entry"]:
            resource = entry["resource"]
            counts = by_type.setdefault(resource["resourceType"], [0, 0])
            if not reference_accepts(resource["resourceType"], resource):
                continue
            accepted += 1
            counts[0] += 1
            if proves_valid(resource["resourceType"], resource):
                proved += 1
                counts[1] += 1
    print(f"Synthea resources proved: {proved}/{accepted} = {proved / max(accepted, 1):.1%}; by type (proved/"
          f"accepted): {', '.join(f'{t} {p}/{a}' for t, (a, p) in sorted(by_type.items()))}")
    assert accepted > 300
    assert proved >= SYNTHEA_COVERAGE * accepted


# --------------------------------------------------------------------------------------------------------------------
# The model's shape (read from the fhir.resources classes, independently of the fast path's generated table)


@dataclass(frozen=True)
class Element:
    name: str  # the python field name (`class_fhir`, `birthDate__ext`)
    kind: str  # "primitive", "complex", "resource", "extension" (a `_field` sibling), "other"
    type: Any  # the primitive's name or the element's model class
    many: bool
    choice: str | None


def _unwrap(annotation: Any) -> tuple[Any, bool] | None:
    many = False
    while True:
        origin = typing.get_origin(annotation)
        if origin in (typing.Union, types.UnionType):
            args = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(args) != 1:
                return None
            annotation = args[0]
        elif origin is list:
            many, annotation = True, typing.get_args(annotation)[0]
        else:
            return annotation, many


def _primitive_name(annotation: Any) -> str | None:
    if annotation is bool:
        return "boolean"
    if annotation is UUID4:
        return "uuid"
    for meta in getattr(annotation, "__metadata__", ()):
        name = getattr(meta, "__visit_name__", None)
        if name:
            return str(name)
    return None


@functools.cache
def _elements(model: type) -> dict[str, Element]:
    """JSON name -> Element for a model class."""
    found: dict[str, Element] = {}
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        unwrapped = _unwrap(info.annotation)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        choice = extra.get("one_of_many")
        kind, target, many = "other", None, False
        if unwrapped is not None:
            annotation, many = unwrapped
            primitive = _primitive_name(annotation)
            if primitive:
                kind, target = "primitive", primitive
            elif isinstance(annotation, type) and issubclass(annotation, FhirBase):
                target = annotation.get_model_klass()
                kind = ("resource" if issubclass(annotation, FhirElementOrResourceBase) else
                        "extension" if target.__name__ == "FHIRPrimitiveExtension" else "complex")
        found[info.alias or name] = Element(name, kind, target, many, str(choice) if choice else None)
    return found


@functools.cache
def _required(model: type) -> frozenset[str]:
    """JSON names the model requires: required complex fields, required primitives, required choice groups."""
    elements = _elements(model)
    names = {alias for alias, e in elements.items() if model.model_fields[e.name].is_required()}  # type: ignore
    names |= {name for name, _ in model.get_required_fields(None)}  # type: ignore[attr-defined]
    return frozenset(names)


def _model_for_resource(value: Any) -> type | None:
    rtype = value.get("resourceType") if isinstance(value, dict) else None
    if isinstance(rtype, str) and rtype in SUPPORTED_TYPES:
        return get_fhir_model_class(rtype)  # type: ignore[no-any-return]
    return None


@dataclass
class Slot:
    """One place in a body: `parent[key]`, with what the model says about it (None where the body left the model)."""
    parent: Any
    key: str | int
    owner: type | None
    element: Element | None
    item: bool = False  # an item of a list element


def _slots(value: Any, model: type | None) -> Iterator[Slot]:
    if isinstance(value, dict):
        elements = _elements(model) if model else {}
        for key, item in list(value.items()):
            element = elements.get(key)
            yield Slot(value, key, model, element)
            if element and element.many and isinstance(item, list):
                for n, sub in enumerate(item):
                    yield Slot(item, n, model, element, item=True)
                    yield from _slots(sub, _child_model(element, sub))
            else:
                yield from _slots(item, _child_model(element, item) if element else None)
    elif isinstance(value, list):
        for item in value:
            yield from _slots(item, None)


def _child_model(element: Element, value: Any) -> type | None:
    if element.kind == "resource":
        return _model_for_resource(value)
    if element.kind in ("complex", "extension") and isinstance(element.type, type):
        return element.type  # type: ignore[no-any-return]
    return None


def _objects(body: dict[str, Any]) -> list[tuple[dict[str, Any], type | None]]:
    """Every JSON object in the body with its model class (None where unknown), the root first."""
    found = [(body, _model_for_resource(body))]
    found += [(s.parent[s.key], _child_model(s.element, s.parent[s.key]) if s.element else None)
              for s in _slots(body, found[0][1]) if isinstance(s.parent[s.key], dict)]
    return found


# --------------------------------------------------------------------------------------------------------------------
# Values

VALID: dict[str, Any] = {
    "boolean": True, "integer": 3, "positiveInt": 2, "unsignedInt": 0, "decimal": 1.5, "string": "x",
    "markdown": "*x*", "code": "x", "id": "x-1", "uri": "http://example.org/x", "url": "http://example.org/x",
    "canonical": "http://example.org/x|1", "oid": "urn:oid:1.2.3", "uuid": UUID_V4, "date": "2020-02-29",
    "dateTime": "2020-01-01T10:00:00+01:00", "instant": "2020-01-01T10:00:00.123Z", "time": "10:00:00",
    "base64Binary": "eA==", "xhtml": XHTML, "integer64": 3,
}
TRICKY_STRINGS = [
    "", " ", "   ", "\t", "\n", "\r\n", "\x0b", "\x0c", "\x1c", "\x1c\x1c", "\x85", "\xa0", "\u2003", "\u3000",
    "\u2028", "\x00", "\ud800", "a\ud800", "a" * 65, "a" * 256, "b" * 5000, " a", "a ", "a  b", "a\tb", "a\nb",
    "abc\n", "a\u00a0b", "a\u00a0\u00a0b", "\u00e9", "\u03a9\u00e9", "\u65e5\u672c", "\U0001f600", "2020", "2020-02",
    "2020-02-30", "2020-13", "2019-02-29", "2020-02-29", "0000", "0001-01-01", "2020-1-1", "2020-01-01T10:00:00",
    "2020-01-01T10:00:00Z", "2020-01-01T24:00:00Z", "2016-12-31T23:59:60Z", "2016-12-31T10:00:60Z",
    "2020-01-01T10:00:00.123456789Z", "2020-01-01T10:00:00+14:00", "2020-01-01T10:00:00+14:30",
    "2020-01-01T10:00:00-00:00", "2020-01-01T10:00Z", "2020-01-01 10:00:00Z", "2020-01-01t10:00:00z", "10:00",
    "10:00:00", "25:00:00", "23:59:60", "10:00:00Z", "10:00:00.5", "1e400", "-0", "0", "01", "+1", "1.5", "1.", ".5",
    "1E5", "0x10", "1_000", " 1", "Infinity", "NaN", "true", "yes", "on", "null", UUID_V4,
    "urn:uuid:c757873d-ec9a-1326-a141-556f43239520", "c757873d-ec9a-4326-a141-556f43239520",
    "urn:uuid:C757873D-EC9A-4326-A141-556F43239520", "urn:uuid:...", "urn:oid:1.2", "urn:oid:1.02", "urn:oid:3.1",
    "not a uri with spaces", "http://", "http://a b", "/a b", "Patient/1", "#p1", "string", "mailto:a@b", "abc",
    "====", "YQ", "YQ==", "Y Q = =", "!!!!", "-_-_", "eA==\n", "<div>x</div>", XHTML, XHTML[:-6],
    '<div xmlns="http://www.w3.org/1999/xhtml"><script>x</script></div>', "Patient", "Foo",
]
TRICKY_NUMBERS: list[Any] = [
    True, False, 0, 1, -1, 2, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1, 2**63, -(2**63) - 1, 10**400, 1.0, 1.5,
    -0.0, 0.1, 1e-7, 1e308, -1e308, 5e-324,
]
OTHER_JSON: list[Any] = [0, 1, -1, 1.5, True, False, "x", "", {}, [], {"id": "x"}, [1], ["x"], [{}], [None], None]
UNKNOWN_KEYS = ["foo", "Foo", "_foo", "unknownElement", "resource_type", "resourceType", "fhir_comments", "",
                "__ext", "id__ext", "value", "valueFoo", "_id", "extension_", "Extension", "ID"]
PRIMITIVE_EXTENSIONS: list[Any] = [
    {"extension": [{"url": "http://x", "valueString": "y"}]}, {"id": "e1"}, {"fhir_comments": "c"}, {}, {"id": 1},
    {"extension": []}, {"extension": [{"url": "http://x"}]}, {"extension": [{"valueString": "y"}]},
    {"extension": [{"url": "http://x", "valueString": ""}]}, {"foo": 1}, None, [], [{"id": "e1"}], "x", 1,
]
STRINGS = st.text(st.characters(codec=None, exclude_categories=()), max_size=30)
LEAVES = st.one_of(STRINGS, st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.booleans())
REGEXES = {  # the FHIR regexes, and looser ones next to them (most of what they make is near a valid value)
    "date": [r"([0-9]([0-9]([0-9][1-9]|[1-9]0)|[1-9]00)|[1-9]000)(-(0[1-9]|1[0-2])(-(0[1-9]|[1-2][0-9]|3[0-1]))?)?",
             r"[0-9]{1,5}(-[0-9]{1,2}(-[0-9]{1,2})?)?\n?"],
    "dateTime": [r"[12][0-9]{3}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01])(T([01][0-9]|2[0-3]):[0-5][0-9]:"
                 r"([0-5][0-9]|60)(\.[0-9]{1,12})?(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00)))?)?)?",
                 r"[0-9]{4}-[0-9]{2}-[0-9]{2}([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{0,12})?)?([Zz]|[+-][0-9]{2}:?"
                 r"[0-9]{2})?)?"],
    "instant": [r"[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)"
                r"(\.[0-9]{1,12})?(Z|[+-]((0[0-9]|1[0-3]):[0-5][0-9]|14:00))",
                r"[0-9]{4}-[0-9]{2}-[0-9]{2}(T[0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{0,12})?)?(Z|[+-][0-9]{2}:[0-9]{2})?)?"],
    "time": [r"([01][0-9]|2[0-3]):[0-5][0-9]:([0-5][0-9]|60)(\.[0-9]{1,12})?",
             r"[0-9]{1,2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{0,12})?)?Z?"],
    "decimal": [r"-?(0|[1-9][0-9]{0,20})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?",
                r"[+-]?[0-9]{0,3}\.?[0-9]{0,3}([eE][+-]?[0-9]{0,4})? ?"],
    "integer": [r"-?(0|[1-9][0-9]{0,10})", r"[+-]?0?[0-9]{0,11}(\.0)?"],
    "unsignedInt": [r"0|[1-9][0-9]{0,10}", r"[+-]?0?[0-9]{0,11}"],
    "positiveInt": [r"\+?[1-9][0-9]{0,10}", r"[+-]?0?[0-9]{0,11}"],
    "id": [r"[A-Za-z0-9\-.]{1,64}", r"[A-Za-z0-9\-._ ]{0,300}\n?"],
    "code": [r"[^\s]+( [^\s]+)*", r"\s?[a-z]{0,3}(\s{1,2}[a-z]{1,3}){0,2}\s?"],
    "string": [r"[ \r\n\t\S]+", r"\s{0,3}"],
    "markdown": [r"[ \r\n\t\S]+", r"\s{0,3}"],
    "uri": [r"\S*", r"[a-z:/ ]{0,12}"],
    "url": [r"https?://[a-z]{1,8}(\.[a-z]{2,3})?(/[A-Za-z0-9]{0,5})*", r"[a-z:/ #?]{0,12}"],
    "canonical": [r"https?://[a-z]{1,8}/[A-Za-z]{1,8}(\|[0-9.]{1,5})?(#[a-z]{1,3})?", r"[a-z:/| ]{0,12}"],
    "oid": [r"urn:oid:[0-2](\.(0|[1-9][0-9]{0,5})){1,6}", r"(urn:oid:)?[0-9]{0,2}(\.[0-9]{0,3}){0,4}"],
    "uuid": [r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
             r"(urn:uuid:)?[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}"],
    "base64Binary": [r"(\s*([0-9a-zA-Z+=]){4}\s*)+", r"[A-Za-z0-9+/=_\- \n]{0,12}"],
    "xhtml": [r'<div xmlns="http://www\.w3\.org/1999/xhtml">[a-z <>/&;]{0,20}</div>', r"(<div>)?[a-z <>/]{0,12}"],
}


NEAR: dict[str, list[Any]] = {  # per type: values next to the border of what the reference accepts
    "boolean": ["true", "false", 1, 0, 1.0, 2, "yes", "on", "maybe", None],
    "integer": ["1", " 1 ", "1_000", "+1", "01", "0x10", 1.0, 1.5, True, 2**31, 2**31 - 1, -(2**31) - 1, "1e3"],
    "unsignedInt": [-1, 0, "0", "-0", 2**31, 1.0, True, False],
    "positiveInt": [0, -1, "1", "+1", 1.0, True, False, 2**31],
    "decimal": ["1.5", "-0", "01", "+1", "1.", ".5", "1e400", 10**400, 1e308, True, "NaN", "Infinity", " 1", "1 ",
                "0.0000000000000000000001", 1e-7, -0.0],
    "string": ["", " ", "\x0b", "a\x0b", "\x0b ", "\x1c", "\u2003", "\x85", "\ud800", "\x00"],
    "markdown": ["", " ", "\n", "\x0b", "\ud800", "\u3000"],
    "code": ["a  b", "a\tb", "a\nb", " a", "a ", "a\u00a0b", "a\u00a0\u00a0b", "a\x1c\x1cb", "", "a b", "a\x0bb",
             "\u2003", "a\u2003\u2003b"],
    "id": ["a" * 64, "a" * 65, "a" * 255, "a" * 256, "abc\n", "a_b", "a b", "", "1", "-", ".", "\u00e9"],
    "uri": ["", " ", "a b", "http://a b", "\ud800", "urn:uuid:x", "#x", "a\n", "\u00e9", "\x00"],
    "url": ["", " ", "a b", "http://a b", "/a b", "\ud800", "#x", "a\n", "http://", "string", "Patient/1"],
    "canonical": ["", " ", "a b", "http://x|1 2", "\ud800", "#x", "a\n"],
    "oid": ["urn:oid:1.2", "urn:oid:1", "urn:oid:1.02", "urn:oid:3.1", "urn:oid:1.2\n", "1.2.3", "urn:oid:1.2.",
            "URN:OID:1.2"],
    "uuid": [UUID_V4, "urn:uuid:c757873d-ec9a-1326-a141-556f43239520", UUID_V4.upper(), UUID_V4[9:],
             "urn:uuid:{" + UUID_V4[9:] + "}", "urn:uuid:" + UUID_V4[9:].replace("-", ""), UUID_V4 + "\n",
             "uuid:" + UUID_V4[9:], "urn:uuid:c757873d-ec9a-4326-c141-556f43239520"],
    "base64Binary": ["abc", "====", "YQ", "YQ=", "YQ==", "YQ==YQ==", "Y Q = =", "!!!!", "-_-_", "eA==\n", "",
                     "\u00e9YQ==", "YQ==\u00e9", "a===", "ab=c"],
    "xhtml": ["", "x", "<div>x</div>", XHTML, 1, "\ud800", XHTML + " ", "<p>x</p>"],
}


@st.composite
def temporal(draw: Draw, primitive: str) -> str:
    """date, dateTime, instant and time strings built from parts that are mostly valid: invalid calendar days
    (2019-02-29, 2020-04-31), hour 24, second 60, long fractions, missing or odd zones come up often."""
    year = draw(st.integers(0, 9999) | st.sampled_from([1, 1900, 2000, 2016, 2019, 2020, 2100]))
    month = draw(st.integers(1, 12) | st.sampled_from([0, 13, 2, 2, 4, 6, 9, 11]))
    last = calendar.monthrange(max(year, 1), month)[1] if 1 <= month <= 12 else 31
    day = draw(st.sampled_from([last, last + 1]) | st.integers(1, 31) | st.sampled_from([0, 32]))  # the month's
    # last day and the day after it are the border
    full = f"{year:04d}-{month:02d}-{day:02d}"
    date = draw(st.sampled_from([f"{year:04d}", f"{year:04d}-{month:02d}", *[full] * 5, f"{year:04d}-{month}-{day}",
                                 f"{year:03d}-{month:02d}-{day:02d}"]))
    hour = draw(st.integers(0, 23) | st.sampled_from([24, 25]))
    minute = draw(st.integers(0, 59) | st.just(60))
    second = draw(st.integers(0, 59) | st.sampled_from([60, 61]))
    fraction = draw(st.sampled_from(["", "", ".", ".5", ".123", ".123456", ".1234567", ".123456789",
                                     ".123456789012"]))
    clock = draw(st.sampled_from([f"{hour:02d}:{minute:02d}:{second:02d}{fraction}"] * 3 + [
        f"{hour:02d}:{minute:02d}", f"{hour}:{minute:02d}:{second:02d}"]))
    zone = draw(st.sampled_from(["Z", "Z", "", "", "", "+00:00", "-00:00", "+01:00", "-05:30", "+14:00", "+14:30",
                                 "-13:59", "+0530", "z", "+24:00", " Z"]))
    separator = draw(st.sampled_from(["T", "T", "T", " ", "t"]))
    if primitive == "time":
        return draw(st.sampled_from([clock, clock + zone]))
    if primitive == "date":
        return draw(st.sampled_from([date, date, date + separator + clock + zone]))
    return draw(st.sampled_from([date + separator + clock + zone, date + separator + clock + zone, date]))


def values_for(primitive: str) -> st.SearchStrategy[Any]:
    """Generated values for a primitive type: its regex's and near misses, values on its border, any text, tricky
    strings and numbers."""
    regexes = REGEXES.get(primitive, [])
    others = st.one_of(*(st.from_regex(regex, fullmatch=True) for regex in regexes), st.sampled_from(TRICKY_STRINGS),
                       st.sampled_from(TRICKY_NUMBERS), LEAVES, st.uuids().map(lambda u: f"urn:uuid:{u}"),
                       st.sampled_from([VALID.get(primitive, "x"), *NEAR.get(primitive, [])]))
    if primitive in ("date", "dateTime", "instant", "time"):
        return temporal(primitive) | others  # half of them from parts
    return others


def _valid_value(element: Element) -> Any:
    if element.kind == "primitive":
        value = VALID.get(element.type, "x")
    elif element.kind == "resource":
        value = {"resourceType": "Basic", "code": {"text": "x"}}
    else:
        value = {"id": "c1"}
    return [value] if element.many else value


@functools.cache
def _minimal(resource_type: str) -> dict[str, Any] | None:
    try:
        return minimal_instance(resource_type)
    except AssertionError:
        return None


# --------------------------------------------------------------------------------------------------------------------
# Mutations: each changes a private copy of a seed in place and says what it did (None: it found nothing to change).
# Values drawn from the shared tables are deep-copied: a later mutation must not change the tables.

Draw = typing.Callable[[st.SearchStrategy[Any]], Any]


def _pick_slot(draw: Draw, body: dict[str, Any], predicate: typing.Callable[[Slot], bool]) -> Slot | None:
    slots = [s for s in _slots(body, _model_for_resource(body)) if predicate(s)]
    return draw(st.sampled_from(slots)) if slots else None


def _pick_object(draw: Draw, body: dict[str, Any],
                 predicate: typing.Callable[[dict[str, Any], type | None], bool]
                 ) -> tuple[dict[str, Any], type | None] | None:
    objects = [(o, m) for o, m in _objects(body) if predicate(o, m)]
    return draw(st.sampled_from(objects)) if objects else None  # type: ignore[no-any-return]


def m_delete_key(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: isinstance(s.key, str))
    if slot is None:
        return None
    del slot.parent[slot.key]
    return f"delete {slot.key}"


def m_delete_required(draw: Draw, body: dict[str, Any]) -> str | None:
    picked = _pick_object(draw, body, lambda o, m: m is not None and bool(_required(m) & o.keys()))
    if picked is None:
        return None
    obj, model = picked
    assert model is not None
    key = draw(st.sampled_from(sorted(_required(model) & obj.keys())))
    if draw(st.integers(0, 2)) == 0:
        obj[key] = draw(st.sampled_from([None, [], {}, ""]))
        return f"set required {model.__name__}.{key} to {obj[key]!r}"
    del obj[key]
    if draw(st.booleans()) and _elements(model)[key].kind == "primitive":  # "present" through an extension only
        obj["_" + key] = copy.deepcopy(draw(st.sampled_from(PRIMITIVE_EXTENSIONS)))
        return f"replace required {model.__name__}.{key} by _{key}={obj['_' + key]!r}"
    return f"delete required {model.__name__}.{key}"


def m_unknown_key(draw: Draw, body: dict[str, Any]) -> str | None:
    obj, model = draw(st.sampled_from(_objects(body)))
    key = draw(st.sampled_from(UNKNOWN_KEYS))
    if model is not None and draw(st.booleans()):
        elements = _elements(model)
        keys = [k for k, e in elements.items() if e.kind != "extension"]
        key = draw(st.sampled_from(["_" + k for k in keys if elements[k].kind != "primitive"] or UNKNOWN_KEYS))
    obj[key] = copy.deepcopy(draw(st.sampled_from(OTHER_JSON)))
    return f"add {key}={obj[key]!r} to {getattr(model, '__name__', '?')}"


def _python_name_differs(slot: Slot) -> bool:
    return isinstance(slot.key, str) and slot.element is not None and slot.element.name != slot.key


def m_python_name(draw: Draw, body: dict[str, Any]) -> str | None:
    """A key in its python form (`_birthDate` -> `birthDate__ext`, `class` -> `class_fhir`), alone or next to the
    JSON form. fhir.resources accepts the python form alone (populate_by_name) but not both."""
    slot = _pick_slot(draw, body, _python_name_differs) if draw(st.booleans()) else None
    slot = slot or _pick_slot(draw, body, lambda s: isinstance(s.key, str))
    if slot is None:
        return None
    key = str(slot.key)
    options = [key + "_fhir", key + "__ext", "resource_type" if key == "resourceType" else key.lower()]
    if key.startswith("_"):
        options.append(key[1:] + "__ext")
    if slot.element and slot.element.name != key:
        options = [slot.element.name] * len(options) + options
    new = draw(st.sampled_from(options))
    value = slot.parent.pop(key) if draw(st.booleans()) else copy.deepcopy(slot.parent[key])  # rename, or both
    slot.parent[new] = value
    return f"python name {key} -> {new}"


def m_none(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: True)
    if slot is None:
        return None
    slot.parent[slot.key] = None
    return f"set {slot.key} to null"


def m_wrap(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: not isinstance(s.parent[s.key], list))
    if slot is None:
        return None
    slot.parent[slot.key] = [slot.parent[slot.key]]
    return f"wrap {slot.key} in a list"


def m_unwrap(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: isinstance(s.parent[s.key], list) and len(s.parent[s.key]) > 0)
    if slot is None:
        return None
    slot.parent[slot.key] = slot.parent[slot.key][0]
    return f"unwrap {slot.key}"


def m_list_null(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: isinstance(s.parent[s.key], list))
    if slot is None:
        return None
    items = slot.parent[slot.key]
    items.insert(draw(st.integers(0, len(items))), None)
    return f"insert null into {slot.key}"


def m_other_json(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: True)
    if slot is None:
        return None
    slot.parent[slot.key] = copy.deepcopy(draw(st.sampled_from(OTHER_JSON)))
    return f"set {slot.key} to {slot.parent[slot.key]!r}"


def m_tricky_string(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: isinstance(s.parent[s.key], str))
    if slot is None or draw(st.integers(0, 9)) == 0:
        slot = _pick_slot(draw, body, lambda s: True)
    if slot is None:
        return None
    slot.parent[slot.key] = draw(st.sampled_from(TRICKY_STRINGS))
    return f"set {slot.key} to {slot.parent[slot.key]!r}"


def m_tricky_number(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: isinstance(s.parent[s.key], int | float | bool))
    slot = slot or _pick_slot(draw, body, lambda s: True)
    if slot is None:
        return None
    slot.parent[slot.key] = draw(st.sampled_from(TRICKY_NUMBERS))
    return f"set {slot.key} to {slot.parent[slot.key]!r}"


def m_typed_value(draw: Draw, body: dict[str, Any]) -> str | None:
    """A primitive gets a generated value meant for its own type (or, now and then, for another primitive type)."""
    slot = _pick_slot(draw, body, lambda s: s.element is not None and s.element.kind == "primitive"
                      and (s.item or not s.element.many))
    if slot is None or slot.element is None:
        return None
    primitive = slot.element.type if draw(st.integers(0, 3)) else draw(st.sampled_from(sorted(VALID)))
    slot.parent[slot.key] = draw(values_for(primitive))
    return f"set {slot.element.type} {slot.key} to {slot.parent[slot.key]!r} (made for {primitive})"


def m_leaf(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: not isinstance(s.parent[s.key], dict | list))
    if slot is None:
        return None
    slot.parent[slot.key] = draw(LEAVES)
    return f"set {slot.key} to {slot.parent[slot.key]!r}"


def m_choice_sibling(draw: Draw, body: dict[str, Any]) -> str | None:
    def has_choice(obj: dict[str, Any], model: type | None) -> bool:
        return model is not None and any(_elements(model).get(k, _NONE).choice for k in obj)
    picked = _pick_object(draw, body, has_choice)
    if picked is None:
        return None
    obj, model = picked
    assert model is not None
    elements = _elements(model)
    present = draw(st.sampled_from([k for k in obj if elements.get(k, _NONE).choice]))
    group = elements[present].choice
    others = [k for k, e in elements.items() if e.choice == group and k != present]
    if not others:
        return None
    other = draw(st.sampled_from(others))
    obj[other] = _valid_value(elements[other])
    return f"add {other} next to {present}"


def m_primitive_extension(draw: Draw, body: dict[str, Any]) -> str | None:
    slot = _pick_slot(draw, body, lambda s: s.element is not None and s.element.kind == "primitive" and not s.item
                      and isinstance(s.key, str))
    if slot is None or slot.element is None:
        return None
    key = f"_{slot.key}"
    value = slot.parent[slot.key]
    if slot.element.many and isinstance(value, list):
        options = [[None] * len(value), [{"id": "e1"}] + [None] * (len(value) - 1), [{"id": "e1"}] * (len(value) + 1),
                   [{}] * len(value), [None] * (len(value) + 1), [], {"id": "e1"}, [[{"id": "e1"}]]]
        slot.parent[key] = copy.deepcopy(draw(st.sampled_from(options)))
    else:
        slot.parent[key] = copy.deepcopy(draw(st.sampled_from(PRIMITIVE_EXTENSIONS)))
    if draw(st.integers(0, 3)) == 0:
        del slot.parent[slot.key]  # the extension without its value
    return f"add {key}={slot.parent[key]!r}"


def m_resource_type(draw: Draw, body: dict[str, Any]) -> str | None:
    picked = _pick_object(draw, body, lambda o, m: "resourceType" in o)
    if picked is None:
        return None
    obj, _ = picked
    obj["resourceType"] = draw(st.sampled_from(TYPES) | st.sampled_from(
        ["Foo", "Resource", "DomainResource", "Quantity", "Extension", "Element", "patient", "Patient ", "", None, 1]))
    return f"resourceType {obj['resourceType']!r}"


def m_contained(draw: Draw, body: dict[str, Any]) -> str | None:
    picked = _pick_object(draw, body, lambda o, m: m is not None and "contained" in _elements(m))
    if picked is None:
        return None
    obj, _ = picked
    rtype = draw(st.sampled_from(TYPES))
    base = _minimal(rtype) or {"resourceType": rtype}
    resource = {**copy.deepcopy(base), "id": "c" + str(draw(st.integers(0, 3)))}
    if draw(st.booleans()):
        keys = sorted(_elements(get_fhir_model_class(rtype))) + UNKNOWN_KEYS
        resource.update(copy.deepcopy(draw(st.dictionaries(st.sampled_from(keys), st.sampled_from(OTHER_JSON) | LEAVES,
                                                           max_size=3))))
    if not isinstance(obj.get("contained"), list):
        obj["contained"] = []
    obj["contained"].append(resource)
    return f"contain {json.dumps(resource, default=repr)[:200]}"


_NONE = Element("", "other", None, False, None)
Mutation = typing.Callable[[Draw, dict[str, Any]], str | None]
MUTATIONS: list[Mutation] = [
    m_delete_key, m_delete_required, m_unknown_key, m_python_name, m_none, m_wrap, m_unwrap, m_list_null, m_other_json,
    m_tricky_string, m_tricky_number, m_typed_value, m_leaf, m_choice_sibling, m_primitive_extension, m_resource_type,
    m_contained]
PREFERRED: dict[Mutation, typing.Callable[[Slot], bool]] = {m_python_name: _python_name_differs}


# --------------------------------------------------------------------------------------------------------------------
# Seeds: valid resources of many shapes (choice types, primitive extensions, contained, nested resources, base64, xhtml)

_PATIENT = {
    "resourceType": "Patient", "id": "p1", "meta": {"versionId": "2", "lastUpdated": "2024-01-01T10:00:00.123+01:00",
                                                    "profile": ["http://hl7.org/fhir/StructureDefinition/Patient"],
                                                    "tag": [{"system": "http://x", "code": "t"}]},
    "text": {"status": "generated", "div": XHTML},
    "contained": [{"resourceType": "Organization", "id": "org", "name": "Clinic", "active": True}],
    "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthPlace",
                   "valueAddress": {"city": "Oslo"}},
                  {"url": "http://example.org/nested", "extension": [{"url": "a", "valueInteger": -3},
                                                                    {"url": "b", "valueDecimal": 0.25}]}],
    "identifier": [{"use": "official", "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345",
                    "period": {"start": "2001-05-06"}, "assigner": {"reference": "#org"}}],
    "active": True,
    "name": [{"use": "official", "family": "Ng", "given": ["Ann", "B."], "_given": [None, {"extension": [
        {"url": "http://hl7.org/fhir/StructureDefinition/iso21090-EN-qualifier", "valueCode": "IN"}]}]}],
    "telecom": [{"system": "phone", "value": "+47 555 1234", "use": "home", "rank": 1}],
    "gender": "female", "birthDate": "1974-12-25",
    "_birthDate": {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                                  "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
    "deceasedBoolean": False, "multipleBirthInteger": 2,
    "photo": [{"contentType": "image/gif", "data": "R0lGODlhAQABAAAAACw=", "size": 15, "url": "http://x/p.gif"}],
    "managingOrganization": {"reference": "#org"},
}
_OBSERVATION = {
    "resourceType": "Observation", "id": "o1", "status": "final", "_status": {"id": "s"},
    "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                              "code": "vital-signs"}]}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9", "userSelected": False}], "text": "BP"},
    "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2024-01-01T10:00:00Z"},
    "issued": "2024-01-01T10:05:00.000+00:00", "valueSampledData": {
        "origin": {"value": 0}, "period": 10.5, "factor": 1.0, "dimensions": 1, "data": "1 2 3 E U L"},
    "referenceRange": [{"low": {"value": 3.1, "unit": "mmol/L"}, "high": {"value": 6.2}, "text": "normal",
                        "age": {"low": {"value": 18, "unit": "a"}}}],
    "note": [{"authorString": "Dr X", "time": "2024-01-01T10:00:00Z", "text": "*ok*"}],
    "component": [{"code": {"text": "systolic"}, "valueQuantity": {"value": 120, "unit": "mm[Hg]",
                                                                   "system": "http://unitsofmeasure.org",
                                                                   "code": "mm[Hg]", "comparator": "<"}},
                  {"code": {"text": "diastolic"}, "dataAbsentReason": {"text": "error"}},
                  {"code": {"text": "time"}, "valueTime": "10:00:00.5"},
                  {"code": {"text": "ratio"}, "valueRatio": {"numerator": {"value": 1}, "denominator": {"value": 3}}},
                  {"code": {"text": "n"}, "valueInteger": 0}, {"code": {"text": "b"}, "valueBoolean": True},
                  {"code": {"text": "s"}, "valueString": "  padded  "},
                  {"code": {"text": "d"}, "valueDateTime": "2016-12-31T23:59:60Z"}],
}
_QUESTIONNAIRE = {
    "resourceType": "Questionnaire", "id": "q1", "url": "http://example.org/Questionnaire/q1", "version": "1.0",
    "name": "Intake", "title": "Intake form", "status": "active", "experimental": False, "subjectType": ["Patient"],
    "date": "2024-01-01", "publisher": "Example", "description": "An **intake** form", "approvalDate": "2023-12-01",
    "effectivePeriod": {"start": "2024-01-01", "end": "2025-01-01T00:00:00Z"},
    "code": [{"system": "http://loinc.org", "code": "74465-6", "display": "Questionnaire"}],
    "item": [
        {"linkId": "1", "text": "Smoker?", "type": "boolean", "required": True, "initial": [{"valueBoolean": False}]},
        {"linkId": "2", "text": "Packs per day", "type": "decimal", "enableBehavior": "all",
         "enableWhen": [{"question": "1", "operator": "=", "answerBoolean": True}], "initial": [{"valueDecimal": 0.5}]},
        {"linkId": "3", "text": "Birth date", "type": "date", "_text": {"extension": [
            {"url": "http://hl7.org/fhir/StructureDefinition/rendering-style", "valueString": "color:red"}]}},
        {"linkId": "4", "type": "group", "repeats": True, "item": [
            {"linkId": "4.1", "text": "Drug", "type": "choice", "maxLength": 100, "answerOption": [
                {"valueCoding": {"system": "http://snomed.info/sct", "code": "387517004"}, "initialSelected": True},
                {"valueString": "other"}]},
            {"linkId": "4.2", "type": "time", "text": "Taken at", "initial": [{"valueTime": "08:30:00"}]},
            {"linkId": "4.3", "type": "integer", "initial": [{"valueInteger": 2}],
             "enableWhen": [{"question": "4.1", "operator": "exists", "answerBoolean": True}]}]},
        {"linkId": "6", "type": "url", "definition": "http://hl7.org/fhir/StructureDefinition/Patient#Patient.photo",
         "initial": [{"valueUri": "http://example.org/p.png"}]},
        {"linkId": "7", "type": "quantity", "initial": [{"valueQuantity": {"value": 70.5, "unit": "kg"}}]},
        {"linkId": "8", "type": "display", "text": "Thank you", "prefix": "8."},
    ],
}
_QUESTIONNAIRE_RESPONSE = {
    "resourceType": "QuestionnaireResponse", "id": "qr1", "questionnaire": "http://example.org/Questionnaire/q1|1.0",
    "status": "completed", "subject": {"reference": "Patient/p1", "display": "Ann"},
    "authored": "2024-01-02T09:15:00-05:00", "author": {"reference": "Practitioner/pr1"},
    "identifier": {"system": "urn:ietf:rfc:3986", "value": UUID_V4},
    "item": [
        {"linkId": "1", "answer": [{"valueBoolean": True}]}, {"linkId": "2", "answer": [{"valueDecimal": 1.25}]},
        {"linkId": "3", "answer": [{"valueDate": "1970-03"}]},
        {"linkId": "4", "item": [{"linkId": "4.1", "answer": [{"valueCoding": {"code": "387517004"}}]},
                                 {"linkId": "4.2", "answer": [{"valueTime": "08:30:00"}]},
                                 {"linkId": "4.3", "answer": [{"valueInteger": 2}]}]},
        {"linkId": "5", "answer": [{"valueAttachment": {"contentType": "image/png", "data": "iVBORw0KGgo=", "size": 8,
                                                        "creation": "2024-01-02T09:00:00Z"}}]},
        {"linkId": "6", "answer": [{"valueUri": "http://example.org/p.png"}]},
        {"linkId": "7", "answer": [{"valueQuantity": {"value": 70.5, "unit": "kg"}}]},
        {"linkId": "9", "answer": [{"valueString": "free text", "item": [
            {"linkId": "9.1", "answer": [{"valueDateTime": "2024-01-02T09:00:00Z"}]}]}]},
    ],
}
_LIBRARY = {
    "resourceType": "Library", "id": "lib1", "url": "http://example.org/Library/lib1", "version": "1.0.0",
    "name": "Example", "status": "draft", "date": "2024-01-01T00:00:00Z",
    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/library-type", "code": "logic-library"}]},
    "relatedArtifact": [{"type": "depends-on", "resource": "http://example.org/Library/base|1.0"}],
    "parameter": [{"name": "Patient", "use": "out", "min": 0, "max": "1", "type": "Patient"}],
    "dataRequirement": [{"type": "Condition", "codeFilter": [{"path": "code",
                                                              "valueSet": "http://example.org/ValueSet/x"}]}],
    "content": [{"contentType": "text/cql", "data": "bGlicmFyeSBFeGFtcGxlIHZlcnNpb24gJzEuMC4wJw==",
                 "hash": "2jmj7l5rSw0yVb/vlWAYkK/YBwk="}],
}
_BINARY = {"resourceType": "Binary", "id": "b1", "contentType": "application/pdf",
           "securityContext": {"reference": "DocumentReference/d1"}, "data": "JVBERi0xLjQKJcfsj6IK"}
_ALLERGY = {
    "resourceType": "AllergyIntolerance", "id": "a1",
    "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical",
                                   "code": "active"}]},
    "type": "allergy", "category": ["food", "medication"], "criticality": "high",
    "code": {"coding": [{"system": "http://snomed.info/sct", "code": "227493005", "display": "Cashew nuts"}]},
    "patient": {"reference": "Patient/p1"}, "onsetAge": {"value": 3, "unit": "a", "system": "http://unitsofmeasure.org",
                                                         "code": "a"},
    "recordedDate": "2014-10-09T14:58:00+11:00", "lastOccurrence": "2012-06",
    "reaction": [{"manifestation": [{"text": "Anaphylaxis"}], "severity": "severe", "onset": "2012-06-12",
                  "note": [{"authorReference": {"reference": "Practitioner/pr1"}, "text": "severe"}]}],
}
_COMPOSITION = {
    "resourceType": "Composition", "status": "final", "type": {"coding": [{"system": "http://loinc.org",
                                                                          "code": "11488-4"}]},
    "subject": {"reference": "urn:uuid:a5f1c2b4-6e0d-4f7a-9d1e-2b3c4d5e6f70"}, "date": "2024-01-02T10:00:00Z",
    "author": [{"reference": "Practitioner/pr1"}], "title": "Consult note",
    "section": [{"title": "Findings", "text": {"status": "generated", "div": XHTML},
                 "entry": [{"reference": "urn:uuid:a5f1c2b4-6e0d-4f7a-9d1e-2b3c4d5e6f70"}]}],
}
_BUNDLE_DOCUMENT = {
    "resourceType": "Bundle", "id": "bd1", "identifier": {"system": "urn:ietf:rfc:3986", "value": UUID_V4},
    "type": "document", "timestamp": "2024-01-02T10:00:00Z",
    "entry": [{"fullUrl": "urn:uuid:0b1f3c5e-7a9d-4b2c-8e4f-6a8b0c2d4e6f", "resource": _COMPOSITION},
              {"fullUrl": "urn:uuid:a5f1c2b4-6e0d-4f7a-9d1e-2b3c4d5e6f70", "resource": _PATIENT}],
    "signature": {"type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1"}],
                  "when": "2024-01-02T10:00:00Z", "who": {"reference": "Practitioner/pr1"},
                  "sigFormat": "application/jose", "data": "ZXlKaGJHY2lPaUpTVXpJMU5pSjk="},
}
_BUNDLE_COLLECTION = {
    "resourceType": "Bundle", "id": "bc1", "type": "collection", "total": 2,
    "link": [{"relation": "self", "url": "http://example.org/fhir/Bundle/bc1"}],
    "entry": [{"fullUrl": "http://example.org/fhir/Observation/o1", "resource": _OBSERVATION},
              {"resource": _BINARY, "search": {"mode": "match", "score": 1}}],
}
HAND_SEEDS = [_PATIENT, _OBSERVATION, _QUESTIONNAIRE, _QUESTIONNAIRE_RESPONSE, _LIBRARY, _BINARY, _ALLERGY,
              _BUNDLE_DOCUMENT, _BUNDLE_COLLECTION]
OFFICIAL_SEEDS = ["Patient-example.json", "Patient-animal.json", "Patient-pat2.json", "Observation-blood-pressure.json",
                  "Observation-bloodgroup.json", "Observation-example-genetics-1.json", "Observation-f001.json",
                  "Condition-f201.json", "Encounter-f201.json", "DiagnosticReport-ultrasound.json",
                  "DocumentReference-example.json", "Practitioner-f201.json", "Organization-hl7.json",
                  "Provenance-signature.json"]


@functools.cache
def seeds() -> list[dict[str, Any]]:
    found = [*HAND_SEEDS, *(_load(str(EXAMPLES / name)) for name in OFFICIAL_SEEDS)]
    seen: set[str] = set()
    for entry in _load(str(sorted(SYNTHEA.glob("*.json"))[0]))["entry"]:  # the first of each type
        if entry["resource"]["resourceType"] not in seen:
            seen.add(entry["resource"]["resourceType"])
            found.append(entry["resource"])
    return found


def test_the_seeds_are_valid_and_diverse() -> None:
    """Mutations start from bodies the reference accepts (else a failure would say nothing about the mutation)."""
    for seed in seeds():
        assert reference_error(seed["resourceType"], seed) is None, seed.get("id")
    assert len({s["resourceType"] for s in seeds()}) >= 20
    assert len(seeds()) >= 30


@st.composite
def mutated(draw: Draw, only: Mutation | None = None) -> tuple[str, dict[str, Any]]:
    """A seed after 1-3 random mutations (1-2 of `only`)."""
    candidates = seeds()
    if only in PREFERRED:  # seeds where the mutation finds what it is after
        candidates = [seed for seed in candidates if any(map(PREFERRED[only], _slots(seed, _model_for_resource(seed))))]
    seed = draw(st.sampled_from(candidates))
    body = copy.deepcopy(seed)
    done: list[str] = []
    for _ in range(draw(st.integers(1, 3 if only is None else 2))):
        mutation = only or draw(st.sampled_from(MUTATIONS))
        result = mutation(draw, body)
        done.append(f"{mutation.__name__}: {result}")
    note(f"{seed['resourceType']}/{seed.get('id')}: {done}")
    return seed["resourceType"], body


@_settings(1500)
@given(case=mutated())
def test_sound_under_mutation(case: tuple[str, dict[str, Any]]) -> None:
    assert_sound(*case)


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.__name__ for m in MUTATIONS])
def test_sound_under_each_kind_of_mutation(mutation: Mutation) -> None:
    """Each kind on its own too: a rare kind gets its share of examples, and no other mutation hides its effect."""

    @_settings(200)
    @given(case=mutated(mutation))
    def check(case: tuple[str, dict[str, Any]]) -> None:
        assert_sound(*case)

    check()


@st.composite
def leaf_replaced(draw: Draw) -> tuple[str, dict[str, Any]]:
    seed = draw(st.sampled_from(seeds()))
    body = copy.deepcopy(seed)
    for _ in range(draw(st.integers(1, 2))):
        note(str(m_leaf(draw, body) if draw(st.booleans()) else m_typed_value(draw, body)))
    return seed["resourceType"], body


@_settings(1000)
@given(case=leaf_replaced())
def test_sound_under_generated_leaf_values(case: tuple[str, dict[str, Any]]) -> None:
    assert_sound(*case)


# --------------------------------------------------------------------------------------------------------------------
# Every primitive type at a known path

_BASE_OBS = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
PRIMITIVE_PATHS: dict[str, tuple[dict[str, Any], list[str | int]]] = {
    "boolean": ({"resourceType": "Patient"}, ["active"]),
    "string": ({"resourceType": "Patient", "name": [{}]}, ["name", 0, "family"]),
    "code": ({"resourceType": "Patient"}, ["gender"]),
    "id": ({"resourceType": "Patient"}, ["id"]),
    "uri": ({"resourceType": "Patient"}, ["implicitRules"]),
    "url": ({"resourceType": "Patient", "photo": [{}]}, ["photo", 0, "url"]),
    "canonical": ({"resourceType": "Patient", "meta": {"profile": []}}, ["meta", "profile", 0]),
    "oid": ({"resourceType": "Patient", "extension": [{"url": "http://x"}]}, ["extension", 0, "valueOid"]),
    "uuid": ({"resourceType": "Patient", "extension": [{"url": "http://x"}]}, ["extension", 0, "valueUuid"]),
    "markdown": ({**_BASE_OBS, "note": [{}]}, ["note", 0, "text"]),
    "date": ({"resourceType": "Patient"}, ["birthDate"]),
    "dateTime": (dict(_BASE_OBS), ["effectiveDateTime"]),
    "instant": (dict(_BASE_OBS), ["issued"]),
    "time": (dict(_BASE_OBS), ["valueTime"]),
    "decimal": ({**_BASE_OBS, "valueQuantity": {}}, ["valueQuantity", "value"]),
    "integer": (dict(_BASE_OBS), ["valueInteger"]),
    "unsignedInt": ({"resourceType": "Patient", "photo": [{}]}, ["photo", 0, "size"]),
    "positiveInt": ({"resourceType": "Patient", "extension": [{"url": "http://x"}]},
                    ["extension", 0, "valuePositiveInt"]),
    "base64Binary": ({"resourceType": "Patient", "photo": [{}]}, ["photo", 0, "data"]),
    "xhtml": ({"resourceType": "Patient", "text": {"status": "generated"}}, ["text", "div"]),
}


def _place(base: dict[str, Any], path: list[str | int], value: Any) -> dict[str, Any]:
    body = copy.deepcopy(base)
    node: Any = body
    for part in path[:-1]:
        node = node[part]
    if isinstance(path[-1], int):
        node.append(value)
    else:
        node[path[-1]] = value
    return body


def test_each_primitive_path_holds_its_type() -> None:
    """The paths above really are of the type they test, and hold that type's valid example."""
    for primitive, (base, path) in PRIMITIVE_PATHS.items():
        body = _place(base, path, VALID[primitive])
        slots = [s for s in _slots(body, _model_for_resource(body)) if s.key == path[-1]]
        assert slots and slots[-1].element is not None and slots[-1].element.type == primitive, primitive
        assert reference_accepts(body["resourceType"], body), primitive


@pytest.mark.parametrize("primitive", sorted(PRIMITIVE_PATHS))
def test_sound_for_every_tabled_value_of_every_primitive(primitive: str) -> None:
    base, path = PRIMITIVE_PATHS[primitive]
    for value in [*NEAR.get(primitive, []), *TRICKY_STRINGS, *TRICKY_NUMBERS, *OTHER_JSON, *VALID.values()]:
        body = _place(base, path, copy.deepcopy(value))
        assert_sound(body["resourceType"], body, f"{primitive} = {value!r}")


@pytest.mark.parametrize("primitive", sorted(PRIMITIVE_PATHS))
def test_sound_for_generated_primitive_values(primitive: str) -> None:
    base, path = PRIMITIVE_PATHS[primitive]

    @_settings(500)
    @given(value=values_for(primitive))
    def check(value: Any) -> None:
        body = _place(base, path, value)
        assert_sound(body["resourceType"], body, f"{primitive} = {value!r}")

    check()
