"""Conditional create, update and delete (FHIR R4 http.html): the target is chosen by a search."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

from esus.domain.resources import LOCK_ATTEMPTS, ResourceService, WriteOutcome
from esus.domain.search import SearchService
from esus.errors import Conflict, InvalidRequest, PreconditionFailed
from esus.model import Version
from esus.security.auth import CREATE, SEARCH, Principal
from esus.security.crypto import BlindIndex
from esus.storage.errors import Locked, VersionConflict
from esus.storage.store import Store, index_partition

GUARD_PARAM = "_conditional-create"


@dataclass(frozen=True)
class CreateCondition:
    """What an If-None-Exist found: the existing resource, or the guard a create must write."""

    existing: Version | None
    guard: tuple[str, str | None]


class ConditionalService:
    def __init__(self, resources: ResourceService, search: SearchService, store: Store, blind: BlindIndex) -> None:
        self._resources = resources
        self._search = search
        self._store = store
        self._blind = blind

    def _matches(
        self, tenant: str, resource_type: str, params: dict[str, list[str]], owner: str | None = None,
        within: str | None = None,
    ) -> list[str]:
        """`within`: a patient-confined caller's search sees only that patient's compartment."""
        if not [k for k in params if not k.startswith("_") or k == "_id"]:
            raise InvalidRequest("A conditional interaction needs search criteria")
        ids = self._search.matching_ids(tenant, resource_type, params, within)
        # The guard's owner may have committed while its search index items were still being written
        # (they go beside its transaction when they do not fit in it): check it directly.
        if owner is not None and owner not in ids and self._search.current_matches(tenant, resource_type, owner,
                                                                                     params, within):
            ids = sorted({*ids, owner})
        if len(ids) > 1:
            raise PreconditionFailed(f"The search matches {len(ids)} {resource_type} resources; it must match one")
        return ids

    def match_ids(self, tenant: str, resource_type: str, params: dict[str, list[str]]) -> list[str]:
        """The ids a conditional update/delete URL selects: at most one (more is a 412)."""
        return self._matches(tenant, resource_type, params)

    def resolve_reference(
        self, tenant: str, reference: str, entries: list[tuple[str, str, dict[str, Any]]], where: str,
    ) -> str:
        """A conditional reference (`Organization?identifier=...`) in a transaction: the one resource that
        matches, among the stored ones and this Bundle's entries ((type, id, new content)) together."""
        resource_type, _, query = reference.partition("?")
        params = parse_qs(query, keep_blank_values=True)
        try:
            stored = set(self._search.matching_ids(tenant, resource_type, params))
        except InvalidRequest as exc:
            raise InvalidRequest(f"{where}: the conditional reference '{reference[:200]}' is not a valid search: "
                                 f"{exc.diagnostics}") from None
        in_bundle = {i for t, i, content in entries if t == resource_type
                     and self._search.resource_matches(resource_type, params, content)}
        found = sorted(stored | in_bundle)
        if len(found) != 1:
            what = "no resource" if not found else f"{len(found)} resources"
            raise PreconditionFailed(f"{where}: the conditional reference '{reference[:200]}' matches {what}; it "
                                     "must match exactly one")
        return f"{resource_type}/{found[0]}"

    def create(
        self, principal: Principal, resource_type: str, body: Any, if_none_exist: str,
        x_provenance: dict[str, Any] | None,
    ) -> tuple[Version, bool]:
        """If-None-Exist: 0 matches -> create (201), 1 -> the existing resource (200), >1 -> 412.
        A guard item keyed by the normalised search is written in the create's transaction, so two
        concurrent conditional creates make exactly one resource."""
        within = principal.confined_to(resource_type, SEARCH)
        for _ in range(5):
            found = self.matches_for_transaction(principal.tenant, resource_type, if_none_exist, within)
            if found.existing is not None:
                return found.existing, False
            try:
                return self._resources.create(principal, resource_type, body, x_provenance, found.guard), True
            except VersionConflict:
                continue  # a concurrent conditional create won: its resource now matches
        raise Conflict("Concurrent conditional creates did not settle; retry", headers={"Retry-After": "1"})

    def matches_for_transaction(
        self, tenant: str, resource_type: str, if_none_exist: str, within: str | None = None,
    ) -> CreateCondition:
        """`within`: the caller's search is confined to that patient's compartment, and so is its guard."""
        params = parse_qs(if_none_exist.lstrip("?"), keep_blank_values=True)
        canonical = self._search.canonical_query(resource_type, params, within)
        token = self._blind.token(tenant, GUARD_PARAM, canonical)
        partition = index_partition(tenant, resource_type, GUARD_PARAM, token)
        # Guard first, then search: a committed owner's index items are visible to the search, so an
        # owner that no longer matches (deleted or changed) is the only one that may be taken over.
        owner = self._guard_owner(partition)
        ids = self._matches(tenant, resource_type, params, owner, within)
        existing = self._resources.read(tenant, resource_type, ids[0], within=within) if ids else None
        return CreateCondition(existing, (partition, owner))

    def _guard_owner(self, partition: str) -> str | None:
        """A guard a large transaction holds is decided once it is settled (docs/TRANSACTIONS.md)."""
        attempt = 0
        while True:
            try:
                return self._store.guard_owner(partition)
            except Locked as locked:
                if attempt >= LOCK_ATTEMPTS:
                    raise
                self._resources.settle(locked, attempt)
                attempt += 1

    def update(
        self, principal: Principal, resource_type: str, params: dict[str, list[str]], body: Any,
        if_match: int | None, x_provenance: dict[str, Any] | None,
    ) -> WriteOutcome:
        """0 matches -> create (the body's id if it has one), 1 -> update it, >1 -> 412."""
        ids = self._matches(principal.tenant, resource_type, params, within=principal.confined_to(resource_type,
                                                                                                   SEARCH))
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object holding a FHIR resource")
        if ids:
            if "id" in body and body["id"] != ids[0]:
                raise InvalidRequest("The body's id does not match the resource the search found")
            return self._resources.update(principal, resource_type, ids[0], {**body, "id": ids[0]}, if_match,
                                          x_provenance)
        if if_match is not None:
            raise PreconditionFailed("If-Match was given but no resource matches the search")
        if "id" in body:  # R5 http.html: an id that exists but did not match -> 409, never updated
            version = self._resources.create_with_id(principal, resource_type, str(body["id"]), body, x_provenance)
            return WriteOutcome(version, created=True)
        principal.require(resource_type, CREATE)
        return WriteOutcome(self._resources.create(principal, resource_type, body, x_provenance), created=True)

    def delete(
        self, principal: Principal, resource_type: str, params: dict[str, list[str]],
        x_provenance: dict[str, Any] | None,
    ) -> Version | None:
        ids = self._matches(principal.tenant, resource_type, params, within=principal.confined_to(resource_type,
                                                                                                   SEARCH))
        if not ids:
            return None
        return self._resources.delete(principal, resource_type, ids[0], None, x_provenance)
