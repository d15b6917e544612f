"""Wiring: builds the services once per container, lazily (never at import), with injectable clients."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config

from esus.domain.bundles import BundleService
from esus.domain.conditional import ConditionalService
from esus.domain.everything import EverythingService
from esus.domain.includes import IncludeService
from esus.domain.provenance_service import ProvenanceService
from esus.domain.resources import ResourceService
from esus.domain.search import SearchService
from esus.domain.search_index import SearchKeys
from esus.http.api import error_for
from esus.security.crypto import BlindIndex, CursorSigner, FieldCipher, KeyRing
from esus.security.phi import ResourceCodec
from esus.settings import Settings, get_settings
from esus.storage.store import Store

AWS_CONFIG = Config(
    retries={"mode": "standard", "max_attempts": 3}, connect_timeout=2, read_timeout=5, tcp_keepalive=True
)


@dataclass
class Services:
    settings: Settings
    keyring: KeyRing
    store: Store
    resources: ResourceService
    provenance: ProvenanceService
    search: SearchService
    conditional: ConditionalService
    bundles: BundleService
    includes: IncludeService
    everything: EverythingService


def build_services(settings: Settings, dynamodb: Any = None, secrets: Any = None) -> Services:
    dynamodb = dynamodb or boto3.client("dynamodb", config=AWS_CONFIG)
    secrets = secrets or boto3.client("secretsmanager", config=AWS_CONFIG)

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
    store = Store(settings, dynamodb, ResourceCodec(FieldCipher(keyring)))
    cursors = CursorSigner(keyring)
    search_keys = SearchKeys(keyring, settings)
    resources = ResourceService(settings, store, blind, cursors, search_keys)
    search = SearchService(settings, store, blind, cursors, search_keys)
    conditional = ConditionalService(resources, search, store, blind)
    includes = IncludeService(store, search)
    return Services(
        settings=settings,
        keyring=keyring,
        store=store,
        resources=resources,
        provenance=ProvenanceService(store, settings),
        search=search,
        conditional=conditional,
        bundles=BundleService(store, resources, conditional, error_for),
        includes=includes,
        everything=EverythingService(settings, store, resources, search, includes, cursors),
    )


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
