"""Who is calling: bearer-token verification (authorizer) and SMART scope checks (route handlers)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import jwt

from esus.errors import Forbidden, Unauthorized
from esus.settings import Settings

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ALLOWED_ALGORITHMS = ("RS256", "ES256")
# SMART v1 (read/write/*) and v2 (cruds letters) scopes; patient/ context needs compartments: not offered.
SCOPE_PATTERN = re.compile(r"^(user|system|patient)/([A-Za-z]+|\*)\.(read|write|\*|c?r?u?d?s?)$")
V1_MEANING = {"read": "rs", "write": "cud", "*": "cruds"}

# SMART v2 letters.
CREATE, READ, UPDATE, DELETE, SEARCH = "c", "r", "u", "d", "s"

# What each FHIR interaction needs, after the SMART App Launch 2.0 scope table: `r` covers read, vread and
# instance history; `s` covers search and type- and system-level history. An interaction needs ALL its
# letters (from one scope or several). Beyond the SMART table, ESUS asks:
# - patch: `r` too, because a patch reads what it changes (a `test` op is a yes/no oracle, the result the
#   whole resource);
# - conditional interactions: `s` too, because their outcome reveals what the search found;
# - an update that creates (unknown id, or revival after delete) and a conditional update that creates:
#   `c` too, checked when the server finds it would create.
# System-level history spans every type, so only a wildcard (`*`) scope grants it.
# The README's scope table is this table; tests/handlers/test_scope_matrix.py holds them equal.
INTERACTION_SCOPES: dict[str, str] = {
    "create": CREATE,
    "conditional-create": CREATE + SEARCH,
    "read": READ,
    "vread": READ,
    "history-instance": READ,
    "update": UPDATE,
    "patch": READ + UPDATE,
    "delete": DELETE,
    "conditional-update": UPDATE + SEARCH,
    "conditional-delete": DELETE + SEARCH,
    "search-type": SEARCH,
    "history-type": SEARCH,
    "history-system": SEARCH,
}
ALL_TYPES = "*"


@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: tuple[str, ...]
    fhir_user: str | None
    subject: str

    @cached_property
    def _grants(self) -> list[tuple[str, str, str]]:
        grants = []
        for scope in self.scopes:
            match = SCOPE_PATTERN.match(scope)
            if match:
                context, resource_type, access = match.groups()
                grants.append((context, resource_type, V1_MEANING.get(access, access)))
        return grants

    @property
    def is_system(self) -> bool:
        return any(context == "system" for context, _, _ in self._grants)

    def granted(self, resource_type: str) -> frozenset[str]:
        """The SMART v2 letters this token grants on `resource_type` (the union of its scopes). Only a
        wildcard scope grants on ALL_TYPES."""
        letters: set[str] = set()
        for context, granted_type, access in self._grants:
            if context != "patient" and granted_type in (ALL_TYPES, resource_type):
                letters.update(access)
        return frozenset(letters)

    def require(self, resource_type: str, letters: str) -> None:
        """Every letter of `letters` must be granted on the type, else 403."""
        if not set(letters) <= self.granted(resource_type):
            raise Forbidden(f"The token's scopes do not allow this interaction on {resource_type}")

    def require_interaction(self, resource_type: str, interaction: str) -> None:
        self.require(resource_type, INTERACTION_SCOPES[interaction])

    @property
    def agent_reference(self) -> dict[str, Any]:
        """Provenance.agent.who: the token's fhirUser, else the system client as a Device."""
        if self.fhir_user:
            return {"reference": self.fhir_user, "type": self.fhir_user.split("/", 1)[0]}
        return {"type": "Device", "identifier": {"system": "urn:esus:client", "value": self.subject},
                "display": f"system client {self.subject}"}

    @classmethod
    def from_authorizer_context(cls, context: dict[str, Any] | None) -> Principal:
        """Built from what the Lambda authorizer handed API Gateway (strings only)."""
        context = context or {}
        tenant = str(context.get("tenant") or "")
        if not TENANT_PATTERN.match(tenant):
            raise Unauthorized("The request carries no verified tenant")
        return cls(
            tenant=tenant,
            scopes=tuple(str(context.get("scope") or "").split()),
            fhir_user=str(context.get("fhirUser") or "") or None,
            subject=str(context.get("principalId") or context.get("sub") or "unknown"),
        )


class TokenVerifier:
    """Verifies RS256/ES256 JWTs against a JWKS URL or configured PEM public keys."""

    def __init__(self, settings: Settings) -> None:
        self._s = settings
        self._jwks = jwt.PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=3600) if settings.jwks_url else None
        self._pems = _split_pems(settings.jwt_public_keys_pem or "")
        if not self._jwks and not self._pems:
            raise RuntimeError("Configure ESUS_JWKS_URL or ESUS_JWT_PUBLIC_KEYS_PEM")

    def verify(self, token: str) -> dict[str, Any]:
        invalid = Unauthorized("The bearer token is missing, malformed, expired or not trusted")
        if not token or len(token) > self._s.jwt_max_token_bytes:
            raise invalid
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid from None
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise invalid
        claims: dict[str, Any] | None = None
        for key in self._candidate_keys(token):
            try:
                claims = jwt.decode(
                    token, key, algorithms=[alg], audience=self._s.jwt_audience, issuer=self._s.jwt_issuer,
                    leeway=self._s.jwt_leeway_seconds, options={"require": ["exp", "iss", "aud"]},
                )
                break
            except jwt.InvalidSignatureError:
                continue
            except jwt.PyJWTError:
                raise invalid from None
        if claims is None:
            raise invalid
        if not TENANT_PATTERN.match(str(claims.get("tenant") or "")) or not isinstance(claims.get("scope"), str):
            raise invalid
        return claims

    def _candidate_keys(self, token: str) -> list[Any]:
        if self._jwks is not None:
            try:
                return [self._jwks.get_signing_key_from_jwt(token).key]
            except jwt.PyJWKClientError:
                return []
        return self._pems


def _split_pems(text: str) -> list[Any]:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    blocks = re.findall(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", text, flags=re.S)
    return [load_pem_public_key(block.encode()) for block in blocks]


def authorizer_context(claims: dict[str, Any]) -> dict[str, str]:
    return {
        "tenant": str(claims["tenant"]),
        "scope": str(claims.get("scope", "")),
        "fhirUser": str(claims.get("fhirUser") or ""),
        "sub": str(claims.get("sub") or ""),
    }
