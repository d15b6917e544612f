"""Walks the plans that infra/esus_dev/codegen/fhirpath_plans.py compiles from the search table's simple FHIRPath
expressions: the same values fhirpathpy returns (order, choice types, primitive extensions, union de-duplication),
without loading it. See that module for what compiles; tests/unit/test_fhirpath_plans.py holds the two equal."""

from __future__ import annotations

import json
from decimal import Decimal
from functools import lru_cache
from typing import Any

# (value, the choice type that produced it or None)
Node = tuple[Any, str | None]


def evaluate(plan_text: str, resource: dict[str, Any]) -> list[Any]:
    plan = _parsed(plan_text)
    if "present_not_false" in plan:
        found = _walk(plan["present_not_false"], resource)
        if not found:
            return [False]
        # `P != false` is false only for exactly one item that is false (FHIRPath collection equality).
        return [not (len(found) == 1 and found[0][0] is False)]
    alternatives = plan["union"]
    values = [value for steps in alternatives for value, _ in _walk(steps, resource)]
    return [_visit(v) for v in (_distinct(values) if len(alternatives) > 1 else values) if not _bare_extension(v)]


@lru_cache(maxsize=4096)
def _parsed(plan_text: str) -> dict[str, Any]:
    return dict(json.loads(plan_text))


def _walk(steps: list[list[Any]], resource: dict[str, Any]) -> list[Node]:
    nodes: list[Node] = [(resource, None)]
    for step in steps:
        kind = step[0]
        if kind == "root":  # `Patient.x` selects nothing in another type's resource
            nodes = [(value, chosen) for value, chosen in nodes
                     if isinstance(value, dict) and value.get("resourceType") == step[1]]
        elif kind == "member":
            nodes = [child for value, _ in nodes for child in _member(value, step[1])]
        elif kind == "choice":
            nodes = [child for value, _ in nodes for child in _choice(value, step[1], step[2])]
        elif kind == "ofType":
            nodes = [(value, chosen) for value, chosen in nodes if chosen == step[1]]
        elif kind == "where":
            nodes = [(value, chosen) for value, chosen in nodes
                     if [v for v, _ in _member(value, step[1])] == [step[2]]]
        else:
            raise ValueError(f"unknown plan step {kind!r}")
    return nodes


def _member(value: Any, key: str, chosen: str | None = None) -> list[Node]:
    """`value.key`: the element and, as fhirpathpy adds it, its primitive extension `_key` (lists flattened)."""
    if not isinstance(value, dict):
        return []
    found: list[Node] = []
    for name in (key, f"_{key}"):
        item = value.get(name)
        if item is None:
            continue
        found += [(i, chosen) for i in item] if isinstance(item, list) else [(item, chosen)]
    return found


def _choice(value: Any, key: str, types: list[str]) -> list[Node]:
    """A choice element: the first of its types present (a valid resource holds at most one)."""
    if not isinstance(value, dict):
        return []
    for type_name in types:
        field = f"{key}{type_name}"
        if value.get(field) is not None or value.get(f"_{field}") is not None:
            return _member(value, field, type_name)
    return []


def _bare_extension(value: Any) -> bool:
    return isinstance(value, dict) and list(value) == ["extension"]


def _visit(value: Any) -> Any:
    """fhirpathpy's answer is a copy in which every list drops what is only a primitive's extension
    (`{"extension": [...]}`), at any depth, and every float is a Decimal (of its shortest repr)."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, list):
        kept = [_visit(item) for item in value]
        return [item for item in kept if not _bare_extension(item)]
    if isinstance(value, dict):
        return {key: _visit(item) for key, item in value.items()}
    return value


def _distinct(values: list[Any]) -> list[Any]:
    """FHIRPath union: duplicates removed, first position kept (fhirpathpy compares JSON forms)."""
    unique: dict[str, Any] = {}
    for value in values:
        try:
            key = json.dumps(value, sort_keys=True)
        except TypeError:
            key = str(value)
        unique[key] = value
    return list(unique.values())
