"""Provenance as a resource: create (validated, US Core), read and vread. Immutable: no update/delete."""

from __future__ import annotations

import uuid
from collections import defaultdict
from typing import Any

from esus.domain import provenance as prov
from esus.domain.compartment import in_compartment
from esus.domain.fhir import PROVENANCE, REFERENCE_PATTERN, RESOURCE_TYPES, now_instant, require_id
from esus.domain.search_index import SearchKeys
from esus.errors import Forbidden, InvalidRequest, Issue, NotFound, Unprocessable
from esus.security.auth import CREATE, Principal
from esus.settings import Settings
from esus.storage.store import Store


class ProvenanceService:
    def __init__(self, store: Store, settings: Settings, keys: SearchKeys) -> None:
        self._store = store
        self._s = settings
        self._keys = keys

    def create(self, principal: Principal, body: Any) -> dict[str, Any]:
        """The client's record, attributed (server `recorded`, caller appended as enterer), about resources
        that exist in the caller's tenant; anything else is refused before a write."""
        if not isinstance(body, dict) or body.get("resourceType") != PROVENANCE:
            raise InvalidRequest("The body must be a Provenance resource")
        prov.check_client_claims(body)
        now = now_instant()
        record = prov.finalize(prov.attributed(body, self._s, principal, now), str(uuid.uuid4()), now)
        within = principal.confined_to(PROVENANCE, CREATE)
        if within is not None and not in_compartment(within, PROVENANCE, record):
            raise Forbidden(f"This Provenance would not be in the compartment of Patient/{within} (a target must be "
                            "that Patient), the only patient this token may write for")
        sort_key = prov.recorded_key(record["recorded"])
        index_kv = self._keys.current_version()
        token = self._keys.provenance_token(principal.tenant, index_kv)
        items = [
            self._store.provenance_put(principal.tenant, record, sort_key, index_kv),
            *(self._store.index_put(e) for e in prov.index_entries(principal.tenant, record, sort_key, token)),
        ]
        self._store.require_fits(items)  # a record too big for one write is refused before its targets are read
        self._check_targets(principal.tenant, record["target"], within)
        self._store.transact(items, str(uuid.uuid4()))
        return record

    def _check_targets(self, tenant: str, targets: list[Any], within: str | None = None) -> None:
        """Every target is `Type/id` or `Type/id/_history/n` of a live resource (or a Provenance) of this
        tenant; a version must exist. One BatchGetItem per target type. A caller confined to `within`'s
        compartment may name only resources in it: any other is answered as if it did not exist."""
        issues: list[Issue] = []
        wanted: dict[str, list[tuple[int, str, int | None]]] = defaultdict(list)
        for i, target in enumerate(targets):
            reference = target.get("reference") if isinstance(target, dict) else None
            match = REFERENCE_PATTERN.match(reference) if isinstance(reference, str) else None
            if match is None or match.group("base") or match.group("type") not in (*RESOURCE_TYPES, PROVENANCE):
                issues.append(_target_issue(i, "must be a relative reference (Type/id or Type/id/_history/n) to a "
                                               "resource of a type this server stores"))
                continue
            resource_type, version = match.group("type"), match.group("version")
            if isinstance(target, dict) and target.get("type") not in (None, resource_type):
                issues.append(_target_issue(i, f"has type '{str(target['type'])[:64]}' but references a "
                                               f"{resource_type}"))
                continue
            wanted[resource_type].append((i, match.group("id"), int(version) if version else None))
        for resource_type, refs in wanted.items():
            ids = sorted({resource_id for _, resource_id, _ in refs})
            latest = self._latest_versions(tenant, resource_type, ids, within)
            for i, resource_id, version in refs:
                current = latest.get(resource_id)
                if current is None:
                    issues.append(_target_issue(i, f"{resource_type}/{resource_id} does not exist", "not-found"))
                elif version is not None and not 1 <= version <= current:
                    problem = f"{resource_type}/{resource_id} has no version {version}"
                    issues.append(_target_issue(i, problem, "not-found"))
        if issues:
            raise Unprocessable("A Provenance must target existing resources of this tenant ("
                                + "; ".join(i.diagnostics for i in issues[:5]) + ")", issues)

    def _latest_versions(
        self, tenant: str, resource_type: str, ids: list[str], within: str | None = None,
    ) -> dict[str, int]:
        """id -> current version number of each live resource (in `within`'s compartment, when given).
        Versions are contiguous from 1 (the write path guarantees it; `esus verify` checks it), so
        `1 <= n <= current` names an existing version."""
        if resource_type == PROVENANCE:
            return {record["id"]: int(record["meta"]["versionId"]) for record in self._store.provenances(tenant, ids)
                    if within is None or in_compartment(within, PROVENANCE, record)}
        return {v.resource_id: v.version for v in self._store.currents(tenant, resource_type, ids)
                if not v.deleted and v.resource is not None
                and (within is None or in_compartment(within, resource_type, v.resource))}

    def read(self, tenant: str, provenance_id: str, *, within: str | None) -> dict[str, Any]:
        """`within`: a patient-confined caller sees only Provenance of its compartment (others: 404)."""
        require_id(provenance_id)
        found = self._store.provenances(tenant, [provenance_id])
        if not found or (within is not None and not in_compartment(within, PROVENANCE, found[0])):
            raise NotFound(f"Unknown Provenance resource '{provenance_id}'")
        return found[0]

    def vread(self, tenant: str, provenance_id: str, vid: str, *, within: str | None) -> dict[str, Any]:
        record = self.read(tenant, provenance_id, within=within)
        if vid != record["meta"]["versionId"]:
            raise NotFound(f"Provenance/{provenance_id} has no version '{vid[:20]}' (Provenance is immutable)")
        return record


def _target_issue(index: int, problem: str, code: str = "invalid") -> Issue:
    return Issue(code, f"Provenance.target[{index}] {problem}", f"Provenance.target[{index}]")
