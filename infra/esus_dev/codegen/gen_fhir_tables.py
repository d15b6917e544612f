"""Generate the FHIR tables the server uses from the official JSON schema (../shared/fhir-spec/r4/fhir.schema.json):

- shared/esus/fhir_types.py: the resource types the generic routes serve and, per type, its top-level elements
  with a required binding (the schema's `enum`s). Small and imported eagerly.
- shared/esus/domain/fhir_bindings.json: every element, at any depth, that holds a required-binding code, as a pruned
  walk table (definition -> element -> value-set index or child definition). Loaded lazily on the first write.

Run `python -m esus_dev.codegen.gen_fhir_tables` after changing the schema or this file; `--check` exits 1 when the
committed tables are stale (a unit test does the same).

Which types are served: every resource type of the schema that fhir.resources' R4B models can validate, minus
the special cases in NOT_GENERIC. The schema file is Medplum's build of the R4 schema: besides the 146 R4 types
it defines Medplum's own resources (Project, User, Bot, ...), which have no R4B model and are not served.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
SHARED_DATA = Path(os.environ.get("ESUS_SHARED_DATA", REPO.parent / "shared"))
SCHEMA = SHARED_DATA / "fhir-spec" / "r4" / "fhir.schema.json"
TYPES_MODULE = REPO / "shared" / "esus" / "fhir_types.py"
BINDINGS_JSON = REPO / "shared" / "esus" / "domain" / "fhir_bindings.json"

# Types with an R4B model that the generic routes do not serve, and why (README "Resource types").
NOT_GENERIC: dict[str, str] = {
    "Provenance": "served by its own routes: an immutable audit record in its own table",
    "Parameters": "not a stored resource: R4 gives it no RESTful endpoint (operation input/output only)",
    "Evidence": "redesigned in R4B: the R4B model rejects R4 content (exposureBackground, outcome, ...)",
    "EvidenceVariable": "redesigned in R4B: the R4B model rejects R4 content (characteristic structure, type)",
}
NO_R4B_MODEL = "no fhir.resources R4B model (an R4 type removed in R4B, or a Medplum type, not FHIR R4)"
RESOURCE_LIST = "ResourceList"  # the schema's "any resource" (contained, Bundle.entry.resource, ...)
ANY_RESOURCE = "*"  # its marker in the walk table: dispatch on the nested resource's resourceType
# Left out of the table because the walker applies them everywhere: `extension`/`modifierExtension` hold
# Extensions, and `_element` (a primitive's id and extensions) is an Element.
IMPLICIT = {"extension": "Extension", "modifierExtension": "Extension"}
PRIMITIVE_EXTRAS = "Element"


def load_schema(path: Path = SCHEMA) -> dict[str, Any]:
    return dict(json.loads(path.read_text(encoding="utf-8")))


def schema_resource_types(schema: dict[str, Any]) -> list[str]:
    return sorted(str(ref["$ref"]).rsplit("/", 1)[1] for ref in schema["definitions"][RESOURCE_LIST]["oneOf"])


def has_r4b_model(resource_type: str) -> bool:
    from fhir.resources.R4B import get_fhir_model_class  # dev-time only: imports each model once

    try:
        get_fhir_model_class(resource_type)
    except ValueError:
        return False
    return True


def classify_types(schema: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """(types the generic routes serve, {type not served: why})."""
    served: list[str] = []
    skipped: dict[str, str] = {}
    for resource_type in schema_resource_types(schema):
        if not has_r4b_model(resource_type):
            skipped[resource_type] = NO_R4B_MODEL
        elif resource_type in NOT_GENERIC:
            skipped[resource_type] = NOT_GENERIC[resource_type]
        else:
            served.append(resource_type)
    return served, skipped


def _target(prop: dict[str, Any]) -> tuple[str | None, list[str] | None]:
    """An element's (child definition, enum); arrays are looked through."""
    spec = prop.get("items", prop)
    if "enum" in spec:
        return None, [str(c) for c in spec["enum"]]
    ref = spec.get("$ref")
    return (str(ref).rsplit("/", 1)[1] if ref else None), None


def binding_table(schema: dict[str, Any], roots: Iterable[str]) -> dict[str, Any]:
    """The walk table: only definitions reachable from `roots` and only elements that lead to a required code."""
    definitions: dict[str, Any] = schema["definitions"]
    resource_types = set(schema_resource_types(schema))
    reachable: list[str] = []
    pending = sorted(set(roots))
    while pending:
        name = pending.pop()
        if name in reachable:
            continue
        reachable.append(name)
        for prop in definitions[name].get("properties", {}).values():
            child, _ = _target(prop)
            children = sorted(set(roots)) if child == RESOURCE_LIST else [child] if child else []
            pending += [c for c in children if c in definitions and "properties" in definitions[c]]
    # Fixpoint: a definition leads to a code if one of its elements has an enum or a child that leads to one.
    leads: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name in reachable:
            if name in leads:
                continue
            for prop in definitions[name]["properties"].values():
                child, enum = _target(prop)
                if enum or child in leads or (child == RESOURCE_LIST and leads & set(roots)):
                    leads.add(name)
                    changed = True
                    break
    value_sets: list[list[str]] = []
    index: dict[tuple[str, ...], int] = {}
    elements: dict[str, dict[str, int | str]] = {}
    for name in sorted(leads):
        entry: dict[str, int | str] = {}
        for element, prop in definitions[name]["properties"].items():
            child, enum = _target(prop)
            implicit = IMPLICIT.get(element) == child or (element[0] == "_" and child == PRIMITIVE_EXTRAS)
            if child is not None and implicit:
                continue
            if enum:
                key = tuple(enum)
                if key not in index:
                    index[key] = len(value_sets)
                    value_sets.append(enum)
                entry[element] = index[key]
            elif child == RESOURCE_LIST:
                entry[element] = ANY_RESOURCE
            elif child in leads:
                entry[element] = child
        elements[name] = entry
    assert resource_types >= set(roots)
    return {"value_sets": value_sets, "elements": elements}


def top_level_codes(schema: dict[str, Any], resource_type: str) -> list[str]:
    props = schema["definitions"][resource_type]["properties"]
    return sorted(element for element, prop in props.items() if _target(prop)[1])


def render(schema: dict[str, Any]) -> tuple[str, str]:
    """(fhir_types.py text, fhir_bindings.json text)."""
    served, skipped = classify_types(schema)
    roots = [*served, "Provenance"]
    table = binding_table(schema, roots)
    bindings = json.dumps({"source": "fhir.schema.json (FHIR 4.0.1) enums", **table},
                          separators=(",", ":"), sort_keys=True) + "\n"
    lines = [
        '"""Generated by infra/esus_dev/codegen/gen_fhir_tables.py from fhir.schema.json (FHIR 4.0.1). Do not edit."""',
        "",
        "# Resource types served by the generic routes /fhir/{type}/...",
        "RESOURCE_TYPES: frozenset[str] = frozenset({",
        *_wrapped([repr(t) for t in served]),
        "})",
        "",
        "# Per type, the top-level elements whose values are codes of a required binding (enumerated in the schema).",
        "REQUIRED_CODE_ELEMENTS: dict[str, frozenset[str]] = {",
    ]
    for resource_type in roots:
        codes = top_level_codes(schema, resource_type)
        if codes:
            lines.append(f"    {resource_type!r}: frozenset({{{', '.join(repr(c) for c in codes)}}}),")
    lines += ["}", "", f"# Schema types not served: {NO_R4B_MODEL}.", "WITHOUT_R4B_MODEL: frozenset[str] = frozenset({"]
    lines += _wrapped([repr(t) for t, why in sorted(skipped.items()) if why == NO_R4B_MODEL])
    lines += ["})", "", "# Types with an R4B model that the generic routes do not serve, and why.",
              "NOT_GENERIC: dict[str, str] = {"]
    lines += [f"    {t!r}: {why!r}," for t, why in sorted(skipped.items()) if why != NO_R4B_MODEL]
    lines += ["}", ""]
    return "\n".join(lines), bindings


def _wrapped(words: list[str], width: int = 116) -> list[str]:
    lines: list[str] = []
    current = "   "
    for word in words:
        if len(current) + len(word) + 2 > width:
            lines.append(current)
            current = "   "
        current += f" {word},"
    if current.strip():
        lines.append(current)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed tables are stale")
    parser.add_argument("--schema", type=Path, default=SCHEMA)
    args = parser.parse_args(argv)
    types_text, bindings_text = render(load_schema(args.schema))
    targets = {TYPES_MODULE: types_text, BINDINGS_JSON: bindings_text}
    if args.check:
        stale = [p for p, text in targets.items() if not p.exists() or p.read_text(encoding="utf-8") != text]
        for stale_path in stale:
            print(f"stale: {stale_path} (run python -m esus_dev.codegen.gen_fhir_tables)", file=sys.stderr)
        return 1 if stale else 0
    for path, text in targets.items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({len(text)} bytes)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
