"""S3 adapter for version bodies that do not fit a DynamoDB item, and for every Binary.

What goes in is already sealed: the clear skeleton of the resource (codes, ids, labels: no PHI) and the
AES-GCM envelope of every other element, sealed with the tenant's field key and bound (AAD) to tenant, type,
id, version and element, exactly as in a DynamoDB item. The bucket adds SSE-KMS on top; S3 never holds
plaintext.

Keys are content-addressed: `tenant/type/id/version/sha256-of-the-object`. An object is written once (If-None-Match)
before the transaction that commits the version's pointer and digest; a write that fails between the two leaves
an orphan no item points to, which `esus verify` reports and `esus cleanup-objects` removes (esus.ops.verify).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from botocore.exceptions import ClientError

from esus.security.crypto import IntegrityFailure

FORMAT = b"ESUS-SEALED-1\n"
DELETE_BATCH = 1000  # S3 DeleteObjects


@dataclass(frozen=True)
class StoredObject:
    key: str
    size: int
    last_modified: datetime


def object_key(tenant: str, resource_type: str, resource_id: str, version: int, digest: str) -> str:
    return f"{version_prefix(tenant, resource_type, resource_id, version)}{digest}"


def version_prefix(tenant: str, resource_type: str, resource_id: str, version: int) -> str:
    return f"{tenant}/{resource_type}/{resource_id}/{version}/"


def tenant_prefix(tenant: str) -> str:
    return f"{tenant}/"


def object_tenant(key: str) -> str:
    """The tenant of any object key (every key begins with it)."""
    return key.split("/", 1)[0]


def parse_key(key: str) -> tuple[str, str, str, int, str] | None:
    """(tenant, type, id, version, digest) of an object key; None for a key this store never writes."""
    parts = key.split("/")
    if len(parts) != 5 or not parts[3].isdigit() or len(parts[4]) != 64:
        return None
    return parts[0], parts[1], parts[2], int(parts[3]), parts[4]


def digest_of(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


def pack(doc: str, sealed: dict[str, bytes]) -> bytes:
    """One object: a header line (the clear skeleton and each envelope's name and length), then the envelopes.
    Envelopes stay raw bytes: base64 in JSON would add a third to the largest objects."""
    names = sorted(sealed)
    header = json.dumps({"doc": doc, "sealed": [[name, len(sealed[name])] for name in names]},
                        ensure_ascii=False, separators=(",", ":")).encode()
    return b"".join([FORMAT, header, b"\n", *(sealed[name] for name in names)])


def unpack(body: bytes) -> tuple[str, dict[str, bytes]]:
    if not body.startswith(FORMAT):
        raise IntegrityFailure("A stored object has an unknown format")
    end = body.find(b"\n", len(FORMAT))
    try:
        header: Any = json.loads(body[len(FORMAT):end]) if end > 0 else {}
        position = end + 1
        sealed: dict[str, bytes] = {}
        for name, length in header["sealed"]:
            sealed[str(name)] = body[position:position + int(length)]
            position += int(length)
        doc = str(header["doc"])
    except (ValueError, TypeError, KeyError):
        raise IntegrityFailure("A stored object is malformed") from None
    if position != len(body):
        raise IntegrityFailure("A stored object is malformed")
    return doc, sealed


class ObjectStore:
    """One bucket. The S3 client is made on first use: most requests never touch an object (cold starts)."""

    def __init__(self, bucket: str, client_factory: Callable[[], Any]) -> None:
        self.bucket = bucket
        self._factory = client_factory
        self._client: Any = None
        self._lock = threading.Lock()  # versions of one page may be decoded in threads; boto3 sessions are not safe

    @property
    def client(self) -> Any:
        with self._lock:
            if self._client is None:
                self._client = self._factory()
            return self._client

    def put_new(self, key: str, body: bytes) -> None:
        """Write `body` under `key` unless an object is already there. Keys are content-addressed, so an object
        already there holds these bytes (a retried write): that is success, and nothing is overwritten."""
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=body, IfNoneMatch="*",
                                   ContentType="application/octet-stream")
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code not in ("PreconditionFailed", "ConditionalRequestConflict"):
                raise

    def get(self, key: str) -> bytes | None:
        try:
            response = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return bytes(response["Body"].read())

    def pages(self, prefix: str = "") -> Iterator[list[StoredObject]]:
        """Every object under `prefix`, one ListObjectsV2 page (at most 1000 keys) at a time."""
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": prefix}
        while True:
            page = self.client.list_objects_v2(**kwargs)
            yield [StoredObject(str(o["Key"]), int(o["Size"]), o["LastModified"]) for o in page.get("Contents", [])]
            if not page.get("IsTruncated"):
                return
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def delete(self, keys: list[str]) -> None:
        for start in range(0, len(keys), DELETE_BATCH):
            batch = [{"Key": key} for key in keys[start:start + DELETE_BATCH]]
            response = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
            if response.get("Errors"):
                error = response["Errors"][0]
                raise ClientError({"Error": {"Code": error.get("Code", "DeleteFailed"),
                                             "Message": error.get("Message", "")}}, "DeleteObjects")
