"""Generate shared/esus/domain/fhir_shapes_r4b.json, the table esus.domain.fast_validation walks: the shape of every
fhir.resources R4B model class a served resource can reach, read from the model classes themselves.

Per class: each JSON element name with its type (a primitive, another class, or "*" for any resource) and whether it
repeats; the required elements; the choice-type groups (`value[x]`: at most one, and one when required). Per
primitive: what fhir_core checks (its regular expressions, its integer bounds, the id length), copied from the
library so the fast check can never be looser than the library by drift.

Why: building the pydantic models costs a cold function ~160 ms on its first write. The fast check proves the common
valid body valid without them; anything it cannot prove goes to fhir.resources, which stays the authority for every
rejection and every message (docs/VALIDATION.md).

Run `python -m esus_dev.codegen.gen_fhir_shapes` after upgrading fhir.resources or fhir_core; `--check` exits 1
when the committed table is stale (a unit test does the same).
"""

from __future__ import annotations

import argparse
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any

from esus_dev.codegen import write_or_check

REPO = Path(__file__).resolve().parents[3]
SHAPES_JSON = REPO / "shared" / "esus" / "domain" / "fhir_shapes_r4b.json"

ANY_RESOURCE = "*"
UNSUPPORTED = "?"  # a type the fast check does not prove (uuid, Element, ...): such a body goes to the library
# Validators every FHIR model has, which the fast check mirrors; a class with any other validator is left out of
# the table (so its bodies always go to the library).
BASE_VALIDATORS = {"reject_null_complex_elements", "validate_after_model_construction"}
# Other validators the fast check mirrors: name -> the elements of which at least one must be present.
# FHIRPrimitiveExtension (a primitive's `_element`) needs an id, an extension or fhir_comments (not proved).
ANY_OF_VALIDATORS = {"validate_extension_or_fhir_comment_required": ["extension", "id"]}
# fhir_core metadata class -> FHIR primitive type name, for the primitives the fast check proves.
PRIMITIVES = {
    "String": "string", "Code": "code", "Id": "id", "Uri": "uri", "Canonical": "canonical", "Markdown": "markdown",
    "Oid": "oid", "Url": "url", "Xhtml": "xhtml", "Date": "date", "DateTime": "dateTime", "Instant": "instant",
    "Time": "time", "Decimal": "decimal", "Integer": "integer", "UnsignedInt": "unsignedInt",
    "PositiveInt": "positiveInt", "Base64Binary": "base64Binary",
}
CARRIERS = {"EncodedBytes"}  # metadata that only decodes a primitive (base64Binary's bytes), no extra rule


def _flatten(annotation: Any) -> list[Any]:
    """The alternatives of an annotation, Optional/Union/List unwrapped (Annotated kept whole)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, list):
        return [t for arg in typing.get_args(annotation) for t in _flatten(arg)]
    return [annotation]


def _is_list(annotation: Any) -> bool:
    return any(typing.get_origin(t) is list for t in [annotation, *typing.get_args(annotation)])


def _field_type(annotation: Any, reach: list[type]) -> str:
    from fhir_core.types import FhirBase, FhirElementOrResourceBase

    found: set[str] = set()
    for alt in _flatten(annotation):
        if alt is type(None):
            continue
        if alt is bool:
            found.add("boolean")
        elif typing.get_origin(alt) is typing.Annotated:
            names = [type(m).__name__ for m in typing.get_args(alt)[1:] if type(m).__name__ not in CARRIERS]
            found.add(PRIMITIVES[names[0]] if len(names) == 1 and names[0] in PRIMITIVES else UNSUPPORTED)
        elif isinstance(alt, type) and issubclass(alt, FhirElementOrResourceBase):
            found.add(ANY_RESOURCE if alt.get_model_klass().__name__ == "Resource" else UNSUPPORTED)
        elif isinstance(alt, type) and issubclass(alt, FhirBase):
            model = alt.get_model_klass()
            reach.append(model)
            found.add(model.__name__)
        else:
            found.add(UNSUPPORTED)
    if found == {"id", "string"}:  # Resource.id is Id | String: proving it an id is proving it valid
        return "id"
    return found.pop() if len(found) == 1 else UNSUPPORTED


def class_shape(model: type, reach: list[type]) -> dict[str, Any] | None:
    """One model class's shape, or None when it has validators the fast check does not mirror."""
    decorators = model.__pydantic_decorators__  # type: ignore[attr-defined]
    own = {name for kind in ("validators", "field_validators", "root_validators", "model_validators")
           for name in getattr(decorators, kind)}
    if own - BASE_VALIDATORS - set(ANY_OF_VALIDATORS):
        return None
    fields: dict[str, str] = {}
    choices: dict[str, list[str]] = {}
    required_choices: set[str] = set()
    required: list[str] = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        alias = info.alias or name
        if alias == "fhir_comments":
            continue  # not FHIR JSON: a body holding it goes to the library
        fields[alias] = _field_type(info.annotation, reach) + ("[]" if _is_list(info.annotation) else "")
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if info.is_required():
            required.append(alias)
        if "one_of_many" in extra:
            choices.setdefault(str(extra["one_of_many"]), []).append(alias)
            if extra.get("one_of_many_required"):
                required_choices.add(str(extra["one_of_many"]))
    aliases = {n: (i.alias or n) for n, i in model.model_fields.items()}  # type: ignore[attr-defined]
    required += [aliases[n] for n, _ in model.get_required_fields(None)]  # type: ignore[attr-defined]
    shape: dict[str, Any] = {"fields": fields}
    if model.has_resource_base():  # type: ignore[attr-defined]
        shape["resource"] = model.__resource_type__  # type: ignore[attr-defined]
    if required:
        shape["required"] = sorted(set(required))
    for validator in sorted(own & set(ANY_OF_VALIDATORS)):
        shape["any_of"] = ANY_OF_VALIDATORS[validator]
    if choices:
        shape["choices"] = [[sorted(names), prefix in required_choices] for prefix, names in sorted(choices.items())]
    return shape


def primitive_rules() -> dict[str, Any]:
    """What fhir_core checks per primitive, read from the library (patterns, bounds, id length)."""
    from fhir_core import constraints
    from fhir_core import types as core

    def bounds(cls: Any) -> list[int]:
        default = cls()  # a frozen dataclass: its defaults are the type's bounds (fhir_core names them *_length)
        return [default.min_length, default.max_length]

    return {
        "id": {"pattern": constraints.TYPES_ID_PATTERN, "max_length": constraints.TYPES_ID_MAX_LENGTH},
        "oid": {"pattern": core.Oid.pattern.pattern},
        "date": {"pattern": core.Date.pattern.pattern},
        "dateTime": {"pattern": core.DateTime.pattern.pattern},
        "instant": {"pattern": core.Instant.pattern.pattern},
        "time": {"pattern": core.Time.pattern.pattern},
        "decimal": {"pattern": core.Decimal.pattern.pattern},
        "integer": {"bounds": bounds(core.Integer)},
        "unsignedInt": {"bounds": bounds(core.UnsignedInt)},
        "positiveInt": {"bounds": bounds(core.PositiveInt)},
        "string": {"allow_empty": constraints.TYPES_STRING_ALLOW_EMPTY_STR},
    }


def build() -> dict[str, Any]:
    from fhir.resources.R4B import get_fhir_model_class

    from esus.domain.fhir import SUPPORTED_TYPES

    classes: dict[str, Any] = {}
    reach: list[type] = [get_fhir_model_class(t) for t in sorted(SUPPORTED_TYPES)]
    while reach:
        model = reach.pop()
        if model.__name__ not in classes:
            classes[model.__name__] = class_shape(model, reach)
    import fhir.resources
    import fhir_core
    import pydantic

    return {
        "source": {"fhir.resources": fhir.resources.__version__, "fhir_core": _version(fhir_core),
                   "pydantic": pydantic.VERSION},
        "primitives": primitive_rules(),
        "classes": {name: classes[name] for name in sorted(classes) if classes[name] is not None},
    }


def _version(module: Any) -> str:
    from importlib.metadata import version

    return version(module.__name__)


def render(table: dict[str, Any]) -> str:
    return json.dumps(table, sort_keys=True, separators=(",", ":")) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed table is stale")
    args = parser.parse_args(argv)
    ok = write_or_check(SHAPES_JSON, render(build()), "esus_dev.codegen.gen_fhir_shapes", args.check)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
