"""Who is calling: bearer-token verification (authorizer) and SMART scope checks (route handlers)."""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any
from urllib.parse import urlsplit

from esus.errors import Forbidden, Unauthorized
from esus.fhir_types import NOT_GENERIC, RESOURCE_TYPES
from esus.settings import Settings, get_settings

TENANT_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
ALLOWED_ALGORITHMS = ("RS256", "ES256")
# SMART v1 (read/write/*) and v2 (cruds letters) scopes. user/ and system/ scopes grant in the whole tenant;
# patient/ scopes grant only inside the compartment of the patient the token names (its `patient` claim).
SCOPE_PATTERN = re.compile(r"^(user|system|patient)/([A-Za-z]+|\*)\.(read|write|\*|c?r?u?d?s?)$")
PATIENT_CONTEXT = "patient"
# The `patient` claim is a Patient id (FHIR id syntax).
PATIENT_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
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
    patient: str | None = None  # the launch context's Patient id: where patient/ scopes grant

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
        """The SMART v2 letters this token grants on `resource_type` anywhere in the tenant (the union of its
        user/ and system/ scopes). Only a wildcard scope grants on ALL_TYPES."""
        return self._letters(resource_type, lambda context: context != PATIENT_CONTEXT)

    def granted_in_compartment(self, resource_type: str) -> frozenset[str]:
        """The letters its patient/ scopes grant, only inside the compartment of the token's patient: none
        without a `patient` claim, and none on a type that is never in a patient's compartment (nor on
        ALL_TYPES: system-level interactions span every type)."""
        if self.patient is None or resource_type == ALL_TYPES:
            return frozenset()
        from esus.domain.compartment import compartment_types  # the authorizer never needs the table

        if resource_type not in compartment_types():
            return frozenset()
        return self._letters(resource_type, lambda context: context == PATIENT_CONTEXT)

    def _letters(self, resource_type: str, context_counts: Callable[[str], bool]) -> frozenset[str]:
        letters: set[str] = set()
        for context, granted_type, access in self._grants:
            if context_counts(context) and granted_type in (ALL_TYPES, resource_type):
                letters.update(access)
        return frozenset(letters)

    def require(self, resource_type: str, letters: str) -> None:
        """Every letter of `letters` must be granted on the type (anywhere, or in the patient's compartment),
        else 403: decided by the token alone, before anything is read."""
        self.confined_to(resource_type, letters)

    def require_interaction(self, resource_type: str, interaction: str) -> None:
        self.require(resource_type, INTERACTION_SCOPES[interaction])

    def confined_to(self, resource_type: str, letters: str) -> str | None:
        """Where the token allows `letters` on the type: None = anywhere in the tenant (its user/ and system/
        scopes cover them all); a Patient id = only inside that patient's compartment (patient/ scopes are
        needed for some letter). 403 when even the union of its scopes does not cover them."""
        wanted, anywhere = set(letters), self.granted(resource_type)
        if wanted <= anywhere:
            return None
        if wanted <= anywhere | self.granted_in_compartment(resource_type):
            return self.patient
        raise Forbidden(f"The token's scopes do not allow this interaction on {resource_type}")

    def confinement(self, resource_type: str, interaction: str) -> str | None:
        """confined_to() for an interaction of auth.INTERACTION_SCOPES."""
        return self.confined_to(resource_type, INTERACTION_SCOPES[interaction])

    @property
    def agent_reference(self) -> dict[str, Any]:
        """Provenance.agent.who: the token's fhirUser, else the system client as a Device."""
        if self.fhir_user:
            resource_type = reference_resource_type(self.fhir_user)
            return {"reference": self.fhir_user, **({"type": resource_type} if resource_type else {})}
        return {"type": "Device", "identifier": {"system": "urn:esus:client", "value": self.subject},
                "display": f"system client {self.subject}"}

    @classmethod
    def from_authorizer_context(
        cls, context: dict[str, Any] | None, now: float | None = None, leeway_seconds: int | None = None,
    ) -> Principal:
        """Built from what the Lambda authorizer handed API Gateway (strings only). API Gateway reuses an
        authorizer's answer for ReauthorizeEvery seconds, so the token's expiry is checked again here."""
        context = context or {}
        tenant = str(context.get("tenant") or "")
        if not TENANT_PATTERN.match(tenant):
            raise Unauthorized("The request carries no verified tenant")
        exp = str(context.get("exp") or "")
        leeway = get_settings().jwt_leeway_seconds if leeway_seconds is None else leeway_seconds
        if not exp.isascii() or not exp.isdigit() or len(exp) > 12:
            raise Unauthorized("The request carries no verified token expiry")
        if int(exp) + leeway < (time.time() if now is None else now):
            raise Unauthorized("The bearer token has expired")
        patient = str(context.get("patient") or "") or None
        if patient is not None and not PATIENT_ID.match(patient):
            raise Unauthorized("The request carries an invalid patient context")
        return cls(
            tenant=tenant,
            scopes=tuple(str(context.get("scope") or "").split()),
            fhir_user=str(context.get("fhirUser") or "") or None,
            subject=str(context.get("principalId") or context.get("sub") or "unknown"),
            patient=patient,
        )


class KeysUnavailable(Exception):
    """No fresh key set: the JWKS could not be fetched (an outage, not a bad token)."""


# Key family per allowed algorithm: a key of the other family is never tried (it would raise TypeError).
def _fits(alg: str, key: Any) -> bool:
    from cryptography.hazmat.primitives.asymmetric import ec, rsa  # authorizer only: not in route cold starts

    if alg == "RS256":
        return isinstance(key, rsa.RSAPublicKey)
    return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"


MAX_JWKS_BYTES = 262_144
JWKS_TIMEOUT_SECONDS = 3.0


def fetch_jwks(url: str) -> Any:
    """GET the JWKS document (bounded size and time); any failure raises KeysUnavailable."""
    if urlsplit(url).scheme not in ("https", "http"):
        raise KeysUnavailable("the JWKS URL must be http(s)")
    headers = {"Accept": "application/json", "User-Agent": "esus-authorizer"}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 (scheme checked above)
    try:
        with urllib.request.urlopen(request, timeout=JWKS_TIMEOUT_SECONDS) as response:  # noqa: S310
            raw = response.read(MAX_JWKS_BYTES + 1)
    except (OSError, ValueError) as exc:
        raise KeysUnavailable(f"JWKS fetch failed: {type(exc).__name__}") from None
    if len(raw) > MAX_JWKS_BYTES:
        raise KeysUnavailable("JWKS document too large")
    try:
        return json.loads(raw)
    except ValueError:
        raise KeysUnavailable("JWKS document is not JSON") from None


@dataclass(frozen=True)
class _Jwk:
    kid: str | None
    alg: str | None  # the JWK's own `alg`, when it declares one
    key: Any


class JwksKeys:
    """The IdP's signing keys, trusted for `max_age` seconds after each successful fetch (so a removed key
    stops working within that time). An unknown `kid` triggers a refetch, and every fetch, whatever its
    cause, is at most one per `refetch_interval` seconds."""

    def __init__(
        self, url: str, max_age: float, refetch_interval: float,
        fetch: Callable[[str], Any] = fetch_jwks, clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url, self._max_age, self._interval = url, max_age, refetch_interval
        self._fetch, self._clock = fetch, clock
        self._keys: list[_Jwk] = []
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._lock = threading.Lock()

    def candidates(self, kid: str | None, alg: str) -> list[Any]:
        with self._lock:
            now = self._clock()
            if not self._fresh(now) or (kid is not None and not any(k.kid == kid for k in self._keys)):
                self._refresh(now)
            if not self._fresh(now):
                raise KeysUnavailable("no JWKS fetched within the cache lifetime")
            return [k.key for k in self._keys
                    if (kid is None or k.kid == kid) and k.alg in (None, alg) and _fits(alg, k.key)]

    def _fresh(self, now: float) -> bool:
        return self._fetched_at is not None and now - self._fetched_at < self._max_age

    def _refresh(self, now: float) -> None:
        if self._attempted_at is not None and now - self._attempted_at < self._interval:
            return  # rate limit: keep what we have (or stay unavailable) until the interval has passed
        self._attempted_at = now
        try:
            document = self._fetch(self._url)
        except KeysUnavailable:
            return
        if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
            return
        self._keys = [k for k in (_parse_jwk(jwk) for jwk in document["keys"]) if k is not None]
        self._fetched_at = now


def _parse_jwk(jwk: Any) -> _Jwk | None:
    """A usable public signing key, or None (encryption keys and unsupported key types are skipped)."""
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
        return None
    kid, alg = jwk.get("kid"), jwk.get("alg")
    if not isinstance(kid, str | None) or not isinstance(alg, str | None):
        return None
    import jwt  # authorizer only: not in route cold starts

    try:
        key = jwt.PyJWK(jwk).key
    except (jwt.PyJWTError, ValueError, TypeError, KeyError):
        return None
    return _Jwk(kid, alg, key)


class TokenVerifier:
    """Verifies RS256/ES256 JWTs against a JWKS URL or configured PEM public keys."""

    def __init__(
        self, settings: Settings, fetch: Callable[[str], Any] = fetch_jwks,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._s = settings
        self._jwks = JwksKeys(settings.jwks_url, settings.jwks_cache_seconds, settings.jwks_refetch_interval_seconds,
                              fetch, clock) if settings.jwks_url else None
        self._pems = _split_pems(settings.jwt_public_keys_pem or "")
        if not self._jwks and not self._pems:
            raise RuntimeError("Configure ESUS_JWKS_URL or ESUS_JWT_PUBLIC_KEYS_PEM")

    def verify(self, token: str) -> dict[str, Any]:
        """Claims of a valid token; Unauthorized otherwise; KeysUnavailable when the JWKS cannot be had."""
        import jwt  # authorizer only: the route functions import this module for Principal (cold start)

        invalid = Unauthorized("The bearer token is missing, malformed, expired or not trusted")
        if not token or len(token) > self._s.jwt_max_token_bytes:
            raise invalid
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise invalid from None
        alg, kid = header.get("alg"), header.get("kid")
        if alg not in ALLOWED_ALGORITHMS or not isinstance(kid, str | None):
            raise invalid
        claims: dict[str, Any] | None = None
        for key in self._candidate_keys(str(alg), kid):
            try:
                claims = jwt.decode(
                    token, key, algorithms=[alg], audience=self._s.jwt_audience, issuer=self._s.jwt_issuer,
                    leeway=self._s.jwt_leeway_seconds, options={"require": ["exp", "iss", "aud"]},
                )
                break
            except (jwt.InvalidSignatureError, jwt.InvalidKeyError, TypeError, ValueError):
                continue  # not this key: try the next one of the family
            except jwt.PyJWTError:
                raise invalid from None  # the signature verified; a claim is wrong
        if claims is None:
            raise invalid
        if not TENANT_PATTERN.match(str(claims.get("tenant") or "")) or not isinstance(claims.get("scope"), str):
            raise invalid
        patient = claims.get("patient")
        if patient is not None and not (isinstance(patient, str) and PATIENT_ID.match(patient)):
            raise invalid  # a launch context that names no valid Patient id confines to nothing: refuse it
        return claims

    def _candidate_keys(self, alg: str, kid: str | None) -> list[Any]:
        if self._jwks is not None:
            return self._jwks.candidates(kid, alg)
        return [key for key in self._pems if _fits(alg, key)]


def _split_pems(text: str) -> list[Any]:
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    blocks = re.findall(r"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", text, flags=re.S)
    return [load_pem_public_key(block.encode()) for block in blocks]


def authorizer_context(claims: dict[str, Any]) -> dict[str, str]:
    return {
        "tenant": str(claims["tenant"]),
        "scope": str(claims.get("scope", "")),
        "fhirUser": str(claims.get("fhirUser") or ""),
        "patient": str(claims.get("patient") or ""),  # SMART launch context: where patient/ scopes grant
        "sub": str(claims.get("sub") or ""),
        "exp": str(int(claims["exp"])),  # routes refuse the request once it passes (policy caching)
    }


REFERENCE_TAIL = re.compile(r"(?:^|/)([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[0-9]{1,18})?/?$")


def reference_resource_type(reference: str) -> str | None:
    """The resource type of a relative (`Practitioner/1`) or absolute (`https://idp/fhir/Practitioner/1`)
    reference, when it names a FHIR resource type; None otherwise."""
    path = urlsplit(reference.strip()).path if "://" in reference else reference.strip()
    match = REFERENCE_TAIL.search(path)
    return match.group(1) if match and _is_resource_type(match.group(1)) else None


def _is_resource_type(name: str) -> bool:
    # The R4 resource types with an R4B model (served, or served otherwise), from the generated tables: building a
    # model class to ask would cost a write's first request ~0.1 s.
    return name in RESOURCE_TYPES or name in NOT_GENERIC
