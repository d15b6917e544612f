"""Required bindings: every coded element whose value set the R4 schema enumerates must hold one of its codes.

The pydantic models check structure, not codes. This walks a (structurally valid) resource with the generated
table fhir_bindings.json (infra/esus_dev/codegen/gen_fhir_tables.py): nested backbone elements, datatypes (ContactPoint,
HumanName, Address, Quantity, ...), extensions, primitive extensions (`_element`) and contained resources.
The table is read on first use, so importing this module costs nothing.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from esus.errors import Issue

TABLE = Path(__file__).with_name("fhir_bindings.json")
ANY_RESOURCE = "*"
IMPLICIT = {"extension": "Extension", "modifierExtension": "Extension"}
PRIMITIVE_EXTRAS = "Element"
MAX_ISSUES = 50
MAX_LISTED_CODES = 40


@functools.cache
def _table() -> tuple[dict[str, dict[str, int | str]], list[tuple[str, ...]]]:
    data = json.loads(TABLE.read_text(encoding="utf-8"))
    return data["elements"], [tuple(codes) for codes in data["value_sets"]]


def allowed_codes(definition: str, element: str) -> tuple[str, ...] | None:
    """The codes a required binding allows for `definition.element` (None: not an enumerated binding)."""
    elements, value_sets = _table()
    spec = elements.get(definition, {}).get(element)
    return value_sets[spec] if isinstance(spec, int) else None


def code_issues(resource_type: str, resource: dict[str, Any]) -> list[Issue]:
    """Issues for every code outside its required value set, with the element's path (`Patient.contact[0].gender`)."""
    issues: list[Issue] = []
    _walk(resource_type, resource, resource_type, issues)
    return issues[:MAX_ISSUES]


def _walk(definition: str, node: dict[str, Any], path: str, issues: list[Issue]) -> None:
    elements, value_sets = _table()
    spec_of = elements.get(definition)
    if spec_of is None:
        return
    for key, value in node.items():
        if len(issues) >= MAX_ISSUES:
            return
        spec = spec_of.get(key) or IMPLICIT.get(key) or (PRIMITIVE_EXTRAS if key[:1] == "_" else None)
        if spec is None:
            continue
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            where = f"{path}.{key}[{i}]" if isinstance(value, list) else f"{path}.{key}"
            if isinstance(spec, int):
                if isinstance(item, str) and item not in value_sets[spec]:
                    issues.append(_issue(where, item, value_sets[spec]))
            elif isinstance(item, dict):
                child = str(item.get("resourceType")) if spec == ANY_RESOURCE else spec
                _walk(child, item, where, issues)


def _issue(path: str, value: str, codes: tuple[str, ...]) -> Issue:
    more = f", ... ({len(codes)} codes)" if len(codes) > MAX_LISTED_CODES else ""
    listed = ", ".join(codes[:MAX_LISTED_CODES]) + more
    return Issue(
        "code-invalid",
        f"{path}: '{value[:64]}' is not in the required value set; allowed codes: {listed}",
        path,
    )
