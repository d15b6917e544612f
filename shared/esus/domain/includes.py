"""_include and _revinclude (FHIR R4 search.html#include) on any search.

`_include=Observation:subject[:Patient]` adds the resources the matches reference through that parameter;
`_revinclude=Provenance:target` adds the resources that reference the matches through it (a resource's chain
of custody: `Patient?_id=X&_revinclude=Provenance:target`). `:iterate` (R4 also says `:recurse`) applies the
same to what was included, again, a bounded number of rounds. Included resources are current, live and of the
caller's tenant, and each one must be visible to the caller as if it had read it directly: its scopes grant
`r` or `s` on the type anywhere, or (patient/ scopes only) it is in the token's patient's compartment.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

from esus.domain.compartment import visible
from esus.domain.fhir import PROVENANCE, REFERENCE_PATTERN, SUPPORTED_TYPES
from esus.domain.search import SearchService
from esus.domain.search_index import in_parallel
from esus.domain.search_legacy import PROVENANCE_REFERENCE_PARAMS
from esus.domain.search_params import params_for
from esus.errors import InvalidRequest
from esus.security.auth import Principal
from esus.storage.store import Store

INCLUDE, REVINCLUDE = "_include", "_revinclude"
ITERATE_MODIFIERS = ("iterate", "recurse")  # R4 names both (recurse is the DSTU2 spelling)
MAX_ROUNDS = 4  # :iterate rounds after the first
MAX_INCLUDED = 1000  # per page; beyond it the search must be narrowed (or paged smaller)
REVERSE_REFERENCES_PER_LOOKUP = 50
# Provenance's reference parameters: where they read (its own index, not the generated table).
PROVENANCE_PATHS: dict[str, tuple[tuple[str, str | None], ...]] = {
    "target": (("target", None),), "patient": (("target", None),),
    "agent": (("agent", "who"), ("agent", "onBehalfOf")), "entity": (("entity", "what"),),
}


@dataclass(frozen=True)
class Include:
    reverse: bool  # _revinclude
    source_type: str  # the type whose parameter holds the reference
    code: str  # the reference parameter
    target_type: str | None  # only references to this type
    iterate: bool


def split_includes(params: dict[str, list[str]]) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """(the search's own parameters, the _include/_revinclude parameters as sent)."""
    search: dict[str, list[str]] = {}
    includes: dict[str, list[str]] = {}
    for name, values in params.items():
        (includes if name.split(":", 1)[0] in (INCLUDE, REVINCLUDE) else search)[name] = values
    return search, includes


def parse_includes(params: dict[str, list[str]], resource_types: Iterable[str]) -> list[Include]:
    """Strict: an unknown type or parameter, a non-reference parameter or `*` is a 400. A non-iterating
    _include must start at a searched type (else it could never include anything)."""
    searched = set(resource_types)
    parsed: list[Include] = []
    for name, values in params.items():
        kind, _, modifier = name.partition(":")
        if modifier and modifier not in ITERATE_MODIFIERS:
            raise InvalidRequest(f"{kind}:{modifier[:20]} is not supported (only :iterate)")
        for value in values:
            include = _parse_one(kind == REVINCLUDE, value.strip(), bool(modifier))
            if not include.reverse and not include.iterate and include.source_type not in searched:
                raise InvalidRequest(f"_include={value[:80]} starts at {include.source_type}, which this search does "
                                     f"not return ({', '.join(sorted(searched))}); use _include:iterate")
            parsed.append(include)
    return parsed


def _parse_one(reverse: bool, value: str, iterate: bool) -> Include:
    name = REVINCLUDE if reverse else INCLUDE
    parts = value.split(":")
    if "*" in parts:
        raise InvalidRequest(f"{name}=* is not supported: name the parameter (Type:param)")
    if len(parts) not in (2, 3) or not all(parts):
        raise InvalidRequest(f"{name} takes Type:param or Type:param:TargetType, not '{value[:80]}'")
    source_type, code = parts[0], parts[1]
    target_type = parts[2] if len(parts) == 3 else None
    if source_type not in SUPPORTED_TYPES:
        raise InvalidRequest(f"{name}: '{source_type[:64]}' is not a resource type this server stores")
    targets: tuple[str, ...] = ()
    if source_type == PROVENANCE:
        is_reference = code in PROVENANCE_REFERENCE_PARAMS
    else:
        param = params_for(source_type).get(code)
        is_reference, targets = param is not None and param.type == "reference", param.targets if param else ()
    if not is_reference:
        raise InvalidRequest(f"{name}: {source_type} has no reference search parameter '{code[:64]}'")
    if target_type is not None and (target_type not in SUPPORTED_TYPES or (targets and target_type not in targets)):
        raise InvalidRequest(f"{name}: {source_type}:{code} cannot reference '{target_type[:64]}'")
    return Include(reverse, source_type, code, target_type, iterate)


class IncludeService:
    def __init__(self, store: Store, search: SearchService) -> None:
        self._store = store
        self._search = search

    def included(
        self, principal: Principal, matches: list[dict[str, Any]], includes: list[Include],
    ) -> list[dict[str, Any]]:
        """The resources the includes add to `matches` (none twice, none of the matches), each visible to the
        caller. Round one applies every include to the matches; later rounds the iterating ones to what the
        previous round added."""
        seen = {(r["resourceType"], r["id"]) for r in matches}
        found: list[dict[str, Any]] = []
        frontier, active = matches, includes
        for _ in range(MAX_ROUNDS + 1):
            if not frontier or not active:
                break
            added: list[dict[str, Any]] = []
            for include in active:
                step = self._reverse if include.reverse else self._forward
                for resource in step(principal.tenant, include, frontier):
                    key = (resource["resourceType"], resource["id"])
                    if key not in seen and visible(principal, key[0], resource):
                        seen.add(key)
                        added.append(resource)
            found += added
            if len(found) > MAX_INCLUDED:
                raise InvalidRequest(f"This page would include more than {MAX_INCLUDED} resources: narrow the "
                                     "search or use a smaller _count")
            frontier, active = added, [i for i in includes if i.iterate]
        return found

    def _forward(self, tenant: str, include: Include, sources: list[dict[str, Any]]) -> list[dict[str, Any]]:
        wanted: dict[str, set[str]] = defaultdict(set)
        for resource in sources:
            if resource.get("resourceType") != include.source_type:
                continue
            for resource_type, resource_id in _references(include, resource):
                if include.target_type in (None, resource_type) and resource_type in SUPPORTED_TYPES:
                    wanted[resource_type].add(resource_id)
        return self.current(tenant, wanted)

    def current(self, tenant: str, wanted: dict[str, set[str]]) -> list[dict[str, Any]]:
        """The live current versions of these resources (unknown and deleted ones left out): those of every type
        read together, Provenance records (their own table) beside them."""
        keys = [(t, i) for t, ids in sorted(wanted.items()) if t != PROVENANCE for i in sorted(ids)]
        calls: list[Callable[[], list[dict[str, Any]]]] = []
        if keys:
            calls.append(lambda: [v.resource for v in self._store.currents_of(tenant, keys)
                                  if not v.deleted and v.resource is not None])
        if wanted.get(PROVENANCE):
            calls.append(partial(self._store.provenances, tenant, sorted(wanted[PROVENANCE])))
        return [resource for found in in_parallel(calls) for resource in found]

    def _reverse(self, tenant: str, include: Include, targets: list[dict[str, Any]]) -> list[dict[str, Any]]:
        references = sorted(f"{r['resourceType']}/{r['id']}" for r in targets
                            if include.target_type in (None, r["resourceType"]))
        found: list[dict[str, Any]] = []
        for start in range(0, len(references), REVERSE_REFERENCES_PER_LOOKUP):
            chunk = references[start : start + REVERSE_REFERENCES_PER_LOOKUP]
            if include.source_type == PROVENANCE:
                found += self._search.provenance_referencing(tenant, include.code, chunk)
            else:
                found += self._search.matching_resources(tenant, include.source_type, {include.code: [",".join(chunk)]})
        return found


def _references(include: Include, resource: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(type, id) of every reference the include's parameter holds in `resource` (versions dropped)."""
    if include.source_type != PROVENANCE:
        from esus.domain.search_semantics import extract, reference_values

        param = params_for(include.source_type)[include.code]
        for value in extract(param, resource):
            for reference in reference_values(param, value):  # `.where(resolve() is T)` honoured
                resource_type, _, resource_id = reference.partition("/")
                yield resource_type, resource_id
        return
    for element, inner in PROVENANCE_PATHS[include.code]:
        for item in resource.get(element) or ():
            value = item.get(inner) if inner and isinstance(item, dict) else item
            text = value.get("reference") if isinstance(value, dict) else None
            match = REFERENCE_PATTERN.match(text.strip()) if isinstance(text, str) else None
            if match and (include.code != "patient" or match.group("type") == "Patient"):
                yield match.group("type"), match.group("id")
