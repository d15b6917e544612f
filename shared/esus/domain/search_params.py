"""The R4 search parameters ESUS offers, per type (the table `esus_dev.codegen.gen_search_params` generates from
the official SearchParameter definitions; see docs/SEARCH.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

TABLE = Path(__file__).with_name("search_params_r4.json")


@dataclass(frozen=True)
class SearchParam:
    resource_type: str
    code: str
    type: str  # number date string token reference quantity uri
    expression: str
    clear: bool  # every element the expression reads is a clear element: index keys may hold values
    targets: tuple[str, ...] = ()
    resolve: str | None = None  # `.where(resolve() is T)`: only references to T count
    plan: str | None = field(default=None, compare=False)  # JSON, see esus.domain.fhirpath_plans
    # A string parameter reading one part of a wider one's values (`family` of `name`): its terms are found in
    # the wider parameter's index items, so it writes none of its own (docs/SEARCH.md, "Strings").
    indexed_under: str | None = None

    @property
    def key_name(self) -> str:
        """Names the parameter's HMAC key (per tenant, from HKDF) and its index partitions."""
        return f"{self.resource_type}.{self.code}"


@lru_cache(maxsize=1)
def _raw_table() -> dict[str, dict[str, dict[str, Any]]]:
    return dict(json.loads(TABLE.read_text(encoding="utf-8")))


@cache
def params_for(resource_type: str) -> dict[str, SearchParam]:
    """A type's parameters, built on first use (a function serves a few types; building all costs ~50 ms)."""
    return {
        code: SearchParam(resource_type, code, entry["type"], entry["expression"], bool(entry["clear"]),
                          tuple(entry.get("targets") or ()), entry.get("resolve"), entry.get("plan"),
                          entry.get("indexed_under"))
        for code, entry in _raw_table().get(resource_type, {}).items()
    }


def lookup_param(param: SearchParam) -> SearchParam:
    """The parameter whose index partitions a lookup of `param` reads: itself, or the wider one it is indexed under."""
    return params_for(param.resource_type)[param.indexed_under] if param.indexed_under else param


def searchable_types() -> list[str]:
    return sorted(_raw_table())
