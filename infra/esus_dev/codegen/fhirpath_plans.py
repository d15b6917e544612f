"""Compiles the simple FHIRPath expressions of the search table into plans that esus.domain.fhirpath_plans walks
without fhirpathpy (whose first use, ANTLR parser and model tables included, costs a write's first request about a
tenth of a second). The plans follow fhirpathpy's R4 model: choice elements (`Observation.value`), their types
(`ofType`), the type of each step (`ActivityDefinition.useContext.value` is `UsageContext.value`, a choice).

What compiles: unions of paths made of member steps, `.where(member='literal')`, `.ofType(T)` right after a choice
element (only where no other choice type is a subtype of T), a parenthesised path followed by more steps, and the
presence test `P.exists() and P != false`. Anything else gets no plan and is evaluated by fhirpathpy. The unit test
tests/unit/test_fhirpath_plans.py holds every plan to fhirpathpy's answer on the official examples and Synthea.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

IDENT = r"[A-Za-z][A-Za-z0-9]*"
STEP = re.compile(rf"\.(?:(?P<member>{IDENT})(?![A-Za-z0-9(])|where\((?P<key>{IDENT})='(?P<literal>[^'\\]*)'\)"
                  rf"|ofType\((?P<type>{IDENT})\))")
PRESENT_NOT_FALSE = re.compile(r"^(?P<path>[^()|]+)\.exists\(\) and (?P=path) != false$")


@lru_cache(maxsize=1)
def _model() -> dict[str, Any]:
    from fhirpathpy.models import models

    return dict(models["r4"])


def _subtypes_of(type_name: str, types: list[str]) -> bool:
    """Whether any of `types` other than `type_name` descends from it (ofType would then need subtype rules)."""
    parents: dict[str, str] = _model()["type2Parent"]
    for candidate in types:
        seen, current = set(), candidate
        while current in parents and current not in seen:
            seen.add(current)
            current = parents[current]
            if current.lower() == type_name.lower() and candidate.lower() != type_name.lower():
                return True
    return False


Steps = list[list[Any]]


def _steps(type_path: str, text: str) -> tuple[Steps, str] | None:
    """Plan steps for `.a.b.where(k='v').c` read from the type path `type_path`, and the type path they end on;
    None when the text leaves the subset."""
    model = _model()
    steps: Steps = []
    pending_choice: list[str] | None = None  # the types a choice step may have produced, until an ofType decides
    position = 0
    while position < len(text):
        match = STEP.match(text, position)
        if not match:
            return None
        position = match.end()
        if match.group("type"):
            if pending_choice is None:
                return None
            wanted = match.group("type")
            chosen = [t for t in pending_choice if t.lower() == wanted.lower()]
            if not chosen or _subtypes_of(wanted, pending_choice):
                return None
            steps.append(["ofType", chosen[0]])
            type_path = model["path2Type"].get(f"{type_path}{chosen[0]}", f"{type_path}{chosen[0]}")
            pending_choice = None
            continue
        if pending_choice is not None:
            return None  # a step after a choice without ofType: its type would depend on the data
        if match.group("key"):
            steps.append(["where", match.group("key"), match.group("literal")])
            continue
        key = match.group("member")
        child = f"{type_path}.{key}"
        child = model["pathsDefinedElsewhere"].get(child, child)
        choices = model["choiceTypePaths"].get(child)
        if choices:
            steps.append(["choice", key, list(choices)])
            pending_choice = list(choices)
            type_path = child
            continue
        if key == "extension":
            child = "Extension"
        steps.append(["member", key])
        type_path = model["path2Type"].get(child, child)
    # A path may end on a choice element: then the value of whichever type is present.
    return steps, type_path


def _alternative(resource_type: str, alternative: str) -> tuple[Steps, str] | None:
    """`Type.a.b` or `(Type.a.ofType(T)).b`: the steps from the resource and the type path they end on."""
    text = alternative.strip()
    if not text.startswith("("):
        if not text.startswith(f"{resource_type}."):
            return None
        found = _steps(resource_type, text[len(resource_type):])
        return None if found is None else ([["root", resource_type], *found[0]], found[1])
    depth = 0
    for i, char in enumerate(text):
        depth += {"(": 1, ")": -1}.get(char, 0)
        if depth == 0:
            inner, rest = text[1:i], text[i + 1:]
            break
    else:
        return None
    inside = _alternative(resource_type, inner)
    if inside is None or not rest:
        return inside
    if inside[0][-1][0] == "choice":
        return None  # more steps after a choice without ofType
    more = _steps(inside[1], rest)  # the steps after the parentheses continue from the type inside ends on
    return None if more is None else (inside[0] + more[0], more[1])


def plan(resource_type: str, alternatives: list[str]) -> dict[str, Any] | None:
    """The plan of an expression (its top-level alternatives), or None when fhirpathpy must evaluate it."""
    if len(alternatives) == 1:
        present = PRESENT_NOT_FALSE.match(alternatives[0])
        if present:
            path = _alternative(resource_type, present.group("path"))
            return None if path is None else {"present_not_false": path[0]}
    paths = [_alternative(resource_type, a) for a in alternatives]
    if any(p is None for p in paths):
        return None
    return {"union": [p[0] for p in paths if p is not None]}
