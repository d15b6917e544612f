"""The write plan: every item one resource version writes, built in ONE place for the three ways they are
written: one TransactWriteItems (single writes and small transaction Bundles: Store.resource_write_items),
staged by a large transaction (esus.storage.transactions) and re-sealed after a key rotation
(Store.reencrypt_version_item). Items are plain (attribute -> value; None: absent); callers add their
conditions and transaction markers. The tables' layout is esus.storage.store's docstring."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from esus.model import IndexEntry, ResourceWrite, Version

# A version's own attributes, the same on its current and history items (the roll-forward copies them).
VERSION_ATTRIBUTES = ("v", "del", "lu", "doc", "phi", "obj", "sha", "okv")
GUARD_SORT = "-"  # the one item of a conditional-create guard partition


def unique_entries(entries: Sequence[IndexEntry]) -> list[IndexEntry]:
    """Index entries without repeats of the same item (partition + sort key), in their first order: two
    values whose truncated tokens collide share one item, and one transaction must not touch an item twice."""
    return list({entry.ref: entry for entry in entries}.values())


def current_item(pk: str, attrs: dict[str, Any], index_refs: list[str]) -> dict[str, Any]:
    """`idx`: every search index item the version owns (docs/SEARCH.md)."""
    return {"pk": pk, **attrs, "idx": index_refs or None}


def history_item(pk: str, attrs: dict[str, Any], version: Version) -> dict[str, Any]:
    return {"pk": pk, **attrs, "m": version.method, "st": version.status}


def current_from_history(history: dict[str, Any]) -> dict[str, Any]:
    """The current item a large transaction's pending history item (which lists `idx`) becomes."""
    return current_item(str(history["pk"]), {k: history.get(k) for k in VERSION_ATTRIBUTES},
                        list(history.get("idx") or ()))


def index_key(entry: IndexEntry) -> dict[str, Any]:
    return {"pk": entry.partition, "sk": entry.sort}


def index_item(entry: IndexEntry) -> dict[str, Any]:
    return {**index_key(entry), "rid": entry.resource_id, "del": True if entry.deleted else None}


def guard_item(partition: str, resource_id: str) -> dict[str, Any]:
    return {"pk": partition, "sk": GUARD_SORT, "rid": resource_id}


@dataclass(frozen=True)
class WritePlan:
    """The items of one ResourceWrite (its version encoded, its Provenance record encoded)."""

    pk: str
    current: dict[str, Any]
    history: dict[str, Any]
    provenance: dict[str, Any]
    provenance_index: list[IndexEntry]
    change_log: list[IndexEntry]
    search_index: list[IndexEntry]  # in the version's transaction
    deferred_index: list[IndexEntry]  # beside it; `idx` lists both
    guard: dict[str, Any] | None  # with the resource id the guard may still name (None: it must be new)
    guard_stale: str | None

    @property
    def index_refs(self) -> list[str]:
        return list(self.current.get("idx") or ())


def plan_write(write: ResourceWrite, pk: str, attrs: dict[str, Any], provenance: dict[str, Any]) -> WritePlan:
    """`attrs`: the version's encoded attributes (Store.encode_version); `provenance`: its record's item."""
    search = unique_entries(write.index_entries)
    deferred = unique_entries(write.deferred_index)
    guard, stale = (guard_item(write.unique_guard[0], write.version.resource_id), write.unique_guard[1]) \
        if write.unique_guard else (None, None)
    return WritePlan(
        pk=pk,
        current=current_item(pk, attrs, [e.ref for e in (*search, *deferred)]),
        history=history_item(pk, attrs, write.version),
        provenance=provenance,
        provenance_index=unique_entries(write.provenance_index),
        change_log=list(write.change_log),
        search_index=search,
        deferred_index=deferred,
        guard=guard,
        guard_stale=stale,
    )


def transaction_item_count(write: ResourceWrite) -> int:
    """How many TransactWriteItems entries Store.resource_write_items makes of a write whose search index
    items go beside it (a transaction Bundle's): current, history, Provenance, its index items, the change
    log, the guard. Counted without encoding (which may write a large body to the object store)."""
    return (3 + len(unique_entries(write.provenance_index)) + len(write.change_log)
            + (1 if write.unique_guard else 0) + len(unique_entries(write.index_entries)))
