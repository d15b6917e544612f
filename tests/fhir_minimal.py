"""A minimal valid instance of any resource type, built from the R4 definitions (fhir.schema.json) and the R4B
model's own complaints: start from {"resourceType": T}, fill every element the model reports missing (or one
variant of a required choice) with a value of its schema type, repeat until the model accepts it."""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError

from tests.conftest import SHARED_DATA

SCHEMA = SHARED_DATA / "fhir-spec" / "r4" / "fhir.schema.json"
XHTML = '<div xmlns="http://www.w3.org/1999/xhtml">example</div>'
PRIMITIVES: dict[str, Any] = {
    "boolean": True, "integer": 1, "positiveInt": 1, "unsignedInt": 0, "decimal": 1, "string": "example",
    "markdown": "example", "code": "unknown", "id": "example", "uri": "http://example.org/x",
    "url": "http://example.org/x", "canonical": "http://example.org/x", "oid": "urn:oid:1.2.3",
    "uuid": "urn:uuid:5b1f8b7e-1c1a-4c3e-9a8e-1f1b2b3c4d5e", "date": "2024-01-01",
    "dateTime": "2024-01-01T00:00:00Z", "instant": "2024-01-01T00:00:00Z", "time": "12:00:00",
    "base64Binary": "ZXhhbXBsZQ==", "xhtml": XHTML,
}
DATATYPES: dict[str, Any] = {
    "CodeableConcept": {"text": "example"}, "Reference": {"display": "example"}, "Coding": {"code": "example"},
    "Narrative": {"status": "generated", "div": XHTML},
}
CHOICE = re.compile(r"Expect any of field value from this list \['(\w+)'")


@functools.cache
def _definitions() -> dict[str, Any]:
    return dict(json.loads(SCHEMA.read_text(encoding="utf-8"))["definitions"])


def _value(definition: str, element: str) -> Any:
    prop = _definitions()[definition]["properties"][element]
    spec = prop.get("items", prop)
    if "enum" in spec:
        value = spec["enum"][0]
    elif "$ref" in spec:
        ref = str(spec["$ref"]).rsplit("/", 1)[1]
        value = PRIMITIVES.get(ref, DATATYPES.get(ref, {}))
    else:  # a choice-type primitive, inlined: its type is the element name's suffix
        value = next(v for k, v in sorted(PRIMITIVES.items(), key=lambda kv: -len(kv[0]))
                     if element.lower().endswith(k.lower()))
    return [value] if "items" in prop else value


def _definition_at(resource_type: str, loc: list[Any]) -> str:
    definition = resource_type
    for part in loc:
        if isinstance(part, str):
            prop = _definitions()[definition]["properties"][part]
            definition = str(prop.get("items", prop)["$ref"]).rsplit("/", 1)[1]
    return definition


def minimal_instance(resource_type: str) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": resource_type}
    model = get_fhir_model_class(resource_type)
    for _ in range(40):
        try:
            model.model_validate(body)
            return body
        except ValidationError as exc:
            errors = exc.errors()
        for error in errors:
            loc, choice = list(error["loc"]), CHOICE.search(str(error["msg"]))
            if choice:
                parent, element = loc, choice.group(1)
            elif "missing" in str(error["type"]):
                parent, element = loc[:-1], str(loc[-1])
            else:
                raise AssertionError(f"{resource_type}: cannot build a minimal instance: {error}")
            node: Any = body
            for part in parent:
                node = node[part]
            node[element] = _value(_definition_at(resource_type, parent), element)
    raise AssertionError(f"{resource_type}: no minimal instance after 40 rounds")
