"""The Patient compartment table is generated from the official CompartmentDefinition."""

from __future__ import annotations

import json

import pytest

from esus.domain.fhir import SUPPORTED_TYPES
from esus.domain.search_params import params_for
from esus_dev.codegen import gen_compartment

TABLE = gen_compartment.TARGET


def test_committed_table_is_current() -> None:
    if not gen_compartment.SOURCE.exists():
        pytest.fail(f"the official definition must be next to the repo: {gen_compartment.SOURCE}")
    assert TABLE.read_text(encoding="utf-8") == gen_compartment.render(gen_compartment.generate()), \
        "run: python -m esus_dev.codegen.gen_compartment"
    assert gen_compartment.main(["--check"]) == 0


def test_table_follows_the_definition_and_the_search_table() -> None:
    definition = json.loads(gen_compartment.SOURCE.read_text(encoding="utf-8"))
    official = {r["code"]: set(r["param"]) for r in definition["resource"] if r.get("param")}
    table = json.loads(TABLE.read_text(encoding="utf-8"))
    for resource_type, codes in table["resources"].items():
        assert resource_type in SUPPORTED_TYPES
        assert set(codes) <= official[resource_type]
        if resource_type != "Provenance":  # Provenance is searched through its own index (patient = its targets)
            assert all(params_for(resource_type)[c].type == "reference" for c in codes)
    # Nothing the definition names is silently dropped: it is in the table or listed as omitted.
    for resource_type, codes in official.items():
        kept = set(table["resources"].get(resource_type, ()))
        assert kept | set(table["omitted"].get(resource_type, ())) == codes, resource_type
    assert table["resources"]["Observation"] == ["performer", "subject"] and "Practitioner" not in table["resources"]
    assert {"Patient", "Encounter", "Provenance", "MedicationRequest"} <= set(table["resources"])


def test_generator_omits_unsearchable_parameters(tmp_path: object) -> None:
    from pathlib import Path

    source = Path(str(tmp_path)) / "def.json"
    source.write_text(json.dumps({"url": "u", "version": "4", "resource": [
        {"code": "Observation", "param": ["subject", "no-such-param", "code"]},
        {"code": "NotAType", "param": ["subject"]},
        {"code": "Practitioner"}]}))
    table = gen_compartment.generate(source)
    assert table["resources"] == {"Observation": ["subject"]}
    assert table["omitted"] == {"NotAType": ["subject"], "Observation": ["code", "no-such-param"]}
