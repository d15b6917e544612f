"""What storage refuses. These know nothing of HTTP: the domain decides what a conflict means for its
interaction (412, a retry, a 409 of its own), and esus.http.api.error_for maps whatever reaches it.
Stored data that fails authentication is esus.security.crypto.IntegrityFailure (raised here too)."""

from __future__ import annotations

from typing import Any


class StorageError(Exception):
    """Base of every refusal of the storage layer; its message is safe to show (no stored values)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class WriteConflict(StorageError):
    """A concurrent writer got there first; nothing was stored, and the same write may succeed later."""


class VersionConflict(WriteConflict):
    """The conditional write lost: another version was stored first (or the resource is missing)."""

    def __init__(self, current_version: int | None, current_deleted: bool | None) -> None:
        super().__init__("A concurrent change won; nothing was stored. Retry.")
        self.current_version = current_version
        self.current_deleted = current_deleted


class Locked(WriteConflict):
    """A conditional write met an item locked by a large transaction (docs/TRANSACTIONS.md). Writers
    resolve it (esus.storage.transactions.TransactionStore.resolve) and retry."""

    def __init__(self, tenant: str, txid: str, table: str, key: dict[str, Any]) -> None:
        super().__init__("A transaction in progress holds this resource; nothing was stored. Retry.")
        self.tenant, self.txid, self.table, self.key = tenant, txid, table, key


class TransactionBusy(WriteConflict):
    """Another transaction holds an item this write needs, and its lease has not ended."""

    def __init__(self) -> None:
        super().__init__("Another transaction in progress holds a resource this request changes; nothing was "
                         "stored. Retry.")


class TransactionAborted(WriteConflict):
    """This transaction was aborted (it met a conflict, or its lease ended before it could commit)."""

    def __init__(self, why: str) -> None:
        super().__init__(f"{why}; nothing was stored. Retry.")


class TransientConflict(StorageError):
    """DynamoDB cancelled the transaction because another one touched the same items: callers retry it
    (not a WriteConflict: one that is never retried is a fault, not a client's race)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TooManyItems(StorageError):
    """A write that needs more items than one atomic transaction holds; refused before anything is written."""

    def __init__(self, needed: int, limit: int) -> None:
        super().__init__(
            f"This write needs {needed} DynamoDB items (each resource version writes its current and history "
            "items, two change-log items, and a Provenance with one index item per target and agent); one atomic "
            f"transaction holds at most {limit}. Nothing was stored. Send fewer Provenance targets or agents, or "
            "split a transaction Bundle into smaller transactions or a batch.")
        self.needed, self.limit = needed, limit
