"""Index keys and items for FHIR search (docs/SEARCH.md).

A term (esus.domain.search_semantics) becomes an index key: as it is for parameters that read only clear elements,
else a truncated HMAC under a per-tenant, per-parameter key from the HKDF hierarchy (`k<version>.<hex>`,
so a key rotation keeps old items findable). Items are keyed by resource id AND version and are never
deleted on the request path: a write needs nothing from the version it replaces.
"""

from __future__ import annotations

import contextvars
import hashlib
import hmac
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from functools import partial
from typing import TypeVar

from esus.domain.compartment import PATIENT, compartment_patients
from esus.domain.fhir import PROVENANCE
from esus.domain.search_legacy import PROVENANCE_REFERENCE_PARAMS
from esus.domain.search_params import SearchParam, lookup_param, params_for
from esus.domain.search_semantics import index_terms
from esus.model import IndexEntry, Version
from esus.security.crypto import KeyRing, index_purpose
from esus.settings import Settings
from esus.storage.store import (
    BATCH_WRITE_LIMIT,
    COMPARTMENT,
    Store,
    compartment_partition,
    index_partition,
    is_compartment_partition,
    split_index_partition,
)

T = TypeVar("T")

_pool: ThreadPoolExecutor | None = None


def pool() -> ThreadPoolExecutor:
    """Concurrent DynamoDB calls (boto3 clients are thread-safe): index writes beside the version's
    transaction, and a query's partition lookups side by side."""
    global _pool
    if _pool is None:
        _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="esus-search")
    return _pool


def in_parallel(calls: Sequence[Callable[[], T]]) -> list[T]:
    if len(calls) <= 1:
        return [call() for call in calls]
    # Each call runs in a copy of the caller's context: a read view (esus.storage.store) follows it.
    futures: list[Future[T]] = [pool().submit(contextvars.copy_context().run, call) for call in calls]
    wait(futures)  # all finish before any error is raised: no work outlives the request
    return [f.result() for f in futures]


def sort_key(resource_id: str, version: int) -> str:
    return f"{resource_id}|{version:012d}"


def parse_sort_key(sort: str) -> tuple[str, int]:
    resource_id, _, version = sort.rpartition("|")
    return resource_id, int(version) if version.isdigit() else 0


# Provenance keeps its own index (not the generated table), but its references get keyed tokens like every
# reference parameter: a target or agent may be a patient, and no index key may name one.
PROVENANCE_REFERENCES: dict[str, SearchParam] = {
    code: SearchParam(PROVENANCE, code, "reference", "", clear=False) for code in PROVENANCE_REFERENCE_PARAMS
}
# A patient's compartment partition is keyed like a reference parameter: a 128-bit token of `Patient/{id}` under
# its own per-tenant key.
COMPARTMENT_KEY = SearchParam(PATIENT, COMPARTMENT, "reference", "", clear=False)


def compartment_sort_key(resource_type: str, resource_id: str, version: int) -> str:
    """A compartment item's sort key: the member's type first, so one type's members are a key range."""
    return f"{resource_type}|{sort_key(resource_id, version)}"


def parse_compartment_sort_key(sort: str) -> tuple[str, str, int]:
    resource_type, _, rest = sort.partition("|")
    return (resource_type, *parse_sort_key(rest))


def search_entry_from_ref(ref: str) -> IndexEntry:
    """An `idx` ref of a search index item (sort key id|version) or of a compartment item (Type|id|version) as the
    entry it names."""
    entry = IndexEntry.from_ref(ref)
    return IndexEntry(entry.partition, entry.sort, index_owner(entry.partition, entry.sort)[1])


def index_owner(partition: str, sort: str) -> tuple[str, str]:
    """(type, id) of the resource a search index or compartment item belongs to."""
    if is_compartment_partition(partition):
        resource_type, resource_id, _ = parse_compartment_sort_key(sort)
        return resource_type, resource_id
    parts = split_index_partition(partition)
    assert parts is not None, "a search index partition"
    return parts[1], parse_sort_key(sort)[0]


class SearchKeys:
    """Term -> index key, per tenant and parameter."""

    def __init__(self, keyring: KeyRing, settings: Settings) -> None:
        self._keyring = keyring
        self._s = settings

    def bits(self, param: SearchParam) -> int:
        """Truncation per parameter (docs/SEARCH.md): collisions only add candidates that are re-checked."""
        if param.type == "reference":
            return 128  # references may be full length: a patient's items must not mix with another's
        if param.type == "date":
            return 16
        if param.type in ("number", "quantity"):
            return 12
        if param.code == "phone":
            return self._s.token_bits_phone
        if param.code == "email":
            return self._s.token_bits_email
        return self._s.token_bits_identifier

    def key(self, tenant: str, param: SearchParam, term: str, key_version: str | None = None) -> str:
        if param.clear:
            return term
        kv = key_version or self._keyring.current_version()
        secret = self._keyring.key(tenant, index_purpose(param.key_name), kv)
        bits = self.bits(param)
        value = int.from_bytes(hmac.new(secret, term.encode(), hashlib.sha256).digest(), "big") >> (256 - bits)
        return f"k{kv}.{value:0{(bits + 3) // 4}x}"

    def lookup_keys(self, tenant: str, param: SearchParam, term: str) -> list[str]:
        """Under every live key version: items written before a rotation stay findable."""
        if param.clear:
            return [term]
        return sorted({self.key(tenant, param, term, kv) for kv in self._keyring.versions()})

    def lookup_partitions(self, tenant: str, param: SearchParam, term: str) -> list[str]:
        """The partitions holding `term` of `param` under every live key version: those of the wider parameter
        for one indexed under it (search_params.lookup_param)."""
        indexed = lookup_param(param)
        return [self.partition(tenant, indexed, key) for key in self.lookup_keys(tenant, indexed, term)]

    def current_version(self) -> str:
        return self._keyring.current_version()

    def provenance_token(self, tenant: str, key_version: str) -> Callable[[str, str], str]:
        """(Provenance parameter, `Type/id`) -> its index key under one key version (128-bit token)."""
        return lambda code, reference: self.key(tenant, PROVENANCE_REFERENCES[code], reference, key_version)

    def provenance_partitions(self, tenant: str, code: str, reference: str) -> list[str]:
        """The partitions a Provenance reference is found in, under every live key version."""
        return self.lookup_partitions(tenant, PROVENANCE_REFERENCES[code], reference)

    def partition(self, tenant: str, param: SearchParam, key: str) -> str:
        return index_partition(tenant, param.resource_type, param.code, key)

    def compartment_partitions(self, tenant: str, patient_id: str) -> list[str]:
        """Patient {patient_id}'s compartment partition under every live key version."""
        reference = f"{PATIENT}/{patient_id}"
        return [compartment_partition(tenant, key) for key in self.lookup_keys(tenant, COMPARTMENT_KEY, reference)]

    def entries(self, tenant: str, version: Version) -> list[IndexEntry]:
        """Every index item of one version (none for a delete): its search index items, then one item in the
        compartment of each Patient it belongs to."""
        if version.resource is None:
            return []
        found: list[IndexEntry] = []
        sort = sort_key(version.resource_id, version.version)
        for param in params_for(version.resource_type).values():
            for term in sorted(index_terms(param, version.resource)):
                partition = self.partition(tenant, param, self.key(tenant, param, term))
                found.append(IndexEntry(partition, sort, version.resource_id))
        member = compartment_sort_key(version.resource_type, version.resource_id, version.version)
        for patient_id in sorted(compartment_patients(version.resource_type, version.resource)):
            key = self.key(tenant, COMPARTMENT_KEY, f"{PATIENT}/{patient_id}")
            found.append(IndexEntry(compartment_partition(tenant, key), member, version.resource_id))
        return found


def index_writes(store: Store, entries: Sequence[IndexEntry]) -> list[Callable[[], None]]:
    """Index items written beside a transaction, as one call per BatchWriteItem (25 items), to be run side
    by side (with `in_parallel`): 125 items cost one round trip of latency, not five."""
    return [partial(store.put_index_items, chunk) for chunk in chunks(entries, BATCH_WRITE_LIMIT)]


def chunks(items: Sequence[T], size: int) -> Iterable[Sequence[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]

