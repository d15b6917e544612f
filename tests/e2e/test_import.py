"""`esus import` against the local stack: a Synthea sample holding every resource type of the corpus (the
whole corpus with ESUS_FULL_CORPUS=1, `make test-full`), idempotent re-runs, import Provenance, resuming
(also after Ctrl-C), invalid input. The importer's pure parts (retries, classification, the plan of the whole
corpus, validation of every corpus resource) are unit tests: tests/unit/test_importer.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, SYNTHEA, RunningStack, new_tenant, references_in, start_stack

FULL_CORPUS = os.environ.get("ESUS_FULL_CORPUS", "") not in ("", "0")
CORPUS = sorted(SYNTHEA.glob("*.json"))
pytestmark = [
    pytest.mark.timeout(1200),  # the full corpus is ~3,600 writes on a single-process stack
    pytest.mark.skipif(not CORPUS, reason="../shared/synthea is not next to the repo"),
]


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Its own stack: the imported data would slow the shared one for every later test."""
    yield from start_stack(tmp_path_factory)


def _types(path: Path) -> set[str]:
    return {e["resource"]["resourceType"] for e in json.loads(path.read_text(encoding="utf-8"))["entry"]}


def patient_bundles(paths: list[Path]) -> list[Path]:
    return [p for p in paths if "Information" not in p.name]


def corpus_sample() -> list[Path]:
    """The fewest patient bundles that together hold every resource type of the corpus, smallest first on ties,
    plus the hospital and practitioner files: these repeat the patient bundles' Organizations and
    Practitioners, so the sample also exercises superseding across files."""
    types = {path: _types(path) for path in patient_bundles(CORPUS)}
    wanted = set().union(*types.values())
    chosen: list[Path] = []
    while wanted:
        best = max(types, key=lambda p: (len(types[p] & wanted), -p.stat().st_size))
        chosen.append(best)
        wanted -= types[best]
    return sorted(chosen + [p for p in CORPUS if "Information" in p.name])


SAMPLE = corpus_sample() if CORPUS else []
SOURCES = CORPUS if FULL_CORPUS else SAMPLE  # what the main import, its re-runs and checks use
IMPORT_SYSTEM = "urn:esus:import-source"


@dataclass
class ImportRun:
    returncode: int
    summary: dict[str, Any]
    stdout: str
    stderr: str
    seconds: float


def run_import(stack: RunningStack, tenant: str, *args: str, json_summary: bool = True) -> ImportRun:
    command = [sys.executable, "-m", "esus_dev.cli", "import", *args, "--base-url", stack.base_url,
               "--token", stack.token(tenant, "system/*.cruds", None)]
    if json_summary:
        command.append("--json")
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=_env(stack), capture_output=True, text=True, timeout=1100)
    seconds = time.monotonic() - started
    summary = json.loads(done.stdout) if json_summary and done.stdout.startswith("{") else {}
    return ImportRun(done.returncode, summary, done.stdout, done.stderr, seconds)


def _env(stack: RunningStack) -> dict[str, str]:
    env = {**os.environ, "ESUS_DEV_DIR": str(stack.dev_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("ESUS_TOKEN", None)
    return env


def corpus_keys() -> dict[str, set[str]]:
    """Type -> ids in the imported files, read independently of the importer."""
    keys: dict[str, set[str]] = {}
    for path in SOURCES:
        for entry in json.loads(path.read_text(encoding="utf-8"))["entry"]:
            resource = entry["resource"]
            keys.setdefault(resource["resourceType"], set()).add(resource["id"])
    return keys


def stored_keys(stack: RunningStack, tenant: str) -> list[str]:
    """Keys (tenant|Type|id) of the tenant's current resources: the ResourcesTable only, keys only (the other
    tables and whole items would make every count scan the whole imported corpus)."""
    ddb, keys = stack.dynamodb(), []
    kwargs: dict[str, Any] = {"TableName": stack.table("ResourcesTable"), "ProjectionExpression": "pk"}
    while True:
        page = ddb.scan(**kwargs)
        keys += [item["pk"]["S"] for item in page["Items"] if item["pk"]["S"].startswith(f"{tenant}|")]
        if "LastEvaluatedKey" not in page:
            return keys
        kwargs["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def stored_counts(stack: RunningStack, tenant: str) -> Counter[str]:
    return Counter(key.split("|")[1] for key in stored_keys(stack, tenant))


def stored_items(stack: RunningStack, tenant: str) -> dict[str, set[str]]:
    """Every item of the tenant, whole, per table."""
    tables = stack.tenant_items(tenant)
    return {table: {json.dumps(item, sort_keys=True, default=bytes.hex) for item in items}
            for table, items in tables.items()}


@dataclass
class Imported:
    tenant: str
    run: ImportRun
    state_file: Path


@pytest.fixture(scope="module")
def imported(stack: RunningStack, tmp_path_factory: pytest.TempPathFactory) -> Imported:
    tenant = new_tenant()
    state_file = tmp_path_factory.mktemp("import") / "state.json"
    run = run_import(stack, tenant, *map(str, SOURCES), "--state-file", str(state_file))
    print(f"\nSynthea import ({len(SOURCES)} of {len(CORPUS)} files): {run.summary.get('resources')} resources "
          f"in {run.seconds:.1f} s")
    return Imported(tenant, run, state_file)


def test_sample_holds_every_corpus_type() -> None:
    assert set().union(*map(_types, SAMPLE)) == set().union(*map(_types, CORPUS))
    assert len(patient_bundles(SAMPLE)) >= 2  # references across bundles to the shared files, and superseding


def test_synthea_import_loads_completely(stack: RunningStack, imported: Imported) -> None:
    keys = corpus_keys()
    distinct = sum(len(ids) for ids in keys.values())
    entries = sum(len(json.loads(p.read_text(encoding="utf-8"))["entry"]) for p in SOURCES)
    summary = imported.run.summary
    assert imported.run.returncode == 0, imported.run.stdout + imported.run.stderr
    assert summary["failed"] == 0 and summary["failures"] == []
    assert summary["created"] == summary["resources"] == distinct
    assert summary["updated"] == summary["unchanged"] == summary["skipped"] == 0
    # Organizations/Practitioners repeated across files are sent once (the last occurrence).
    assert summary["superseded"] == entries - distinct > 0
    assert stored_counts(stack, imported.tenant) == Counter({t: len(ids) for t, ids in keys.items()})

    patient_file = patient_bundles(SOURCES)[0]
    bundle = json.loads(patient_file.read_text(encoding="utf-8"))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    encounter = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Encounter")
    with stack.client(imported.tenant) as client:
        stored_patient = client.get(f"/Patient/{patient['id']}").json()
        stored_encounter = client.get(f"/Encounter/{encounter['id']}").json()
        assert stored_encounter["subject"] == {"reference": f"Patient/{patient['id']}"}
        references = references_in(stored_patient) + references_in(stored_encounter)
        assert references and not [r for r in references if r.startswith("urn:")]
        for reference in references:  # each points at an imported resource
            if not reference.startswith("#"):
                assert client.get(f"/{reference}").status_code == 200, reference


def test_second_run_without_resume_changes_nothing(stack: RunningStack, imported: Imported, tmp_path: Path) -> None:
    before = stored_items(stack, imported.tenant)
    again = run_import(stack, imported.tenant, *map(str, SOURCES), "--no-resume",
                       "--state-file", str(tmp_path / "s.json"))
    assert again.returncode == 0, again.stdout + again.stderr
    summary = again.summary
    assert summary["unchanged"] == summary["resources"] == imported.run.summary["resources"]
    assert summary["created"] == summary["updated"] == summary["failed"] == summary["skipped"] == 0
    after = stored_items(stack, imported.tenant)
    assert after["HistoryTable"] == before["HistoryTable"]
    assert after["ProvenanceTable"] == before["ProvenanceTable"]
    assert after == before


def test_import_provenance_names_the_source_file(stack: RunningStack, imported: Imported) -> None:
    patient_file = patient_bundles(SOURCES)[-1]
    bundle = json.loads(patient_file.read_text(encoding="utf-8"))
    pid = next(e["resource"]["id"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    with stack.client(imported.tenant) as client:
        chain = client.get("/Provenance", params={"target": f"Patient/{pid}"}).json()
    assert chain["total"] == 1
    record = chain["entry"][0]["resource"]
    assert record["target"] == [{"reference": f"Patient/{pid}/_history/1", "type": "Patient"}]
    assert record["activity"]["coding"][0]["code"] == "import"
    assert record["agent"][0]["who"]["reference"] == "Device/esus-importer"
    assert record["agent"][0]["onBehalfOf"]["reference"] == f"Organization/{imported.tenant}"
    assert record["entity"] == [{"role": "source", "what": {
        "display": patient_file.name, "identifier": {"system": IMPORT_SYSTEM, "value": patient_file.name}}}]


def test_resumed_run_skips_everything_quickly(stack: RunningStack, imported: Imported) -> None:
    before = stored_items(stack, imported.tenant)
    resumed = run_import(stack, imported.tenant, *map(str, SOURCES), "--state-file", str(imported.state_file))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    summary = resumed.summary
    assert summary["skipped"] == summary["resources"] == imported.run.summary["resources"]
    assert summary["created"] == summary["updated"] == summary["unchanged"] == summary["failed"] == 0
    assert resumed.seconds < 30, resumed.seconds  # reading and hashing only, no requests
    assert stored_items(stack, imported.tenant) == before


def test_ctrl_c_saves_progress_and_the_next_run_resumes(stack: RunningStack, tmp_path: Path) -> None:
    tenant = new_tenant()
    state_file = tmp_path / "state.json"
    # The sample (also under ESUS_FULL_CORPUS) at concurrency 1, ~400 writes: SIGINT once 10 are stored leaves
    # most of them unsent. The store is polled, not the state file, which is flushed only every 2 s: a fast run
    # could end before that.
    sources = [str(p) for p in SAMPLE]
    command = [sys.executable, "-m", "esus_dev.cli", "import", *sources, "--base-url", stack.base_url,
               "--token", stack.token(tenant, "system/*.cruds", None), "--state-file", str(state_file),
               "--concurrency", "1", "--json"]
    process = subprocess.Popen(command, cwd=REPO, env=_env(stack), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while len(stored_keys(stack, tenant)) < 10 and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stdout + stderr
    first = json.loads(stdout)
    assert first["not_sent"] > 0 and first["failed"] == 0
    saved = _recorded(state_file)
    assert saved == first["created"] >= 10
    assert sum(stored_counts(stack, tenant).values()) == first["created"]  # nothing in flight was lost

    resumed = run_import(stack, tenant, *sources, "--state-file", str(state_file))
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert resumed.summary["skipped"] == saved
    assert resumed.summary["created"] == resumed.summary["resources"] - saved
    assert resumed.summary["unchanged"] == resumed.summary["updated"] == 0
    assert sum(stored_counts(stack, tenant).values()) == resumed.summary["resources"]


def _recorded(state_file: Path) -> int:
    try:
        targets = json.loads(state_file.read_text())["targets"]
    except (OSError, ValueError):
        return 0
    return sum(len(done) for done in targets.values())


def test_invalid_ndjson_line_fails_with_reason_and_valid_ones_load(stack: RunningStack, tmp_path: Path) -> None:
    tenant = new_tenant()
    source = tmp_path / "patients.ndjson"
    lines = [
        {"resourceType": "Patient", "id": "good-1", "gender": "female", "birthDate": "1970-01-01"},
        {"resourceType": "Patient", "id": "bad-1", "birthDate": "not-a-date"},
        {"resourceType": "Patient", "gender": "male"},  # no id: a deterministic one is derived
    ]
    source.write_text("\n".join(json.dumps(line) for line in lines) + "\n\n{not json\n", encoding="utf-8")
    state = str(tmp_path / "state.json")
    first = run_import(stack, tenant, str(source), "--state-file", state, json_summary=False)
    assert first.returncode == 1
    assert "created     2" in first.stdout and "failed      2" in first.stdout
    failure_lines = [line for line in first.stdout.splitlines() if "patients.ndjson #" in line]
    bad = next(line for line in failure_lines if "Patient/bad-1" in line)
    assert "HTTP 400" in bad and "Patient.birthDate" in bad, first.stdout
    assert any("#5" in line and "invalid JSON" in line for line in failure_lines), first.stdout
    with stack.client(tenant) as client:
        assert client.get("/Patient/good-1").json()["gender"] == "female"
        assert client.get("/Patient/bad-1").status_code == 404
    counts = stored_counts(stack, tenant)
    assert counts == Counter({"Patient": 2})

    again = run_import(stack, tenant, str(source), "--state-file", state, "--no-resume")
    assert again.returncode == 1
    assert again.summary["unchanged"] == 2 and again.summary["created"] == 0 and again.summary["failed"] == 2
    assert stored_counts(stack, tenant) == counts  # the derived id is stable


def test_bundle_reference_to_unknown_urn_is_reported_not_sent(stack: RunningStack, tmp_path: Path) -> None:
    tenant = new_tenant()
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:0b6e5a52-6c1b-4a57-9a2e-3f1f0c1d2e3f",
         "resource": {"resourceType": "Patient", "id": "0b6e5a52-6c1b-4a57-9a2e-3f1f0c1d2e3f"}},
        {"fullUrl": "urn:uuid:1c7f6b63-7d2c-4b68-8b3f-4a2a1d2e3f40",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                      "subject": {"reference": "urn:uuid:0b6e5a52-6c1b-4a57-9a2e-3f1f0c1d2e3f"}}},
        {"fullUrl": "urn:uuid:2d8a7c74-8e3d-4c79-9c40-5b3b2e3f4a51",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "y"},
                      "subject": {"reference": "urn:uuid:99999999-0000-0000-0000-000000000000"}}},
    ]}
    source = tmp_path / "bundle.json"
    source.write_text(json.dumps(bundle), encoding="utf-8")
    result = run_import(stack, tenant, str(source), "--state-file", str(tmp_path / "s.json"))
    assert result.returncode == 1
    assert result.summary["created"] == 2 and result.summary["failed"] == 1
    assert "matches no fullUrl" in result.summary["failures"][0]["reason"]
    with stack.client(tenant) as client:  # id taken from the fullUrl, reference rewritten
        observation = client.get("/Observation/1c7f6b63-7d2c-4b68-8b3f-4a2a1d2e3f40").json()
    assert observation["subject"] == {"reference": "Patient/0b6e5a52-6c1b-4a57-9a2e-3f1f0c1d2e3f"}
