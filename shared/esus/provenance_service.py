"""Provenance as a resource: create (validated, US Core), read and vread. Immutable: no update/delete."""

from __future__ import annotations

import uuid
from typing import Any

from esus import provenance as prov
from esus.auth import Principal
from esus.errors import InvalidRequest, NotFound
from esus.fhir import PROVENANCE, now_instant, require_id
from esus.store import Store


class ProvenanceService:
    def __init__(self, store: Store) -> None:
        self._store = store

    def create(self, principal: Principal, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or body.get("resourceType") != PROVENANCE:
            raise InvalidRequest("The body must be a Provenance resource")
        record = prov.finalize(body, str(uuid.uuid4()), now_instant())
        sort_key = prov.recorded_key(record["recorded"])
        items = [
            self._store.provenance_put(principal.tenant, record, sort_key),
            *(self._store.index_put(e) for e in prov.index_entries(principal.tenant, record, sort_key)),
        ]
        self._store.transact(items, str(uuid.uuid4()))
        return record

    def read(self, tenant: str, provenance_id: str) -> dict[str, Any]:
        require_id(provenance_id)
        found = self._store.provenances(tenant, [provenance_id])
        if not found:
            raise NotFound(f"Unknown Provenance resource '{provenance_id}'")
        return found[0]

    def vread(self, tenant: str, provenance_id: str, vid: str) -> dict[str, Any]:
        record = self.read(tenant, provenance_id)
        if vid != record["meta"]["versionId"]:
            raise NotFound(f"Provenance/{provenance_id} has no version '{vid[:20]}' (Provenance is immutable)")
        return record

