"""Generates shared/esus/domain/search_params_r4.json from the official R4 SearchParameter bundle.

    python -m esus_dev.codegen.gen_search_params [--check]

Per stored type, per parameter code: its type, its FHIRPath expression cut to the alternatives that
start at that type, the reference target types, the target type a `.where(resolve() is T)` demanded
(fhirpathpy cannot resolve, so the search filters on the reference's type instead), whether every
element the expression reads is a clear element (then index keys may hold the value itself) and, for the simple
expressions, the plan that esus.domain.fhirpath_plans walks instead of fhirpathpy (esus_dev.codegen.fhirpath_plans),
and, for a string parameter that reads one part of another string parameter's values (`Patient.name.family` of
`Patient.name`), that wider parameter (`indexed_under`): its index items already hold every term of the narrow one,
so the narrow one writes none and is looked up there (docs/SEARCH.md, "Strings").
Composite, special and phonetic parameters, and parameters without an expression, are left out: they are not
offered, so the CapabilityStatement never lists them.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from esus.domain.fhir import RESOURCE_TYPES
from esus.domain.search_semantics import NON_TEXT_PARTS
from esus.security.phi import CLEAR_COMMON, CLEAR_ELEMENTS, META, META_CLEAR
from esus_dev.codegen import write_or_check
from esus_dev.codegen.fhirpath_plans import plan

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO.parent / "shared" / "fhir-spec" / "r4" / "search-parameters.json"
SCHEMA = SOURCE.with_name("fhir.schema.json")
TARGET = REPO / "shared" / "esus" / "domain" / "search_params_r4.json"
SUPPORTED_KINDS = ("number", "date", "string", "token", "reference", "quantity", "uri")
# Parameters whose meaning is not their expression's value: a phonetic match needs an algorithm
# (Soundex, Metaphone) the definition leaves open, so offering it as a plain string would lie.
NOT_OFFERED = frozenset({"phonetic"})
RESOLVE_IS = re.compile(r"\.where\(resolve\(\) is ([A-Z][A-Za-z]+)\)")
MEMBER_PATH = re.compile(r"[A-Z][A-Za-z]*(?:\.[a-z][A-Za-z]*)+")


def split_alternatives(expression: str) -> list[str]:
    """`A | (B) | C.where(x | y)` -> ["A", "(B)", "C.where(x | y)"]: split on top-level unions only."""
    parts: list[str] = []
    depth, start = 0, 0
    for i, char in enumerate(expression):
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        elif char == "|" and depth == 0:
            parts.append(expression[start:i].strip())
            start = i + 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def _root(alternative: str) -> str:
    return alternative.lstrip("(").split(".", 1)[0]


def _elements(resource_type: str, alternatives: list[str]) -> set[str]:
    """Top-level elements an expression reads (`Observation.value.ofType(Quantity)` -> value); inside `meta`,
    which the PHI policy splits, the sub-element (`meta.source`)."""
    found = re.finditer(rf"\b{resource_type}\.([a-zA-Z]+)(?:\.([a-zA-Z]+))?", " ".join(alternatives))
    return {f"{m.group(1)}.{m.group(2)}" if m.group(1) == META and m.group(2) else m.group(1) for m in found}


def _entry(resource_type: str, resource: dict[str, Any]) -> dict[str, Any] | None:
    expression = str(resource.get("expression") or "")
    kind = resource.get("type")
    if not expression or kind not in SUPPORTED_KINDS or resource.get("code") in NOT_OFFERED:
        return None
    alternatives = []
    for alternative in split_alternatives(expression):
        root = _root(alternative)
        if root == "Resource":
            alternative = alternative.replace("Resource.", f"{resource_type}.", 1)
        elif root != resource_type:
            continue
        alternatives.append(alternative)
    if not alternatives:
        return None
    resolve_types = {m.group(1) for a in alternatives for m in RESOLVE_IS.finditer(a)}
    if len(resolve_types) > 1:
        return None  # no R4 parameter of a stored type needs this; refuse rather than guess
    alternatives = [RESOLVE_IS.sub("", a) for a in alternatives]
    clear_elements = (CLEAR_COMMON - {META}) | CLEAR_ELEMENTS.get(resource_type, frozenset()) | {
        f"{META}.{sub}" for sub in META_CLEAR}
    entry: dict[str, Any] = {
        "type": kind,
        "expression": " | ".join(alternatives),
        "clear": _elements(resource_type, alternatives) <= clear_elements,
    }
    if resource.get("target"):
        entry["targets"] = sorted(resource["target"])
    if resolve_types:
        entry["resolve"] = resolve_types.pop()
    compiled = plan(resource_type, alternatives)
    if compiled is not None:  # compact JSON text: the table stays small, and a plan is parsed on its first use
        entry["plan"] = json.dumps(compiled, separators=(",", ":"))
    return entry


def generate(source: Path = SOURCE) -> dict[str, dict[str, dict[str, Any]]]:
    bundle = json.loads(source.read_text(encoding="utf-8"))
    table: dict[str, dict[str, dict[str, Any]]] = {t: {} for t in sorted(RESOURCE_TYPES)}
    for item in bundle["entry"]:
        resource = item["resource"]
        bases = set(resource.get("base") or ())
        types = RESOURCE_TYPES if bases & {"Resource", "DomainResource"} else RESOURCE_TYPES & bases
        for resource_type in sorted(types):
            entry = _entry(resource_type, resource)
            if entry is not None:
                table[resource_type][str(resource["code"])] = entry
    schema = json.loads(SCHEMA.read_text(encoding="utf-8"))
    for params in table.values():
        _mark_indexed_under(params, schema)
    return {t: dict(sorted(params.items())) for t, params in table.items()}


def _mark_indexed_under(params: dict[str, dict[str, Any]], schema: dict[str, Any]) -> None:
    """A string parameter whose expression is a plain member path `P.part`, where `P` is the whole expression of
    another string parameter and `part` a `string` element (per the FHIR JSON schema) that is one of the text
    parts esus.domain.search_semantics.string_values takes from P's values, has each of its values among the wider
    one's values: every index term it would write, the wider one writes too (tests/unit/test_fhirsearch.py holds
    that on every example)."""
    wider = {e["expression"]: code for code, e in params.items()
             if e["type"] == "string" and MEMBER_PATH.fullmatch(e["expression"])}
    for entry in params.values():
        whole, _, part = entry["expression"].rpartition(".")
        if (entry["type"] == "string" and MEMBER_PATH.fullmatch(entry["expression"]) and whole in wider
                and part not in NON_TEXT_PARTS and _element_type(schema, entry["expression"]) == "string"):
            entry["indexed_under"] = wider[whole]


def _element_type(schema: dict[str, Any], path: str) -> str | None:
    """`Patient.name.family` -> "string": the schema definition a member path ends at (None: not a plain path)."""
    definitions = schema["definitions"]
    root, *members = path.split(".")
    current = root
    for member in members:
        element = definitions.get(current, {}).get("properties", {}).get(member)
        if element is None:
            return None
        reference = element.get("$ref") or element.get("items", {}).get("$ref")
        if not isinstance(reference, str):
            return None
        current = reference.rsplit("/", 1)[-1]
    return current


def render(table: dict[str, dict[str, dict[str, Any]]]) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed table is not current")
    args = parser.parse_args(argv)
    text = render(generate())
    if not write_or_check(TARGET, text, "esus_dev.codegen.gen_search_params", args.check):
        return 1
    if args.check:
        return 0
    print(f"wrote {TARGET} ({sum(len(p) for p in json.loads(text).values())} parameters)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
