"""The committed search-parameter table is what the generator makes from the official definitions."""

from __future__ import annotations

import json

import pytest

from esus.domain.fhir import RESOURCE_TYPES
from esus.domain.search_params import TABLE, params_for
from esus_dev.codegen import gen_search_params


def test_committed_table_is_current() -> None:
    if not gen_search_params.SOURCE.exists():
        pytest.fail(f"the official definitions must be next to the repo: {gen_search_params.SOURCE}")
    assert TABLE.read_text(encoding="utf-8") == gen_search_params.render(gen_search_params.generate()), \
        "run: python -m esus_dev.codegen.gen_search_params"
    assert gen_search_params.main(["--check"]) == 0


def test_table_shape() -> None:
    table = json.loads(TABLE.read_text(encoding="utf-8"))
    assert set(table) == RESOURCE_TYPES
    patient = params_for("Patient")
    assert patient["birthdate"].type == "date" and not patient["birthdate"].clear
    assert patient["name"].expression == "Patient.name"
    assert "phonetic" not in patient  # not offered: no phonetic algorithm
    observation = params_for("Observation")
    assert observation["patient"].expression == "Observation.subject"
    assert observation["patient"].resolve == "Patient"
    assert observation["code"].clear and not observation["combo-code"].clear
    assert observation["value-quantity"].expression == \
        "(Observation.value.ofType(Quantity)) | (Observation.value.ofType(SampledData))"
    for resource_type in RESOURCE_TYPES:
        params = params_for(resource_type)
        assert {"_id", "_lastUpdated"} <= set(params)
        for param in params.values():  # every expression starts at its own type
            assert all(a.lstrip("(").startswith(f"{resource_type}.")
                       for a in gen_search_params.split_alternatives(param.expression))


def test_split_alternatives_respects_parentheses() -> None:
    assert gen_search_params.split_alternatives("A.b | (A.c.where(x | y)) | A.d") == [
        "A.b", "(A.c.where(x | y))", "A.d"]
