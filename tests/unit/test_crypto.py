"""Keys, envelopes, blind indexes and cursors, in isolation."""

from __future__ import annotations

import json

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from esus.domain.fhir import validate_resource
from esus.errors import InvalidRequest
from esus.security.crypto import (
    BlindIndex,
    CursorSigner,
    FieldCipher,
    FieldContext,
    IntegrityFailure,
    KeyRing,
    RootKeys,
)
from esus.security.phi import ResourceCodec


class Secret:
    """A root-key secret that can be rotated and counts fetches."""

    def __init__(self) -> None:
        self.value = RootKeys.generate()
        self.fetches = 0

    def fetch(self) -> str:
        self.fetches += 1
        return self.value.serialize()


@pytest.fixture
def secret() -> Secret:
    return Secret()


@pytest.fixture
def keyring(secret: Secret) -> KeyRing:
    return KeyRing(secret.fetch, max_age_seconds=300)


CTX = FieldContext("acme", "Patient", "p1", 3)


def test_envelope_round_trip_and_fresh_nonces(keyring: KeyRing) -> None:
    cipher = FieldCipher(keyring)
    one, two = cipher.encrypt(CTX, "name", b"Peter"), cipher.encrypt(CTX, "name", b"Peter")
    assert one != two  # random 96-bit nonce per encryption
    assert cipher.decrypt(CTX, "name", one) == b"Peter"
    assert FieldCipher.key_version_of(one) == "1"
    assert b"Peter" not in one


@pytest.mark.parametrize("moved", [
    FieldContext("other-tenant", "Patient", "p1", 3),
    FieldContext("acme", "Practitioner", "p1", 3),
    FieldContext("acme", "Patient", "p2", 3),
    FieldContext("acme", "Patient", "p1", 4),
])
def test_transplanted_ciphertext_fails(keyring: KeyRing, moved: FieldContext) -> None:
    cipher = FieldCipher(keyring)
    envelope = cipher.encrypt(CTX, "name", b"Peter")
    with pytest.raises(IntegrityFailure):
        cipher.decrypt(moved, "name", envelope)
    with pytest.raises(IntegrityFailure):
        cipher.decrypt(CTX, "telecom", envelope)


def test_flipped_bytes_and_unknown_key_version_fail(keyring: KeyRing) -> None:
    cipher = FieldCipher(keyring)
    envelope = cipher.encrypt(CTX, "name", b"Peter")
    for position in (3, 10, len(envelope) - 1):
        broken = bytearray(envelope)
        broken[position] ^= 0x80
        with pytest.raises(IntegrityFailure):
            cipher.decrypt(CTX, "name", bytes(broken))
    unknown = bytes([1, 2]) + b"99" + envelope[3:]
    with pytest.raises(IntegrityFailure):
        cipher.decrypt(CTX, "name", unknown)


def test_rotation_new_writes_use_new_key_old_still_decrypt(secret: Secret) -> None:
    keyring = KeyRing(secret.fetch, max_age_seconds=0)
    cipher = FieldCipher(keyring)
    old = cipher.encrypt(CTX, "name", b"Peter")
    secret.value = secret.value.with_new_version()
    new = cipher.encrypt(CTX, "name", b"Peter")
    assert (FieldCipher.key_version_of(old), FieldCipher.key_version_of(new)) == ("1", "2")
    assert cipher.decrypt(CTX, "name", old) == cipher.decrypt(CTX, "name", new) == b"Peter"


def test_root_key_cached_per_container(secret: Secret, keyring: KeyRing) -> None:
    cipher = FieldCipher(keyring)
    for _ in range(20):
        cipher.decrypt(CTX, "name", cipher.encrypt(CTX, "name", b"x"))
    assert secret.fetches == 1


def test_keys_differ_per_tenant_purpose_and_version(secret: Secret, keyring: KeyRing) -> None:
    keys = {keyring.key(t, p, "1") for t in ("a", "b") for p in ("field-encryption", "hashed-index:phone")}
    assert len(keys) == 4


def test_cloudformation_generated_secret_format_is_accepted() -> None:
    roots = RootKeys.parse(json.dumps({"current": "1", "k1": "A" * 64}))
    assert roots.current == "1" and roots.keys["1"] == b"A" * 64
    assert RootKeys.parse(roots.with_new_version().serialize()).keys["1"] == b"A" * 64
    with pytest.raises(ValueError):
        RootKeys.parse(json.dumps({"current": "2", "k1": "A" * 64}))


def test_blind_index_tokens(keyring: KeyRing) -> None:
    index = BlindIndex(keyring, {"phone": 16, "email": 12})
    token = index.token("acme", "phone", "5553265839")
    assert token == index.token("acme", "phone", "5553265839")
    assert token != index.token("other", "phone", "5553265839")  # per-tenant keys
    assert token.startswith("k1.") and len(token) == len("k1.") + 4
    assert index.token("acme", "email", "5553265839") != token  # per-field keys
    # Truncation collides on purpose: 12 bits means many values share a token.
    tokens = {index.token("acme", "email", f"user{n}@x.org") for n in range(10_000)}
    assert len(tokens) <= 4096


def test_cursor_bound_to_tenant_and_query(keyring: KeyRing) -> None:
    signer = CursorSigner(keyring)
    cursor = signer.sign("acme", "q1", "2024|abc")
    assert signer.verify("acme", "q1", cursor) == "2024|abc"
    for tenant, query, value in (("evil", "q1", cursor), ("acme", "q2", cursor), ("acme", "q1", cursor[:-2] + "xx"),
                                 ("acme", "q1", "garbage")):
        with pytest.raises(InvalidRequest):
            signer.verify(tenant, query, value)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


def test_codec_refuses_an_element_named_like_a_sealed_meta_element() -> None:
    """`meta.x` would be stored beside meta's own sealed `x` and read back into meta: refused (validation refuses
    it first: no FHIR element name has a dot)."""
    codec = ResourceCodec(FieldCipher(KeyRing(Secret().fetch, max_age_seconds=300)))
    for name in ("meta.", "meta.source"):
        with pytest.raises(ValueError, match="not an element name"):
            codec.encode(CTX, {"resourceType": "Patient", "id": "p1", "meta": {"source": "a"}, name: None})
        with pytest.raises(InvalidRequest):
            validate_resource("Patient", {"resourceType": "Patient", "meta": {"source": "a"}, name: "x"})


@settings(max_examples=150, deadline=None)
@given(name=st.text(), extra=st.dictionaries(st.text(min_size=1, max_size=12).filter(
    lambda k: k not in ("resourceType", "id", "meta") and not k.startswith("meta.")), json_values, max_size=5))
# Names that also occur in the clear document for other reasons (a key, a server field) are no leak.
@example(name="versionId", extra={})
@example(name="ersionId", extra={})
@example(name="resourceType", extra={})
@example(name="elementX", extra={"elementX": 1})
def test_codec_round_trips_arbitrary_unicode(name: str, extra: dict) -> None:
    keyring = KeyRing(Secret().fetch, max_age_seconds=300)
    codec = ResourceCodec(FieldCipher(keyring))
    resource = {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"}, "active": True,
                "name": [{"text": name}], **extra}
    clear, sealed = codec.encode(CTX, resource)
    assert codec.decode(CTX, clear, sealed) == resource
    assert list(codec.decode(CTX, clear, sealed)) == list(resource)
    assert json.loads(clear)["name"] is None  # only a placeholder keeps the element's place
    if len(name) >= 8:
        # The name's text is not in the stored clear JSON, unless the same resource WITHOUT the name
        # already has that text in clear (the name is a substring of a key or server field).
        without_name, _ = codec.encode(CTX, {k: v for k, v in resource.items() if k != "name"})
        needle = json.dumps(name, ensure_ascii=False)[1:-1]
        assert needle not in clear or needle in without_name
    assert "name" in sealed and "active" not in sealed
