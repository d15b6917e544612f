"""Compartment phase: `$everything` for one Synthea patient (~100 resources) and a compartment search, paged;
DynamoDB calls and handler time per page.

The patient's Bundle is loaded once (each entry PUT under its own id, urn:uuid references resolved by the
importer's reader), then every page of `GET /fhir/Patient/{id}/$everything?_count=N` and of
`GET /fhir/Patient/{id}/Observation?_count=N` is requested `repeats` times, following the next links.
"""

from __future__ import annotations

import json
import os
import statistics
from collections import Counter
from pathlib import Path

from esus_dev.bench import REPO
from esus_dev.bench.gateway import Client
from esus_dev.bench.report import CompartmentRow, Report

SYNTHEA = Path(os.environ.get("ESUS_SHARED_DATA", REPO.parent / "shared")) / "synthea"
ENTRIES = (80, 120)  # a patient of about 100 resources
PAGE_SIZES = {"$everything": 50, "compartment search": 20}


def synthea_patient() -> Path:
    """The first Synthea file (by name) whose Bundle holds 80-120 entries."""
    for path in sorted(SYNTHEA.glob("*.json")):
        entries = len(json.loads(path.read_text(encoding="utf-8")).get("entry") or [])
        if ENTRIES[0] <= entries <= ENTRIES[1]:
            return path
    raise RuntimeError(f"no Synthea patient with {ENTRIES[0]}-{ENTRIES[1]} resources in {SYNTHEA}")


def load(client: Client, path: Path) -> tuple[str, int]:
    """(the patient's id, resources stored)."""
    from esus_dev.importer import read_source

    entries, problems = read_source(path)
    if problems:
        raise RuntimeError(f"{path.name}: {problems[0].reason}")
    for entry in entries:
        result = client.stack.handle("PUT", f"/fhir/{entry.key}", client.headers(),
                                     json.dumps(entry.body).encode(), "bench.local")
        if result.status not in (200, 201):
            raise RuntimeError(f"loading {entry.label}: {result.status} {result.body[:300]!r}")
    patient = next(e.resource_id for e in entries if e.resource_type == "Patient")
    return patient, len(entries)


def pages(client: Client, name: str, url: str) -> list[tuple[int, float, Counter[str], int]]:
    """Every page: (DynamoDB calls, handler seconds, calls by operation, entries)."""
    found = []
    while url:
        start = len(client.samples)
        body = client.call(name, "GET", url).body
        sample = client.samples[start]
        dynamo = [c for c in sample.calls if c.service == "dynamodb"]
        found.append((len(dynamo), sample.handler_s, Counter(c.operation for c in dynamo), len(body["entry"])))
        nxt = next((link["url"] for link in body["link"] if link["relation"] == "next"), "")
        url = nxt[nxt.index("/fhir/"):] if nxt else ""
        if len(found) > 100:
            raise RuntimeError(f"{name}: more than 100 pages")
    return found


def compartment_phase(client: Client, report: Report, repeats: int) -> None:
    path = synthea_patient()
    patient, stored = load(client, path)
    urls = {"$everything": f"/fhir/Patient/{patient}/$everything?_count={PAGE_SIZES['$everything']}",
            "compartment search": f"/fhir/Patient/{patient}/Observation?_count={PAGE_SIZES['compartment search']}"}
    for name, url in urls.items():
        runs = [pages(client, name, url) for _ in range(max(1, repeats))]
        client.samples.clear()
        measured = [page for run in runs[1:] or runs for page in run]  # the first run warms the function up
        calls = Counter[str]()
        for _, _, ops, _ in measured:
            calls.update(ops)
        report.compartment.append(CompartmentRow(
            name=name, source=f"{path.name} ({stored} resources)", url=url.replace(patient, "{id}"),
            pages=len(runs[0]), entries=sum(page[3] for page in runs[0]),
            calls_per_page=tuple(page[0] for page in runs[0]),
            operations={op: n / len(measured) for op, n in calls.items()},
            handler_median_ms=statistics.median(page[1] for page in measured) * 1000,
            handler_max_ms=max(page[1] for page in measured) * 1000,
        ))
