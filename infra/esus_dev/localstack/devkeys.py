"""The local stack's dev signing key (generated on first use, kept out of git) and token minting."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

LOCAL_ISSUER = "https://esus.local/issuer"
LOCAL_AUDIENCE = "esus-fhir"


def dev_dir() -> Path:
    return Path(os.environ.get("ESUS_DEV_DIR", Path.cwd() / ".esus"))


def signing_key(directory: Path | None = None) -> ec.EllipticCurvePrivateKey:
    directory = directory or dev_dir()
    path = directory / "dev-signing-key.pem"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
    loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(loaded, ec.EllipticCurvePrivateKey)
    return loaded


def public_key_pem(directory: Path | None = None) -> str:
    return signing_key(directory).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def mint_token(
    tenant: str, scope: str, fhir_user: str | None = None, subject: str = "dev-user", lifetime_seconds: int = 3600,
    directory: Path | None = None, omit: tuple[str, ...] = (), patient: str | None = None, **extra: object,
) -> str:
    """`patient`: the SMART launch context (a Patient id), the `patient` claim patient/ scopes act within."""
    now = int(time.time())
    claims: dict[str, object] = {
        "iss": LOCAL_ISSUER, "aud": LOCAL_AUDIENCE, "sub": subject, "iat": now, "nbf": now,
        "exp": now + lifetime_seconds, "jti": str(uuid.uuid4()), "tenant": tenant, "scope": scope,
    }
    if fhir_user:
        claims["fhirUser"] = fhir_user
    if patient:
        claims["patient"] = patient
    claims.update(extra)
    claims = {k: v for k, v in claims.items() if k not in omit}  # tests drop claims to prove they are required
    return jwt.encode(claims, signing_key(directory), algorithm="ES256", headers={"kid": "esus-dev"})
