"""What a stored item says, for code outside storage that reads items as they are (the integrity checker walks
every table raw). Attribute names are storage's own: esus.storage.store writes them, this reads them.

Items here are plain (attribute values already unwrapped, as Store.scan_pages and Store.get_many return them)."""

from __future__ import annotations

from typing import Any

KEY, SORT = "pk", "sk"
VERSION, LAST_UPDATED, INDEX_REFS, OBJECT = "v", "lu", "idx", "obj"
LOCK = "tx"  # the large transaction an item is locked by, or pending in (docs/TRANSACTIONS.md)
RECORDED, INDEX_KEY_VERSION = "rec", "ikv"  # a Provenance record's
FINISHED = "fin"  # a transaction record's
WRITTEN = "w"  # an index item written beside (not inside) its version's transaction: when (epoch seconds)

Item = dict[str, Any]

# Projections: what a lookup reads when it needs only this much.
OWNER_ATTRIBUTES = (KEY, INDEX_REFS, LOCK, VERSION)  # does a current item still list an index item?
OBJECT_ATTRIBUTES = (KEY, VERSION, OBJECT)  # does a version point to an object?
KEY_ATTRIBUTES = (KEY, SORT)


def key(item: Item) -> str:
    return str(item[KEY])


def sort(item: Item) -> str:
    return str(item[SORT])


def version_number(item: Item) -> int | None:
    """The version a current or history item holds (None: a lock or placeholder without one)."""
    return int(item[VERSION]) if VERSION in item else None


def history_number(item: Item) -> int:
    """A history item's version (its sort key: always there)."""
    return int(item[VERSION])


def lock(item: Item) -> str | None:
    return str(item[LOCK]) if LOCK in item else None


def index_refs(item: Item) -> list[str]:
    return [str(ref) for ref in item.get(INDEX_REFS) or ()]


def written(item: Item) -> int | None:
    """When an index item written beside its version's transaction was written (None: inside one, or before
    this was recorded)."""
    return int(item[WRITTEN]) if WRITTEN in item else None


def object_key(item: Item) -> str | None:
    return str(item[OBJECT]) if OBJECT in item else None


def recorded(item: Item) -> str:
    return str(item[RECORDED])


def index_key_version(item: Item) -> str | None:
    """The key version of a Provenance record's index tokens (None: written before tokens, references in clear)."""
    return str(item[INDEX_KEY_VERSION]) if INDEX_KEY_VERSION in item else None


def finished(item: Item) -> bool:
    return bool(item.get(FINISHED))


def same_version(a: Item, b: Item) -> bool:
    """The same version of a current item, with the same index items (read twice, unchanged in between)."""
    return all(a.get(name) == b.get(name) for name in (VERSION, LAST_UPDATED, INDEX_REFS))


def current_key(partition: str) -> Item:
    """The key of a current item (a resource's, or a Provenance record's)."""
    return {KEY: partition}


def history_key(resource_key: str, number: int) -> Item:
    return {KEY: resource_key, VERSION: number}


def index_key(partition: str, sort_key: str) -> Item:
    return {KEY: partition, SORT: sort_key}
