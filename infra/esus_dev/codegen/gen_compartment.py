"""Generates shared/esus/domain/compartment_patient_r4.json from the official Patient CompartmentDefinition.

    python -m esus_dev.codegen.gen_compartment [--check]

Per stored type, the search parameters that put a resource of that type in a patient's compartment (a resource
is in Patient P's compartment when any of them references Patient/P; Patient P itself is always in it). Only
types ESUS stores, and only parameters ESUS can search: the generated search table
(esus.domain.search_params) and, for Provenance, its own search path (esus.domain.search_legacy). A parameter
the definition names that ESUS cannot search is left out and listed under "omitted" (the generator prints them),
so the table never claims membership the search cannot find.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from esus.domain.fhir import PROVENANCE, SUPPORTED_TYPES
from esus.domain.search_legacy import PROVENANCE_REFERENCE_PARAMS
from esus.domain.search_params import params_for
from esus_dev.codegen import write_or_check

REPO = Path(__file__).resolve().parents[3]
SOURCE = REPO.parent / "shared" / "fhir-spec" / "r4" / "compartmentdefinition-patient.json"
TARGET = REPO / "shared" / "esus" / "domain" / "compartment_patient_r4.json"


def _searchable(resource_type: str, code: str) -> bool:
    """A reference parameter ESUS can search on this type."""
    if resource_type == PROVENANCE:
        return code in PROVENANCE_REFERENCE_PARAMS
    param = params_for(resource_type).get(code)
    return param is not None and param.type == "reference"


def generate(source: Path = SOURCE) -> dict[str, Any]:
    definition = json.loads(source.read_text(encoding="utf-8"))
    resources: dict[str, list[str]] = {}
    omitted: dict[str, list[str]] = {}
    for entry in definition["resource"]:
        resource_type, codes = str(entry["code"]), [str(c) for c in entry.get("param") or ()]
        if not codes:
            continue  # not in the compartment
        if resource_type not in SUPPORTED_TYPES:
            omitted[resource_type] = sorted(codes)
            continue
        kept = sorted(c for c in codes if _searchable(resource_type, c))
        missing = sorted(set(codes) - set(kept))
        if missing:
            omitted[resource_type] = missing
        if kept:
            resources[resource_type] = kept
    return {
        "source": f"{definition['url']}|{definition['version']}",
        "resources": dict(sorted(resources.items())),
        "omitted": dict(sorted(omitted.items())),
    }


def render(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=1, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the committed table is not current")
    args = parser.parse_args(argv)
    table = generate()
    text = render(table)
    if not write_or_check(TARGET, text, "esus_dev.codegen.gen_compartment", args.check):
        return 1
    if args.check:
        return 0
    print(f"wrote {TARGET} ({len(table['resources'])} types)")
    for resource_type, codes in table["omitted"].items():
        print(f"  omitted {resource_type}: {', '.join(codes)} (not stored, or not searchable)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
