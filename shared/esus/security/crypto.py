"""Per-tenant keys (HKDF-SHA256 from a rotating root key), AES-256-GCM field envelopes, blind-index
tokens and signed paging cursors.

Nothing here runs at import time: the root key is fetched on first use (never during Lambda init,
so SnapStart never clones key material) and nonces are drawn from os.urandom per encryption.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from esus.errors import InvalidRequest

HKDF_SALT = b"esus/hkdf-salt/v1"
ENVELOPE_FORMAT = 1
NONCE_BYTES = 12


class IntegrityFailure(Exception):
    """Stored data failed authentication (tag mismatch, unknown key version, moved or malformed). Never
    returned silently; esus.http.api.error_for makes it a 500 and counts it (alarmed). The message names no
    stored value."""


PURPOSE_FIELD = "field-encryption"
PURPOSE_CURSOR = "paging-cursor"


def index_purpose(param: str) -> str:
    return f"hashed-index:{param}"


@dataclass(frozen=True)
class RootKeys:
    """The secret's content: {"current": "2", "keys": {"1": "<base64>", "2": "<base64>"}}."""

    current: str
    keys: dict[str, bytes]

    @classmethod
    def parse(cls, raw: str) -> RootKeys:
        """Accepts {"keys": {version: base64}} and, as CloudFormation generates the first version at deploy
        time, {"k<version>": "<random text>"} (the text's bytes are the HKDF input key material)."""
        data = json.loads(raw)
        keys = {str(k): base64.b64decode(v) for k, v in (data.get("keys") or {}).items()}
        for name, value in data.items():
            if re.fullmatch(r"k[0-9]+", name) and isinstance(value, str):
                keys.setdefault(name[1:], value.encode())
        current = str(data["current"])
        if current not in keys or any(len(k) < 32 for k in keys.values()):
            raise ValueError("root key secret is malformed")
        return cls(current=current, keys=keys)

    def with_new_version(self) -> RootKeys:
        new_version = str(max(int(k) for k in self.keys) + 1)
        return RootKeys(current=new_version, keys={**self.keys, new_version: os.urandom(32)})

    def serialize(self) -> str:
        return json.dumps(
            {"current": self.current, "keys": {k: base64.b64encode(v).decode() for k, v in self.keys.items()}}
        )

    @classmethod
    def generate(cls) -> RootKeys:
        return cls(current="1", keys={"1": os.urandom(32)})


class KeyRing:
    """Root keys fetched lazily from Secrets Manager and cached per container for `max_age` seconds."""

    def __init__(self, fetch_secret: Callable[[], str], max_age_seconds: int) -> None:
        self._fetch_secret = fetch_secret
        self._max_age = max_age_seconds
        self._lock = threading.Lock()
        self._root: RootKeys | None = None
        self._fetched_at = 0.0
        self._derived: dict[tuple[str, str, str], bytes] = {}

    def _roots(self, refresh: bool = False) -> RootKeys:
        with self._lock:
            stale = time.monotonic() - self._fetched_at > self._max_age
            if self._root is None or stale or refresh:
                self._root = RootKeys.parse(self._fetch_secret())
                self._fetched_at = time.monotonic()
            return self._root

    def current_version(self) -> str:
        return self._roots().current

    def versions(self) -> list[str]:
        return sorted(self._roots().keys, key=int)

    def key(self, tenant: str, purpose: str, key_version: str) -> bytes:
        cache_key = (tenant, purpose, key_version)
        derived = self._derived.get(cache_key)
        if derived is not None:
            return derived
        roots = self._roots()
        if key_version not in roots.keys:
            roots = self._roots(refresh=True)  # a newer version may have been rotated in meanwhile
        root = roots.keys.get(key_version)
        if root is None:
            raise IntegrityFailure("Stored data references an unknown key version")
        info = f"esus|{purpose}|tenant={tenant}|kv={key_version}".encode()
        from cryptography.hazmat.primitives import hashes  # loaded on first use, not at import (cold start)
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=HKDF_SALT, info=info).derive(root)
        self._derived[cache_key] = derived
        return derived


@dataclass(frozen=True)
class FieldContext:
    """Where a ciphertext belongs. Bound into the AAD so a moved ciphertext fails to decrypt."""

    tenant: str
    resource_type: str
    resource_id: str
    version: int

    def aad(self, element: str, key_version: str) -> bytes:
        return (
            f"esus/field/v{ENVELOPE_FORMAT}|{self.tenant}|{self.resource_type}|{self.resource_id}"
            f"|{self.version}|{element}|kv={key_version}"
        ).encode()


class FieldCipher:
    """Envelope: format byte | key-version length | key version | 96-bit nonce | ciphertext+tag."""

    def __init__(self, keyring: KeyRing) -> None:
        # cryptography loads when the services are built (first request), not when a function imports this module.
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._keyring = keyring
        self._aead, self._invalid_tag = AESGCM, InvalidTag

    def encrypt(self, ctx: FieldContext, element: str, plaintext: bytes) -> bytes:
        kv = self._keyring.current_version()
        key = self._keyring.key(ctx.tenant, PURPOSE_FIELD, kv)
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead(key).encrypt(nonce, plaintext, ctx.aad(element, kv))
        kv_bytes = kv.encode()
        return bytes([ENVELOPE_FORMAT, len(kv_bytes)]) + kv_bytes + nonce + sealed

    @staticmethod
    def key_version_of(envelope: bytes) -> str:
        if len(envelope) < 2 or envelope[0] != ENVELOPE_FORMAT:
            raise IntegrityFailure("Stored data has an unknown envelope format")
        return envelope[2 : 2 + envelope[1]].decode("ascii", errors="replace")

    def decrypt(self, ctx: FieldContext, element: str, envelope: bytes) -> bytes:
        kv = self.key_version_of(envelope)
        start = 2 + envelope[1]
        nonce, sealed = envelope[start : start + NONCE_BYTES], envelope[start + NONCE_BYTES :]
        key = self._keyring.key(ctx.tenant, PURPOSE_FIELD, kv)
        try:
            return self._aead(key).decrypt(nonce, sealed, ctx.aad(element, kv))
        except (self._invalid_tag, ValueError) as exc:
            raise IntegrityFailure("Stored data failed its integrity check") from exc


class BlindIndex:
    """Truncated HMAC-SHA256 tokens of normalised values under a per-tenant, per-field key."""

    def __init__(self, keyring: KeyRing, bits: dict[str, int]) -> None:
        self._keyring = keyring
        self._bits = bits

    def token(self, tenant: str, param: str, normalised: str, key_version: str | None = None) -> str:
        kv = key_version or self._keyring.current_version()
        key = self._keyring.key(tenant, index_purpose(param), kv)
        digest = hmac.new(key, normalised.encode(), hashlib.sha256).digest()
        bits = self._bits[param]
        value = int.from_bytes(digest, "big") >> (256 - bits)
        return f"k{kv}.{value:0{(bits + 3) // 4}x}"

    def tokens_for_search(self, tenant: str, param: str, normalised: str) -> list[str]:
        """Tokens under every live key version: items written before a rotation stay findable."""
        return [self.token(tenant, param, normalised, kv) for kv in self._keyring.versions()]


class CursorSigner:
    """Paging cursors leave the server only signed, bound to the tenant and the query."""

    def __init__(self, keyring: KeyRing) -> None:
        self._keyring = keyring

    def _mac(self, tenant: str, kv: str, payload: bytes) -> bytes:
        key = self._keyring.key(tenant, PURPOSE_CURSOR, kv)
        return hmac.new(key, tenant.encode() + b"|" + payload, hashlib.sha256).digest()[:16]

    def sign(self, tenant: str, query: str, position: Any) -> str:
        kv = self._keyring.current_version()
        payload = json.dumps({"q": query, "p": position, "kv": kv}, separators=(",", ":")).encode()
        return f"{_b64(payload)}.{_b64(self._mac(tenant, kv, payload))}"

    def verify(self, tenant: str, query: str, cursor: str) -> Any:
        invalid = InvalidRequest("The paging cursor is invalid or belongs to another search")
        try:
            payload_part, mac_part = cursor.split(".", 1)
            payload = _unb64(payload_part)
            data = json.loads(payload)
            kv = str(data["kv"])
            if kv not in self._keyring.versions():
                raise invalid
            if not hmac.compare_digest(_unb64(mac_part), self._mac(tenant, kv, payload)):
                raise invalid
        except (ValueError, KeyError, TypeError) as exc:
            raise invalid from exc
        if data.get("q") != query:
            raise invalid
        return data["p"]


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
