"""Plain records that move between the service and the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, kw_only=True)
class Version:
    """One stored version of a resource (a delete version has no resource). Keyword-only: several
    fields share a type, and a swapped id/type or version/status would pass unnoticed."""

    resource_type: str
    resource_id: str
    version: int
    last_updated: str
    deleted: bool
    resource: dict[str, Any] | None
    method: str = "PUT"
    status: int = 200
    index_refs: tuple[str, ...] = ()

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}"

    @property
    def versioned_reference(self) -> str:
        return f"{self.resource_type}/{self.resource_id}/_history/{self.version}"


@dataclass(frozen=True)
class IndexEntry:
    """One search index item: partition = tenant|type|param|value-or-token, sort = order|id."""

    partition: str
    sort: str
    resource_id: str
    # Change-log entries only: the version is a delete (type listing needs no read to skip it).
    deleted: bool = False

    @property
    def ref(self) -> str:
        return f"{self.partition}\n{self.sort}"

    @classmethod
    def from_ref(cls, ref: str) -> IndexEntry:
        partition, sort = ref.split("\n", 1)
        return cls(partition, sort, sort.rsplit("|", 1)[-1])


@dataclass
class ResourceWrite:
    """Everything one write stores, committed as ONE TransactWriteItems."""

    tenant: str
    version: Version
    # None: the resource must not exist yet. Otherwise the stored version must equal it.
    expected_version: int | None
    # When set, the stored current item must also have this deleted flag (detects revive vs update).
    expected_deleted: bool | None
    # Search index items written inside the version's transaction ...
    index_entries: list[IndexEntry]
    stale_index_refs: list[str]
    provenance: dict[str, Any]
    provenance_index: list[IndexEntry] = field(default_factory=list)
    provenance_index_kv: str | None = None  # the key version of provenance_index's tokens
    # Type- and system-level history: permanent change-log entries, one per level.
    change_log: list[IndexEntry] = field(default_factory=list)
    # Conditional create: (guard partition, resource id the guard may still name) written with the version,
    # so two racing creates for the same search cannot both succeed.
    unique_guard: tuple[str, str | None] | None = None
    request_token: str = ""
    # ... and those written beside it (BatchWriteItem): a transaction Bundle's, or a single write's that
    # would not fit in one TransactWriteItems. Both are listed in the current item's `idx`.
    deferred_index: list[IndexEntry] = field(default_factory=list)
    # The version's item attributes once encoded (Store.write_plan): sealing is not repeated, and a
    # large body is written to the object store once per write.
    encoded: dict[str, Any] | None = None
