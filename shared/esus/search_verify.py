"""Search index integrity (docs/SEARCH.md "What esus verify must check") and its repair.

`check_search_index` is what `esus verify` must run for the search index, replacing the old rule that
every hashed index item belongs to a live version: items of older versions are expected (they are
deleted lazily), so they are counted as stale, not reported. Reported: a current version's missing item
(incomplete), an `idx` that differs from the entries recomputed from the decrypted version, and items
that belong to no resource of their tenant and type (or to a version that never existed: orphans).
`repair_search_index` writes every missing item (from `idx`, no keys needed) and deletes stale and
orphan items.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from esus.container import Services
from esus.errors import IntegrityFailure
from esus.model import IndexEntry
from esus.search_index import parse_sort_key
from esus.searchparams import params_for


@dataclass
class SearchIndexReport:
    checked_versions: int = 0
    index_items: int = 0
    stale: list[str] = field(default_factory=list)  # refs of items of older versions (or orphans): cleanup
    missing: list[str] = field(default_factory=list)  # refs a current version needs that do not exist
    problems: list[str] = field(default_factory=list)


def is_search_item(partition: str) -> bool:
    parts = partition.split("|", 3)
    return len(parts) == 4 and parts[2] in params_for(parts[1])


def check_search_index(
    services: Services, current_items: Iterable[dict[str, Any]], index_items: Iterable[dict[str, Any]]
) -> SearchIndexReport:
    """Plain (deserialised) items of the resources and index tables, e.g. from Store.scan."""
    report = SearchIndexReport()
    existing: set[str] = set()
    for item in index_items:
        if is_search_item(str(item["pk"])):
            existing.add(f"{item['pk']}\n{item['sk']}")
    report.index_items = len(existing)
    owned: set[str] = set()
    for item in current_items:
        key = str(item["pk"])
        tenant, resource_type, resource_id = key.split("|", 2)
        refs = [str(r) for r in item.get("idx") or () if is_search_item(str(r).split("\n", 1)[0])]
        owned.update(refs)
        report.missing += [r for r in refs if r not in existing]
        if item.get("del"):
            continue
        report.checked_versions += 1
        try:
            version = services.store.decode_version(tenant, resource_type, resource_id, item)
        except IntegrityFailure as exc:
            report.problems.append(f"{key}: {exc}")
            continue
        expected = {e.ref for e in services.resources.index_entries(tenant, version)}
        if not expected <= set(refs) | existing:
            report.problems.append(f"{key}: {len(expected - set(refs) - existing)} index items its content needs "
                                   "are neither listed nor stored")
    report.problems += [f"index item {r.replace(chr(10), ' / ')} is missing (run repair)" for r in report.missing]
    report.stale = sorted(existing - owned)
    return report


def repair_search_index(services: Services, report: SearchIndexReport) -> None:
    store = services.store
    store.put_index_items([IndexEntry.from_ref(r) for r in report.missing])
    store.delete_index_items(report.stale)


def stale_versions(refs: Iterable[str]) -> list[tuple[str, int]]:
    return [parse_sort_key(r.split("\n", 1)[1]) for r in refs]
