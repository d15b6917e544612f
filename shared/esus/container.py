"""Wiring: builds the services once per container, lazily (never at import), with injectable clients."""

from __future__ import annotations

import threading
from functools import cached_property
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config

from esus.domain.resources import ResourceService
from esus.domain.search_index import SearchKeys
from esus.security.crypto import BlindIndex, CursorSigner, FieldCipher, KeyRing
from esus.security.phi import ResourceCodec
from esus.settings import Settings, get_settings
from esus.storage.objects import ObjectStore
from esus.storage.store import Store

if TYPE_CHECKING:
    from esus.domain.bundles import BundleService
    from esus.domain.conditional import ConditionalService
    from esus.domain.everything import EverythingService
    from esus.domain.includes import IncludeService
    from esus.domain.provenance_service import ProvenanceService
    from esus.domain.search import SearchService


def aws_config(settings: Settings) -> Config:
    return Config(retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2,
                  read_timeout=settings.aws_read_timeout_seconds, tcp_keepalive=True)

def object_config(settings: Settings) -> Config:
    """Objects are up to ~6 MB: more time to move them than an item."""
    return aws_config(settings).merge(Config(read_timeout=max(10.0, settings.aws_read_timeout_seconds)))


class Services:
    """The composition root. Keys, storage and the resource service are built with it; the other services on
    first use, so a function imports and builds only what its route needs (a read never loads search,
    Bundles or $everything: ~7 ms of a cold start)."""

    def __init__(self, settings: Settings, keyring: KeyRing, store: Store, blind: BlindIndex, cursors: CursorSigner,
                 search_keys: SearchKeys) -> None:
        self.settings, self.keyring, self.store = settings, keyring, store
        self._blind, self._cursors, self._search_keys = blind, cursors, search_keys
        self.resources = ResourceService(settings, store, blind, cursors, search_keys)

    @cached_property
    def search(self) -> SearchService:
        from esus.domain.search import SearchService

        return SearchService(self.settings, self.store, self._blind, self._cursors, self._search_keys)

    @cached_property
    def conditional(self) -> ConditionalService:
        from esus.domain.conditional import ConditionalService

        return ConditionalService(self.resources, self.search, self.store, self._blind)

    @cached_property
    def includes(self) -> IncludeService:
        from esus.domain.includes import IncludeService

        return IncludeService(self.store, self.search)

    @cached_property
    def provenance(self) -> ProvenanceService:
        from esus.domain.provenance_service import ProvenanceService

        return ProvenanceService(self.store, self.settings, self._search_keys)

    @cached_property
    def bundles(self) -> BundleService:
        from esus.domain.bundles import BundleService
        from esus.http.api import error_for

        return BundleService(self.store, self.resources, self.conditional, error_for)

    @cached_property
    def everything(self) -> EverythingService:
        from esus.domain.everything import EverythingService

        return EverythingService(self.settings, self.store, self.resources, self.search, self.includes,
                                 self._cursors)


def build_services(settings: Settings, dynamodb: Any = None, secrets: Any = None, s3: Any = None) -> Services:
    dynamodb = dynamodb or boto3.client("dynamodb", config=aws_config(settings))
    secrets = secrets or boto3.client("secretsmanager", config=aws_config(settings))
    # The S3 client only when a large version or a Binary is first touched (most requests never do).
    objects = ObjectStore(settings.object_bucket, lambda: s3 or boto3.client("s3", config=object_config(settings)))

    def fetch_root_key() -> str:
        return str(secrets.get_secret_value(SecretId=settings.root_key_secret_id)["SecretString"])

    keyring = KeyRing(fetch_root_key, settings.root_key_max_age_seconds)
    blind = BlindIndex(keyring, {
        "phone": settings.token_bits_phone,
        "email": settings.token_bits_email,
        "telecom": min(settings.token_bits_phone, settings.token_bits_email),
        "identifier": settings.token_bits_identifier,
        "_conditional-create": 128,  # a guard key, not an index: no collisions wanted
    })
    store = Store(settings, dynamodb, ResourceCodec(FieldCipher(keyring)), objects)
    return Services(settings, keyring, store, blind, CursorSigner(keyring), SearchKeys(keyring, settings))


_lock = threading.Lock()
_services: Services | None = None


def services() -> Services:
    global _services
    with _lock:
        if _services is None:
            _services = build_services(get_settings())
        return _services


def use_services(replacement: Services | None) -> None:
    """Tests and the local stack inject their own wiring (or None to rebuild from settings)."""
    global _services
    with _lock:
        _services = replacement
