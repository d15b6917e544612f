"""Typed settings read from the environment (one place, validated once per container).

A dataclass validated here, not a pydantic-settings model: importing pydantic and building the model took a
fifth of every function's import (docs/BENCH.md, cold start). Same rules as before: a keyword argument wins over
the environment variable ESUS_<NAME> (any case), which wins over the default; unknown names are ignored; values
are parsed to the field's type and checked against its bounds (`Field(default=..., ge=..., le=...)`).
"""

from __future__ import annotations

import dataclasses
import os
from functools import lru_cache
from typing import Any

from esus.limits import DEFAULT_MAX_BODY_BYTES

ENV_PREFIX = "ESUS_"
TRUE_WORDS = frozenset({"1", "true", "t", "yes", "y", "on"})
FALSE_WORDS = frozenset({"0", "false", "f", "no", "n", "off"})
BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
TYPES: dict[str, tuple[type, ...]] = {"str": (str,), "int": (int,), "float": (int, float), "bool": (bool,)}
NAMED = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true or false"}


def Field(*, default: Any, **bounds: float) -> Any:  # noqa: N802 (used like pydantic's Field)
    """A field with bounds (ge, gt, le, lt), checked on every value, from the environment or an argument."""
    unknown = set(bounds) - set(BOUNDS)
    if unknown:
        raise TypeError(f"unsupported Field constraint(s): {', '.join(sorted(unknown))}")
    return dataclasses.field(default=default, metadata=bounds)


@dataclasses.dataclass(init=False)
class Settings:
    resources_table: str = "esus-resources"
    history_table: str = "esus-history"
    provenance_table: str = "esus-provenance"
    index_table: str = "esus-index"
    # S3 bucket of sealed version bodies too large for a DynamoDB item, and of every Binary (esus.storage.objects).
    object_bucket: str = "esus-objects"
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
    # Per AWS call. Lambda's 10 s timeout bounds a request; the local stack, whose moto server serialises
    # every call, raises it (a loaded developer machine is not DynamoDB).
    aws_read_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Request bodies over this many bytes (counted as in the Lambda event: JSON-escaped, or base64 for binary
    # content) get 413. The default is what Lambda's 6 MB payload leaves room for (esus.limits); lower it, not higher.
    max_body_bytes: int = Field(default=DEFAULT_MAX_BODY_BYTES, ge=1024, le=DEFAULT_MAX_BODY_BYTES)
    page_size_default: int = 10
    page_size_max: int = 100
    update_retry_attempts: int = Field(default=5, ge=1, le=20)
    # Search (docs/SEARCH.md): candidates one search may decrypt and re-check, and the most live resources
    # a search without a narrowing parameter may filter; beyond either, a 400 asks to narrow the search.
    search_candidates_max: int = Field(default=5000, ge=100)
    search_scan_max: int = Field(default=2000, ge=100)
    # Large transaction Bundles (docs/TRANSACTIONS.md): a transaction whose lease ended may be aborted or
    # completed by others. Must exceed the Bundle function's timeout plus the SDK's retry budget.
    transaction_lease_seconds: int = Field(default=60, ge=1, le=900)

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

    def __init__(self, **values: Any) -> None:
        environment = {k.upper(): v for k, v in os.environ.items()}
        for spec in dataclasses.fields(self):
            env_name = ENV_PREFIX + spec.name.upper()
            if spec.name in values:
                value = values[spec.name]
            elif env_name in environment:
                value = environment[env_name]
            else:
                value = spec.default
            setattr(self, spec.name, _validated(spec, env_name, value))


def _validated(spec: dataclasses.Field[Any], env_name: str, value: Any) -> Any:
    kind = str(spec.type).replace(" ", "")
    optional = kind.endswith("|None")
    kind = kind.removesuffix("|None")
    if value is None and optional:
        return None
    if isinstance(value, str) and kind != "str":
        value = _parse(kind, env_name, value)
    if kind not in TYPES:
        raise TypeError(f"Settings.{spec.name}: unsupported type {spec.type}")
    if not isinstance(value, TYPES[kind]) or (kind != "bool" and isinstance(value, bool)):
        raise ValueError(f"{env_name} must be {NAMED[kind]}")
    for name, bound in spec.metadata.items():
        holds = {"ge": value >= bound, "gt": value > bound, "le": value <= bound, "lt": value < bound}[name]
        if not holds:
            raise ValueError(f"{env_name} must be {BOUNDS[name]} {bound} (got {value})")
    return value


def _parse(kind: str, env_name: str, raw: str) -> Any:
    text = raw.strip()
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ValueError(f"{env_name} must be {NAMED[kind]}, not {text[:32]!r}") from None
    if kind == "bool":
        if text.lower() in TRUE_WORDS:
            return True
        if text.lower() in FALSE_WORDS:
            return False
        raise ValueError(f"{env_name} must be true or false, not {text[:32]!r}")
    return raw


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
