"""Lambda SnapStart (template parameter SnapStart=PublishedVersions): what runs before the snapshot, and after a
restore. See docs/DEPLOY.md "Cold start and SnapStart" for when it pays and what it costs.

With SnapStart, Lambda runs a function's init once per published version, snapshots the environment, and resumes
every new environment of that version from the snapshot. So:

- Before the snapshot, `prime` loads what a first request would otherwise load on the request path: the fast
  validation table, the FHIR models library for the bodies it cannot prove, with the Provenance model a client's
  X-Provenance is held to (and the models and search plans of PRIMED_TYPES), the services built on first use,
  cryptography, the generated tables and the AWS service models of the clients. It
  fetches no key, builds no client and opens no connection: the root key and the clients are made per
  environment, on first use, after the restore (no key material or credentials in the snapshot, which every
  restored environment shares).
- After a restore, every environment starts from the same memory, so `after_restore` reseeds `random` (the retry
  jitter would otherwise repeat in every clone) and drops any services built before the snapshot (clients,
  cached keys timed by time.monotonic, which a restore does not carry over).

Outside a SnapStart init (`AWS_LAMBDA_INITIALIZATION_TYPE` is not "snap-start") `install` does nothing.
"""

from __future__ import annotations

import gc
import importlib
import os
import random
from collections.abc import Callable

from esus import coldstart

INITIALIZATION_TYPE = "AWS_LAMBDA_INITIALIZATION_TYPE"
SNAPSHOT_INIT = "snap-start"
PRIMED_SERVICES = ("dynamodb", "secretsmanager")
# Beyond what every write needs (Provenance), the types whose models and search expressions are loaded before the
# snapshot: the usual hub of a FHIR server's traffic. Others load on their first use (tens of ms each); priming
# all 146 would add about 15 s to each publish and some 90 MB to every snapshot.
PRIMED_TYPES = ("Patient", "Observation")
# The service modules esus.container.Services imports on first use (cheap to hold in every function's snapshot).
ON_DEMAND_SERVICES = ("esus.domain.search", "esus.domain.conditional", "esus.domain.includes", "esus.domain.bundles",
                      "esus.domain.everything", "esus.domain.provenance_service")


def prime() -> None:
    """Load, without touching AWS, what the first request of any route would load."""
    import boto3
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: F401 (loading it is the point)
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF  # noqa: F401
    from fhir.resources.R4B import get_fhir_model_class

    from esus.domain import bindings, search_params, search_semantics
    from esus.domain.fhir import PROVENANCE, validate_resource, validate_with_models
    from esus.security.auth import reference_resource_type

    # The JSON a client's creation reads, cached by the default session's loader (the one boto3.client() uses).
    # Credentials are resolved only by a client, after the restore.
    if boto3.DEFAULT_SESSION is None:
        boto3.setup_default_session()
    assert boto3.DEFAULT_SESSION is not None
    loader = boto3.DEFAULT_SESSION._session.get_component("data_loader")
    for name in ("endpoints", "partitions"):
        loader.load_data(name)
    for service in PRIMED_SERVICES:
        for kind in ("service-2", "endpoint-rule-set-1"):
            loader.load_service_model(service, kind)
    bindings.allowed_codes(PROVENANCE, "activity")  # reads fhir_bindings.json
    reference_resource_type("Practitioner/primed")  # the usual fhirUser: Provenance.agent.who's type
    for resource_type in (PROVENANCE, *PRIMED_TYPES):
        get_fhir_model_class(resource_type)
        for param in search_params.params_for(resource_type).values():
            search_semantics.extract(param, {"resourceType": resource_type})  # parses its plan (or FHIRPath)
    record = {
        "resourceType": PROVENANCE, "id": "primed", "meta": {"versionId": "1"},
        "target": [{"reference": "Patient/primed/_history/1"}], "recorded": "2000-01-01T00:00:00Z",
        "agent": [{"who": {"reference": "Practitioner/primed"}, "onBehalfOf": {"reference": "Organization/primed"}}],
        "activity": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                                 "code": "CREATE"}]},
    }
    validate_resource(PROVENANCE, record)  # the fast check's table (the usual path)
    validate_with_models(PROVENANCE, record)  # the nested models a body the fast check cannot prove needs
    for module in ON_DEMAND_SERVICES:  # built on first use (esus.container.Services): loaded before the snapshot
        importlib.import_module(module)
    if coldstart.in_lambda():
        gc.freeze()  # what priming built lives as long as every restored environment (esus.coldstart)


def after_restore() -> None:
    """Make each restored environment its own: fresh random state, no services carried over from the init."""
    from esus.container import use_services
    from esus.settings import get_settings

    random.seed()  # from os.urandom, per environment
    use_services(None)
    get_settings.cache_clear()


def install(register: Callable[[Callable[[], None], Callable[[], None]], None] | None = None) -> bool:
    """Registers the hooks when this init is the one Lambda snapshots; True if it did."""
    if os.environ.get(INITIALIZATION_TYPE) != SNAPSHOT_INIT:
        return False
    (register or _register_with_lambda)(prime, after_restore)
    return True


def _register_with_lambda(before: Callable[[], None], after: Callable[[], None]) -> None:
    # Part of Lambda's Python managed runtimes (3.12+), not of the layer.
    from snapshot_restore_py import register_after_restore, register_before_snapshot

    register_before_snapshot(before)
    register_after_restore(after)
