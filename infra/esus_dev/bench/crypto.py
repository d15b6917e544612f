"""Crypto phase: field encryption, blind-index tokens and the PHI codec per resource, single thread."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

from esus_dev.bench.report import CryptoRow, Report
from esus_dev.bench.scenario import load_example


def rate(operation: Callable[[], Any], seconds: float) -> float:
    """Operations per second: batches until `seconds` have passed (after a short warm-up)."""
    for _ in range(50):
        operation()
    count, batch = 0, 200
    started = time.perf_counter()
    while True:
        for _ in range(batch):
            operation()
        count += batch
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return count / elapsed


def crypto_phase(report: Report, seconds: float) -> None:
    from esus.security.crypto import BlindIndex, FieldCipher, FieldContext, KeyRing, RootKeys
    from esus.security.phi import ResourceCodec

    secret = RootKeys.generate().serialize()
    keyring = KeyRing(lambda: secret, 3600)
    cipher = FieldCipher(keyring)
    blind = BlindIndex(keyring, {"phone": 16})
    codec = ResourceCodec(cipher)
    ctx = FieldContext("bench", "Patient", "0f8c7a5e-7a40-4d3c-9a8e-1b2c3d4e5f60", 1)
    field_plain = json.dumps([{"system": "phone", "value": "(03) 5555 6473", "use": "work"}]).encode()
    envelope = cipher.encrypt(ctx, "telecom", field_plain)
    patient = load_example("Patient-example.json")
    patient = {**patient, "id": ctx.resource_id, "meta": {"versionId": "1", "lastUpdated": "2024-01-01T00:00:00.000Z"}}
    doc, sealed = codec.encode(ctx, patient)
    plain_json = json.dumps(patient, ensure_ascii=False, separators=(",", ":"))

    def codec_roundtrip() -> None:
        codec.decode(ctx, *codec.encode(ctx, patient))

    def json_roundtrip() -> None:
        json.loads(json.dumps(patient, ensure_ascii=False, separators=(",", ":")))

    field_detail = f"{len(field_plain)} B plaintext, AES-256-GCM envelope {len(envelope)} B"
    patient_detail = f"Patient-example.json, {len(plain_json)} B JSON, {len(sealed)} sealed elements"
    rows = [
        CryptoRow("FieldCipher.encrypt", field_detail, rate(lambda: cipher.encrypt(ctx, "telecom", field_plain),
                                                            seconds)),
        CryptoRow("FieldCipher.decrypt", field_detail, rate(lambda: cipher.decrypt(ctx, "telecom", envelope),
                                                            seconds)),
        CryptoRow("BlindIndex.token", "phone, HMAC-SHA256 truncated to 16 bits",
                  rate(lambda: blind.token("bench", "phone", "0355556473"), seconds)),
        CryptoRow("ResourceCodec.encode", patient_detail, rate(lambda: codec.encode(ctx, patient), seconds)),
        CryptoRow("ResourceCodec.decode", patient_detail, rate(lambda: codec.decode(ctx, doc, sealed), seconds)),
        CryptoRow("ResourceCodec.encode + decode", patient_detail, rate(codec_roundtrip, seconds)),
        CryptoRow("json.dumps + json.loads (no encryption)", patient_detail, rate(json_roundtrip, seconds)),
    ]
    report.crypto = rows
    report.codec_overhead_us = rows[5].micros - rows[6].micros
    report.codec_detail = patient_detail
