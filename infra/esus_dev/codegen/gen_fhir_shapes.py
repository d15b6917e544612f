"""Generate shared/esus/domain/fhir_shapes_r4b.json, the table esus.domain.fast_validation walks: the shape of every
fhir.resources R4B model class a served resource can reach, read from the model classes themselves.

Per class: each JSON element name with its type (a primitive, another class, or "*" for any resource) and whether it
repeats; the required elements; the choice-type groups (`value[x]`: at most one, and one when required). Per
primitive, what fhir_core checks for id, oid, the dates and times, decimal and the integers (its patterns and
bounds), read from the library. The other primitives' checks are written in esus.domain.fast_validation, stricter
than fhir_core's: REVIEWED_SOURCES holds the fhir_core files they were reviewed against, and the generator refuses
to run when one of them changed (review fast_validation against the new code, then update the digests).

Fail closed: a field constraint, a model config or a validator the fast check does not mirror, an overridden
checking method, or a primitive on an unexpected Python type stops the generator (an unknown annotation shape makes
the field unprovable, so its bodies go to the library).

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

from esus.domain.fast_validation import ANY_RESOURCE
from esus_dev.codegen import write_or_check

REPO = Path(__file__).resolve().parents[3]
SHAPES_JSON = REPO / "shared" / "esus" / "domain" / "fhir_shapes_r4b.json"

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
# The Python type each primitive's Annotated wraps (anything else: not proved).
PRIMITIVE_BASES = {
    "date": "date", "dateTime": "datetime", "instant": "datetime", "time": "time", "decimal": "Decimal",
    "integer": "int", "unsignedInt": "int", "positiveInt": "int", "base64Binary": "bytes", "url": "Union",
}
# Methods through which fhir_core checks a model; a class that overrides one is not proved (left out of the table).
CHECKING_METHODS = ("__init__", "model_post_init", "reject_null_complex_elements", "validate_after_model_construction",
                    "_validate_one_of_many", "_validate_required_primitive_elements")
# sha256 (first 16 hex digits) of the library sources esus.domain.fast_validation's own primitive checks, and its
# null, required and choice rules, were reviewed against.
REVIEWED_SOURCES = {
    "fhir_core/types.py": "12ea039b85bb8802",
    "fhir_core/fhirabstractmodel.py": "b9c6b672a2714f1b",
    "fhir_core/constraints.py": "b7e4d030978438b4",
    "fhir/resources/R4B/fhirprimitiveextension.py": "23741ecff8666dbb",
}


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
            base, *metadata = typing.get_args(alt)
            names = [type(m).__name__ for m in metadata if type(m).__name__ not in CARRIERS]
            primitive = PRIMITIVES.get(names[0]) if len(names) == 1 else None
            expected_base = PRIMITIVE_BASES.get(primitive or "", "str")
            found.add(primitive if primitive and getattr(base, "__name__", str(base)) == expected_base else UNSUPPORTED)
        elif isinstance(alt, type) and issubclass(alt, FhirElementOrResourceBase):
            found.add(ANY_RESOURCE if alt.get_model_klass().__name__ == "Resource" else UNSUPPORTED)
        elif isinstance(alt, type) and issubclass(alt, FhirBase):
            model = alt.get_model_klass()
            reach.append(model)
            found.add(model.__name__)
        else:
            found.add(UNSUPPORTED)
    return found.pop() if len(found) == 1 else UNSUPPORTED


def class_shape(model: type, reach: list[type]) -> dict[str, Any] | None:
    """One model class's shape, or None when it checks something the fast check does not mirror."""
    from fhir_core.fhirabstractmodel import FHIRAbstractModel

    decorators = model.__pydantic_decorators__  # type: ignore[attr-defined]
    own = {name for kind in ("validators", "field_validators", "root_validators", "model_validators")
           for name in getattr(decorators, kind)}
    if own - BASE_VALIDATORS - set(ANY_OF_VALIDATORS):
        return None
    if any(_function(model, name) is not _function(FHIRAbstractModel, name) for name in CHECKING_METHODS):
        return None
    mirrored = own & set(ANY_OF_VALIDATORS)
    if any(_function(model, name) is not _function(_primitive_extension(), name) for name in mirrored):
        return None  # a validator of that name, but not the one whose rule the table records
    if model.model_config != FHIRAbstractModel.model_config:  # type: ignore[attr-defined]
        raise SystemExit(f"{model.__name__} has its own model config: the fast check does not mirror it")
    fields: dict[str, str] = {}
    choices: dict[str, list[str]] = {}
    required_choices: set[str] = set()
    required: list[str] = []
    for name, info in model.model_fields.items():  # type: ignore[attr-defined]
        alias = info.alias or name
        if info.metadata:
            raise SystemExit(f"{model.__name__}.{name} has constraints the fast check does not mirror: "
                             f"{info.metadata}")
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
    required += [json_name for json_name, _ in model.get_required_fields(None)]  # type: ignore[attr-defined]
    shape: dict[str, Any] = {"fields": fields}
    if model.has_resource_base():  # type: ignore[attr-defined]
        shape["resource"] = model.__resource_type__  # type: ignore[attr-defined]
    if required:
        shape["required"] = sorted(set(required))
    for validator in sorted(mirrored):
        shape["any_of"] = ANY_OF_VALIDATORS[validator]
    if choices:
        shape["choices"] = [[sorted(names), prefix in required_choices] for prefix, names in sorted(choices.items())]
    return shape


def _primitive_extension() -> type:
    from fhir.resources.R4B.fhirprimitiveextension import FHIRPrimitiveExtension

    return FHIRPrimitiveExtension


def _function(cls: type, name: str) -> Any:
    """The function behind a method as `cls` resolves it (classmethods and pydantic decorators unwrapped)."""
    found = getattr(cls, name, None)
    found = getattr(found, "__func__", found)
    return getattr(found, "wrapped", found)


def check_reviewed_sources() -> None:
    """Stop when a library source fast_validation's own rules were reviewed against has changed."""
    import hashlib
    import importlib.util

    for relative, digest in REVIEWED_SOURCES.items():
        package = relative.split("/", 1)[0]
        spec = importlib.util.find_spec(package)
        assert spec is not None and spec.submodule_search_locations, package
        path = Path(next(iter(spec.submodule_search_locations))).parent / relative
        if hashlib.sha256(path.read_bytes()).hexdigest()[:16] != digest:
            raise SystemExit(f"{relative} changed since esus.domain.fast_validation's checks were reviewed against "
                             "it: review them against the new code, then update REVIEWED_SOURCES in " + __name__)


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
    }


def build() -> dict[str, Any]:
    from fhir.resources.R4B import get_fhir_model_class

    from esus.domain.fhir import SUPPORTED_TYPES

    check_reviewed_sources()
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
