"""A fast, conservative proof that fhir.resources would accept a body, without building its pydantic models.

`proves_valid` walks the body with the table fhir_shapes_r4b.json, generated from the fhir.resources R4B model
classes (infra/esus_dev/codegen/gen_fhir_shapes.py). It answers True only when every element is one the models
declare, with the JSON type and cardinality they declare, every required element and at most one choice of each
`[x]` group is present, and every primitive passes checks at least as strict as fhir_core's: its own patterns and
bounds from the table (id, oid, dates and times, decimal, integers), and rules written here for the others,
reviewed against the fhir_core sources the generator pins (REVIEWED_SOURCES). Whatever it does not model it does
not prove: nulls, empty strings or arrays, uuid values, leap seconds, python field names, `fhir_comments`, lenient
forms the library also takes ("12" for an integer, "true" for a boolean)... Such bodies go to fhir.resources, the
authority for every rejection and every error message. A differential test holds the contract
(tests/unit/test_fast_validation.py): proves_valid(t, b) implies fhir.resources accepts b.

Why: on a cold function, importing pydantic and fhir.resources and building a Patient's ~20 model classes costs
~160 ms of the first write; this check costs a few milliseconds (docs/BENCH.md).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from datetime import date, datetime, time
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("fhir_shapes_r4b.json")
ANY_RESOURCE = "*"

# Characters no regex engine counts as whitespace: a string holding one matches fhir_core's `[ \r\n\t\S]+`.
_PLAIN_CHARACTER = re.compile(r"[!-~]|\w")
_SURROGATE = re.compile("[\ud800-\udfff]")
# A code: printable ASCII tokens, single spaces between (fhir_core: ^[^\s]+(\s[^\s]+)*$).
_CODE = re.compile(r"[!-~]+(?: [!-~]+)*")
# fhir_core accepts any string as a uri (\S*, searched) or url (a str schema first); one with a space or non-ASCII
# is not proved.
_URI = re.compile(r"[!-~]+")
_BASE64 = re.compile(r"(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?")
_FRACTION = re.compile(r"\.([0-9]+)")
_MAX_FRACTION_DIGITS = 6  # microseconds: what both Python's and pydantic's datetimes hold
_HUGE = 10**4000  # ints beyond it are not proved decimals (str() stops at 4,300 digits)


def proves_valid(resource_type: str, body: Any) -> bool:
    """True only if fhir.resources certainly accepts `body` as a `resource_type` (False: not proved, not invalid)."""
    return _resource(body, resource_type)


@functools.cache
def _table() -> tuple[dict[str, dict[str, Any]], dict[str, Callable[[Any], bool]]]:
    """(class shapes, primitive checks), read on first use so that importing this module costs nothing."""
    data = json.loads(TABLE.read_text(encoding="utf-8"))
    return data["classes"], _primitive_checks(data["primitives"])


def _resource(node: Any, resource_type: Any) -> bool:
    shape = _table()[0].get(resource_type) if isinstance(resource_type, str) else None
    return (shape is not None and shape.get("resource") == resource_type and isinstance(node, dict)
            and node.get("resourceType") == resource_type and _object(shape, node, skip="resourceType"))


def _object(shape: dict[str, Any], node: dict[str, Any], skip: str | None = None) -> bool:
    fields = shape["fields"]
    for key, value in node.items():
        if key == skip:
            continue
        kind = fields.get(key)
        if kind is None or value is None:
            return False
        if kind.endswith("[]"):
            if not isinstance(value, list) or not value:
                return False
            kind = kind[:-2]
            if not all(item is not None and _value(kind, item) for item in value):
                return False
        elif isinstance(value, list) or not _value(kind, value):
            return False
    if any(node.get(name) is None for name in shape.get("required", ())):
        return False
    if "any_of" in shape and all(node.get(name) is None for name in shape["any_of"]):
        return False
    for members, required in shape.get("choices", ()):
        present = sum(1 for name in members if name in node)
        if present > 1 or (required and present == 0):
            return False
    return True


def _value(kind: str, value: Any) -> bool:
    classes, primitives = _table()
    check = primitives.get(kind)
    if check is not None:
        return check(value)
    if not isinstance(value, dict):
        return False
    if kind == ANY_RESOURCE:
        return _resource(value, value.get("resourceType"))
    shape = classes.get(kind)
    return shape is not None and _object(shape, value)


def _text(value: Any) -> bool:
    """A non-empty string the library reads as FHIR string content (no lone surrogates)."""
    return (isinstance(value, str) and _PLAIN_CHARACTER.search(value) is not None
            and _SURROGATE.search(value) is None)


def _primitive_checks(rules: dict[str, Any]) -> dict[str, Callable[[Any], bool]]:
    def pattern(name: str) -> re.Pattern[str]:
        return re.compile(rules[name]["pattern"])

    def integer(name: str) -> Callable[[Any], bool]:
        low, high = rules[name]["bounds"]
        return lambda v: type(v) is int and low <= v <= high

    def moment(name: str) -> Callable[[Any], bool]:
        regex = pattern(name)
        return lambda v: isinstance(v, str) and regex.fullmatch(v) is not None and _real_moment(name, v)

    def matches(regex: re.Pattern[str]) -> Callable[[Any], bool]:
        return lambda v: isinstance(v, str) and regex.fullmatch(v) is not None

    id_pattern, id_max = pattern("id"), rules["id"]["max_length"]
    decimal = pattern("decimal")
    return {
        "boolean": lambda v: type(v) is bool,
        "string": _text, "markdown": _text, "xhtml": _text,
        "code": matches(_CODE), "oid": matches(pattern("oid")),
        "uri": matches(_URI), "canonical": matches(_URI), "url": matches(_URI),
        "id": lambda v: isinstance(v, str) and v.isascii() and len(v) <= id_max and id_pattern.fullmatch(v) is not None,
        # fhir_core matches str(v): any int's does, but str() of one over 4,300 digits raises (a rejection there)
        "decimal": lambda v: (type(v) is int and -_HUGE < v < _HUGE)
        or (type(v) is float and decimal.fullmatch(repr(v)) is not None),
        "integer": integer("integer"), "unsignedInt": integer("unsignedInt"), "positiveInt": integer("positiveInt"),
        "date": moment("date"), "dateTime": moment("dateTime"), "instant": moment("instant"), "time": moment("time"),
        "base64Binary": lambda v: isinstance(v, str) and v != "" and _BASE64.fullmatch(v) is not None,
    }


def _real_moment(name: str, value: str) -> bool:
    """A date/time the library's pattern admits that is also real (no Feb 30). Leap seconds, more than microsecond
    precision and years before 1000 are not proved (the library has special paths or other limits for them)."""
    clock = value if name == "time" else value.partition("T")[2]
    fraction = _FRACTION.search(clock)
    if clock[6:8] == "60" or (fraction and len(fraction.group(1)) > _MAX_FRACTION_DIGITS):
        return False
    try:
        if name == "time":
            time.fromisoformat(value)
            return True
        if int(value[:4]) < 1000:
            return False
        if "T" in value:
            datetime.fromisoformat(value.replace("Z", "+00:00"))
        elif len(value) == 10:
            date.fromisoformat(value)
    except ValueError:
        return False
    return True
