"""The raw scan behind "no PHI in clear" (issue 12): every item of every table, index keys, the
Provenance index and the change log included, probed for a patient's PHI (as stored and as search
normalises it) and for references to a patient. Used by test_phi (examples) and test_search_synthea
(the whole Synthea corpus)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from esus.domain.search_legacy import normalise_email, normalise_phone
from esus.domain.search_semantics import fold

MIN_PROBE = 5  # shorter strings could occur by chance inside kilobytes of ciphertext
TABLES = ("ResourcesTable", "HistoryTable", "ProvenanceTable", "IndexTable")
# Ids, tokens, timestamps and the SHA-256 of object bodies (`sha`, and in `obj` keys) are server-made hex/digits: a
# short numeric probe (a postal code, an MRN) can occur inside them by chance (a 5-digit postal code in one of a
# few dozen digests failed about one run in four), so they are blanked before probing for PHI values.
NOISE = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|k[0-9]+\.[0-9a-f]+|"
                   rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+Z|\b[0-9a-f]{64}\b")


def phi_values(patient: dict[str, Any]) -> set[str]:
    """Name, telecom, identifier, address and birth date values, as the client sent them."""
    values: set[str] = set()
    for name in patient.get("name", []):
        values.update(name.get("given", []))
        values.update(filter(None, [name.get("family"), name.get("text")]))
    values.update(t["value"] for t in patient.get("telecom", []) if t.get("value"))
    values.update(i["value"] for i in patient.get("identifier", []) if i.get("value"))
    for address in patient.get("address", []):
        values.update(address.get("line", []))
        values.update(filter(None, [address.get("text"), address.get("postalCode"), address.get("city")]))
    if patient.get("birthDate"):
        values.add(patient["birthDate"])
    return {v for v in values if len(v) >= MIN_PROBE}


def normalised_values(patient: dict[str, Any]) -> set[str]:
    """The forms search normalises PHI to (folded words and prefixes are what string tokens are made of;
    digits-only phones, lower-case emails, a birth date's month): none may be stored in clear either."""
    values = {fold(v) for v in phi_values(patient)}
    for name in patient.get("name", []):
        values.update(fold(w) for w in [*name.get("given", []), name.get("family") or ""])
    for address in patient.get("address", []):
        values.update(fold(w) for w in [*address.get("line", []), address.get("city") or ""])
    for telecom in patient.get("telecom", []):
        if telecom.get("system") == "phone" and telecom.get("value"):
            values.add(normalise_phone(telecom["value"]))
        if telecom.get("system") == "email" and telecom.get("value"):
            values.add(normalise_email(telecom["value"]))
    if patient.get("birthDate"):
        values.add(patient["birthDate"][:7])
    return {v for v in values if len(v) >= MIN_PROBE}


def without_own_ids(item: dict[str, Any]) -> str:
    """An item's text with a patient's OWN id blanked where it is the item's identity (its resource and
    history keys and clear `id`, the sort keys of its own search items, its change-log entries): what
    remains must never name a patient (a reference, in a key or anywhere else)."""
    text = json.dumps(item)
    pk, sort = item["pk"]["S"], item.get("sk", {}).get("S", "")
    change_log = pk.split("|")[1:2] == ["_changes"]  # sort key lastUpdated|Type|id|version
    if pk.split("|")[1:2] == ["Patient"] or (change_log and sort.split("|")[1:2] == ["Patient"]):
        own = item["rid"]["S"] if "rid" in item else pk.rsplit("|", 1)[1]
        text = text.replace(own, "~")
    return text


def assert_no_phi_in_clear(scan: Iterable[dict[str, Any]], patients: list[dict[str, Any]],
                           patient_ids: list[str], logs: str) -> None:
    """`scan`: raw DynamoDB items of every table. No PHI value of `patients`, as stored or normalised, in
    any clear attribute or ciphertext; no id of `patient_ids` outside those patients' own keys; no PHI in
    `logs`."""
    probes = set().union(*(phi_values(p) for p in patients))
    normalised = set().union(*(normalised_values(p) for p in patients)) - probes
    assert len(probes) > 200 and len(normalised) > 100
    text_parts: list[bytes] = []
    ciphertexts: list[bytes] = []
    for item in scan:
        sealed = item.pop("phi", {}).get("M", {})
        ciphertexts.extend(v["B"] for v in sealed.values())
        text_parts.append(without_own_ids(item).encode())  # every other attribute is text or a number
    assert sum(b"|Provenance|target|" in p for p in text_parts) >= len(patient_ids)  # the Provenance index
    text = b"\n".join(text_parts)
    referenced = sorted(pid for pid in patient_ids if pid.encode() in text)
    assert not referenced, f"patients referenced in clear: {referenced[:5]}"
    clear = NOISE.sub(b"~", text)
    raw = clear + b"\n" + b"\n".join(ciphertexts)  # ciphertexts are probed raw
    leaked = sorted(p for p in probes if p.encode() in raw or json.dumps(p)[1:-1].encode() in raw)
    assert not leaked, f"PHI stored in clear: {leaked[:10]}"
    folded = clear.decode().casefold()  # normalised forms: in any case, in the clear text (not ciphertexts)
    leaked = sorted(p for p in normalised if p in folded or json.dumps(p)[1:-1] in folded)
    assert not leaked, f"normalised PHI stored in clear: {leaked[:10]}"
    assert not [p for p in probes if p in logs]
