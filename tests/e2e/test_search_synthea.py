"""Search over imported Synthea data (issue 12): for every patient, `Encounter?patient=`,
`Condition?patient=` and `Observation?patient=` return exactly that bundle's resources; after the whole
corpus, a raw scan of every table finds no PHI and no patient reference in clear.

Two bundles run always; the whole corpus (~3,700 writes through `esus import`) is marked `slow`
(`make test-full` runs it; `make test` skips it: minutes on this machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from esus_dev.importer import build_plan
from tests.conftest import REPO, SYNTHEA, RunningStack, new_tenant, start_stack
from tests.e2e.phi_scan import TABLES, assert_no_phi_in_clear

SEARCHED = ("Encounter", "Condition", "Observation")
pytestmark = pytest.mark.timeout(1800)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Its own stack: a corpus import would slow the shared one for every later test."""
    yield from start_stack(tmp_path_factory)


def _patient_bundles() -> list[Path]:
    found = []
    for path in sorted(SYNTHEA.glob("*.json")):
        bundle = json.loads(path.read_text(encoding="utf-8"))
        if any(e["resource"]["resourceType"] == "Patient" for e in bundle.get("entry", [])):
            found.append(path)
    return found


def _expected(paths: list[Path]) -> dict[str, dict[str, set[str]]]:
    """patient id -> type -> ids of that bundle's resources of the type, as `esus import` writes them.
    Every Encounter, Condition and Observation of a Synthea bundle is about the bundle's one patient:
    checked here, so the expectation is the bundle's count and not a copy of what search does."""
    expected: dict[str, dict[str, set[str]]] = {}
    for path in paths:
        entries = build_plan([path]).entries
        [patient] = [e for e in entries if e.resource_type == "Patient"]
        raw = json.loads(path.read_text(encoding="utf-8"))
        counts = Counter(e["resource"]["resourceType"] for e in raw["entry"])
        mine: dict[str, set[str]] = {}
        for resource_type in SEARCHED:
            of_type = [e for e in entries if e.resource_type == resource_type]
            assert all(e.body["subject"]["reference"] == f"Patient/{patient.resource_id}" for e in of_type)
            assert len(of_type) == counts[resource_type]  # nothing superseded: one write per bundle entry
            mine[resource_type] = {e.resource_id for e in of_type}
        expected[patient.resource_id] = mine
    return expected


def _import(stack: RunningStack, tenant: str, paths: list[Path], state: Path) -> float:
    command = [sys.executable, "-m", "esus_dev.cli", "import", *map(str, paths), "--base-url", stack.base_url,
               "--token", stack.token(tenant, "system/*.cruds", None), "--state-file", str(state), "--json"]
    env = {**os.environ, "ESUS_DEV_DIR": str(stack.dev_dir)}
    started = time.monotonic()
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=1700)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)
    assert summary["failed"] == 0 and summary["created"] == summary["resources"], summary
    return time.monotonic() - started


def _check_patient_searches(stack: RunningStack, tenant: str, expected: dict[str, dict[str, set[str]]]) -> None:
    with stack.client(tenant) as client:
        for pid, per_type in expected.items():
            for resource_type, wanted in per_type.items():
                response = client.get(f"/{resource_type}", params={"patient": pid, "_count": 100})
                assert response.status_code == 200, response.text
                bundle = response.json()
                found = {e["resource"]["id"] for e in bundle.get("entry", [])}
                assert bundle["total"] == len(wanted) and found == wanted, (resource_type, pid)
                assert not [link for link in bundle["link"] if link["relation"] == "next"]


def test_two_bundles_patient_searches_return_each_bundles_resources(stack: RunningStack, tmp_path: Path) -> None:
    paths = sorted(_patient_bundles(), key=lambda p: p.stat().st_size)[:2]
    expected = _expected(paths)
    assert len(expected) == 2 and all(per_type["Observation"] for per_type in expected.values())
    tenant = new_tenant()
    _import(stack, tenant, paths, tmp_path / "state.json")
    _check_patient_searches(stack, tenant, expected)
    # Another tenant sees none of it.
    _check_patient_searches(stack, new_tenant(), {pid: {t: set() for t in SEARCHED} for pid in expected})


@pytest.mark.slow
def test_whole_corpus_patient_searches_and_no_phi_in_clear(stack: RunningStack, tmp_path: Path) -> None:
    paths = sorted(SYNTHEA.glob("*.json"))
    bundles = _patient_bundles()
    expected = _expected(bundles)
    assert len(expected) == len(bundles) > 30
    tenant = new_tenant()
    seconds = _import(stack, tenant, paths, tmp_path / "state.json")
    print(f"imported {len(paths)} Synthea files in {seconds:.0f} s")  # shown with -s
    _check_patient_searches(stack, tenant, expected)
    patients = [json.loads(p.read_text(encoding="utf-8")) for p in bundles]
    patients = [e["resource"] for b in patients for e in b["entry"] if e["resource"]["resourceType"] == "Patient"]
    items = [i for table in TABLES for i in stack.scan(table) if i["pk"]["S"].startswith(f"{tenant}|")]
    assert_no_phi_in_clear(items, patients, list(expected), "".join(stack.output))
