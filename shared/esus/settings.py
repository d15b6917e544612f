"""Typed settings read from the environment (one place, validated once per container)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ESUS_", extra="ignore")

    resources_table: str = "esus-resources"
    history_table: str = "esus-history"
    provenance_table: str = "esus-provenance"
    index_table: str = "esus-index"
    root_key_secret_id: str = "esus/phi-root-key"  # noqa: S105 (a secret name, not a secret)

    # Absolute URLs use this when set (custom domain), else the request's host and stage.
    public_base_url: str | None = None
    # FHIR `versioned-update`: PUT/DELETE without If-Match -> 400.
    require_if_match: bool = False
    integrity_policy_url: str = "https://esus.health/integrity-policy"
    # The tenant's Organization used as Provenance.agent.onBehalfOf: "{tenant}" is substituted.
    tenant_organization_reference: str = "Organization/{tenant}"

    # Secrets Manager root key is re-read after this many seconds (rotation takes effect then).
    root_key_max_age_seconds: int = 300
    page_size_default: int = 10
    page_size_max: int = 100
    update_retry_attempts: int = Field(default=5, ge=1, le=20)
    # Search (docs/SEARCH.md): candidates one search may decrypt and re-check, and the most live resources
    # a search without a narrowing parameter may filter; beyond either, a 400 asks to narrow the search.
    search_candidates_max: int = Field(default=5000, ge=100)
    search_scan_max: int = Field(default=2000, ge=100)

    # Hashed-index token length per field, in bits (see README "Hashed indexes").
    token_bits_phone: int = Field(default=16, ge=8, le=256)
    token_bits_email: int = Field(default=16, ge=8, le=256)
    token_bits_identifier: int = Field(default=20, ge=8, le=256)

    # JWT verification (authorizer).
    jwt_issuer: str = "https://esus.local/issuer"
    jwt_audience: str = "esus-fhir"
    jwks_url: str | None = None
    # JWKS keys are trusted for at most this long after a fetch: a key the IdP removes stops working then.
    jwks_cache_seconds: int = Field(default=300, ge=1, le=3600)
    # At most one JWKS fetch per this many seconds (unknown `kid`s, failed fetches): random kids cannot
    # make the authorizer hammer the IdP.
    jwks_refetch_interval_seconds: int = Field(default=30, ge=1, le=3600)
    # PEM public keys (concatenated) accepted instead of a JWKS URL; used by the local stack.
    jwt_public_keys_pem: str | None = None
    jwt_max_token_bytes: int = 8192
    jwt_leeway_seconds: int = 30

    # SMART App Launch discovery (GET /fhir/.well-known/smart-configuration): the identity provider's OAuth
    # endpoints, where SMART apps obtain tokens ESUS accepts. Unset: left out of the document.
    smart_authorization_endpoint: str | None = None
    smart_token_endpoint: str | None = None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
