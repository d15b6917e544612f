"""TokenVerifier: JWKS key lifetime and rate-limited refetch (a real JWKS over HTTP on 127.0.0.1 and a
fake clock), key families (mixed RSA/EC lists, alg of the other family), and what the authorizer hands
the routes (token expiry, fhirUser as Provenance agent)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from esus.errors import Unauthorized
from esus.security.auth import KeysUnavailable, Principal, TokenVerifier, authorizer_context, reference_resource_type
from esus.settings import Settings

ISSUER, AUDIENCE = "https://idp.test/issuer", "esus-fhir"
LIFETIME, INTERVAL = 300, 30

EC_A = ec.generate_private_key(ec.SECP256R1())
EC_B = ec.generate_private_key(ec.SECP256R1())
EC_C = ec.generate_private_key(ec.SECP256R1())
RSA_A = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def token(key: Any, kid: str | None = None, alg: str | None = None, **claims: Any) -> str:
    alg = alg or ("RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256")
    now = int(time.time())
    body = {"iss": ISSUER, "aud": AUDIENCE, "exp": now + 600, "iat": now, "sub": "u1", "tenant": "acme",
            "scope": "user/*.*", **claims}
    return jwt.encode(body, key, algorithm=alg, headers={"kid": kid} if kid else None)


def jwk(key: Any, kid: str, **extra: Any) -> dict[str, Any]:
    public = key.public_key()
    algorithm = RSAAlgorithm if isinstance(public, rsa.RSAPublicKey) else ECAlgorithm
    return {**algorithm.to_jwk(public, as_dict=True), "kid": kid, **extra}


def pem(*keys: Any) -> str:
    return "".join(k.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode() for k in keys)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class JwksServer:
    """Serves `self.keys` as a JWKS on 127.0.0.1 and counts the fetches."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.fetches = 0
        self.down = False
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                server.fetches += 1
                if server.down:
                    self.send_error(503)
                    return
                body = json.dumps({"keys": server.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/.well-known/jwks.json"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def idp() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.httpd.shutdown()
    server.httpd.server_close()


def jwks_verifier(idp: JwksServer, clock: Clock) -> TokenVerifier:
    settings = Settings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwks_url=idp.url, jwt_public_keys_pem=None,
                        jwks_cache_seconds=LIFETIME, jwks_refetch_interval_seconds=INTERVAL)
    return TokenVerifier(settings, clock=clock)


def pem_verifier(*keys: Any) -> TokenVerifier:
    return TokenVerifier(Settings(jwt_issuer=ISSUER, jwt_audience=AUDIENCE, jwks_url=None,
                                  jwt_public_keys_pem=pem(*keys)))


# ---------- finding 5: JWKS key lifetime ----------
def test_removed_key_is_refused_once_the_cache_lifetime_has_passed(idp: JwksServer) -> None:
    clock = Clock()
    idp.keys = [jwk(EC_A, "a"), jwk(EC_B, "b")]
    verifier = jwks_verifier(idp, clock)
    assert verifier.verify(token(EC_A, "a"))["tenant"] == "acme"
    idp.keys = [jwk(EC_B, "b")]  # the IdP revokes key a
    clock.now += LIFETIME - 1
    assert verifier.verify(token(EC_A, "a"))  # still inside the documented lifetime
    clock.now += 2
    with pytest.raises(Unauthorized):
        verifier.verify(token(EC_A, "a"))
    assert verifier.verify(token(EC_B, "b"))["sub"] == "u1"
    assert idp.fetches == 2


def test_new_kid_is_fetched_and_accepted(idp: JwksServer) -> None:
    clock = Clock()
    idp.keys = [jwk(EC_A, "a")]
    verifier = jwks_verifier(idp, clock)
    verifier.verify(token(EC_A, "a"))
    clock.now += INTERVAL
    idp.keys = [jwk(EC_A, "a"), jwk(RSA_A, "rotated-in")]  # the IdP publishes a new key mid-lifetime
    assert verifier.verify(token(RSA_A, "rotated-in"))["tenant"] == "acme"
    assert idp.fetches == 2


def test_unknown_kids_cannot_hammer_the_idp(idp: JwksServer) -> None:
    clock = Clock()
    idp.keys = [jwk(EC_A, "a")]
    verifier = jwks_verifier(idp, clock)
    verifier.verify(token(EC_A, "a"))
    for _ in range(200):
        with pytest.raises(Unauthorized):
            verifier.verify(token(EC_C, f"random-{uuid.uuid4().hex}"))
    assert idp.fetches == 1  # the first fetch was just now: no refetch inside the interval
    clock.now += INTERVAL
    for _ in range(200):
        with pytest.raises(Unauthorized):
            verifier.verify(token(EC_C, f"random-{uuid.uuid4().hex}"))
    assert idp.fetches == 2  # one per interval, however many unknown kids arrive
    assert verifier.verify(token(EC_A, "a"))  # known keys keep working throughout


def test_a_key_added_just_after_a_fetch_waits_for_the_interval(idp: JwksServer) -> None:
    clock = Clock()
    idp.keys = [jwk(EC_A, "a")]
    verifier = jwks_verifier(idp, clock)
    verifier.verify(token(EC_A, "a"))
    idp.keys.append(jwk(EC_B, "b"))
    with pytest.raises(Unauthorized):
        verifier.verify(token(EC_B, "b"))
    clock.now += INTERVAL
    assert verifier.verify(token(EC_B, "b"))


def test_unreachable_jwks_is_an_outage_not_a_stale_key(idp: JwksServer) -> None:
    clock = Clock()
    idp.down = True
    verifier = jwks_verifier(idp, clock)
    with pytest.raises(KeysUnavailable):
        verifier.verify(token(EC_A, "a"))
    clock.now += INTERVAL
    idp.down = False
    idp.keys = [jwk(EC_A, "a")]
    assert verifier.verify(token(EC_A, "a"))
    idp.down = True
    clock.now += LIFETIME  # lifetime over and the IdP is down: the old keys are not trusted any more
    with pytest.raises(KeysUnavailable):
        verifier.verify(token(EC_A, "a"))
    fetches = idp.fetches
    for _ in range(50):
        with pytest.raises(KeysUnavailable):
            verifier.verify(token(EC_A, "a"))
    assert idp.fetches == fetches  # retries are rate-limited too


def test_jwks_entries_that_are_not_signing_keys_are_ignored(idp: JwksServer) -> None:
    clock = Clock()
    idp.keys = [{"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"}, jwk(EC_A, "enc", use="enc"),
                {"kty": "EC", "kid": "broken"}, jwk(EC_B, "b"), "not a key"]  # type: ignore[list-item]
    verifier = jwks_verifier(idp, clock)
    assert verifier.verify(token(EC_B, "b"))
    with pytest.raises(Unauthorized):
        verifier.verify(token(EC_A, "enc"))
    with pytest.raises(Unauthorized):
        verifier.verify(jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 60, "tenant": "a",
                                    "scope": "x"}, "secret-long-enough-for-hmac-sha256!", algorithm="HS256",
                                   headers={"kid": "hmac"}))


# ---------- finding 8: key families ----------
@pytest.mark.parametrize("keys", [(RSA_A, EC_A), (EC_A, RSA_A), (EC_B, EC_A)])
def test_mixed_key_lists_accept_a_token_of_any_listed_key(keys: tuple[Any, ...]) -> None:
    verifier = pem_verifier(*keys)
    assert verifier.verify(token(EC_A, "whatever"))["tenant"] == "acme"
    if RSA_A in keys:
        assert verifier.verify(token(RSA_A))["tenant"] == "acme"


@pytest.mark.parametrize(("keys", "alg"), [((EC_A,), "RS256"), ((RSA_A,), "ES256")])
def test_alg_of_the_other_key_family_is_401_not_a_crash(keys: tuple[Any, ...], alg: str) -> None:
    """The token is signed by a key of its own family the server does not know (so the signature is real)."""
    signer = RSA_A if alg == "RS256" else EC_A
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048) if alg == "RS256" else EC_C
    with pytest.raises(Unauthorized):
        pem_verifier(*keys).verify(token(other if signer in keys else signer, alg=alg))


def test_jwks_key_of_the_other_family_under_the_same_kid_is_401(idp: JwksServer) -> None:
    idp.keys = [jwk(RSA_A, "k1")]
    verifier = jwks_verifier(idp, Clock())
    with pytest.raises(Unauthorized):
        verifier.verify(token(EC_A, "k1"))  # ES256 token naming an RSA key


def test_jwk_declared_alg_must_match(idp: JwksServer) -> None:
    idp.keys = [jwk(RSA_A, "ps", alg="PS256")]
    with pytest.raises(Unauthorized):
        jwks_verifier(idp, Clock()).verify(token(RSA_A, "ps"))


@pytest.mark.parametrize("kid", [7, {"a": 1}, ["x"]])
def test_non_string_kid_is_401(idp: JwksServer, kid: Any) -> None:
    import base64

    idp.keys = [jwk(EC_A, "a")]
    _, payload, signature = token(EC_A, "a").split(".")
    header = base64.urlsafe_b64encode(json.dumps({"alg": "ES256", "kid": kid}).encode()).rstrip(b"=").decode()
    forged = f"{header}.{payload}.{signature}"
    with pytest.raises(Unauthorized):
        jwks_verifier(idp, Clock()).verify(forged)


def test_claim_errors_after_a_good_signature_are_401() -> None:
    verifier = pem_verifier(EC_B, EC_A)
    with pytest.raises(Unauthorized):
        verifier.verify(token(EC_A, exp=int(time.time()) - 3600))
    with pytest.raises(Unauthorized):
        verifier.verify(token(EC_A, aud="someone-else"))


# ---------- finding 8: the authorizer's answer is cached; the route re-checks exp ----------
def test_authorizer_context_carries_exp_and_routes_refuse_after_it() -> None:
    exp = int(time.time()) + 100
    context = {**authorizer_context({"tenant": "acme", "scope": "user/*.*", "sub": "u1", "exp": exp}),
               "principalId": "u1"}
    assert context["exp"] == str(exp)
    assert Principal.from_authorizer_context(context, now=exp - 1, leeway_seconds=30).tenant == "acme"
    assert Principal.from_authorizer_context(context, now=exp + 30, leeway_seconds=30).tenant == "acme"
    with pytest.raises(Unauthorized):
        Principal.from_authorizer_context(context, now=exp + 31, leeway_seconds=30)
    for bad in ({k: v for k, v in context.items() if k != "exp"}, {**context, "exp": "soon"},
                {**context, "exp": "-5"}, {**context, "exp": "9" * 40}):
        with pytest.raises(Unauthorized):
            Principal.from_authorizer_context(bad, now=exp - 1, leeway_seconds=30)


# ---------- finding 11: fhirUser as Provenance agent ----------
@pytest.mark.parametrize(("fhir_user", "expected_type"), [
    ("Practitioner/123", "Practitioner"),
    ("https://idp.example.org/fhir/Practitioner/123", "Practitioner"),
    ("https://idp.example.org/fhir/PractitionerRole/abc.1/", "PractitionerRole"),
    ("https://idp.example.org/fhir/Patient/9/_history/2", "Patient"),
    ("https://idp.example.org/fhir/Nonsense/1", None),
    ("https://idp.example.org/fhir/HumanName/1", None),  # a data type, not a resource type
    ("https://idp.example.org/", None),
    ("urn:uuid:5f0c5c1e-1111-4222-8333-944445555666", None),
    ("Resource/1", None),
    ("alice", None),
])
def test_fhir_user_agent_type(fhir_user: str, expected_type: str | None) -> None:
    assert reference_resource_type(fhir_user) == expected_type
    who = Principal("acme", (), fhir_user, "sub-1").agent_reference
    assert who["reference"] == fhir_user
    assert who.get("type") == expected_type
