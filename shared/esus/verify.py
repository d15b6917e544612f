"""Integrity checker (`esus verify`): proves, across all tables, the invariants every write keeps.

- every current item has history items for versions 1..v, contiguous, the last equal to it;
- every version has exactly one Provenance whose target is that version;
- every index item a current version owns exists, and every hashed index item belongs to a live version;
- every history item is in the tenant's change log (type and system level);
- every sealed element decrypts (tag, key version and AAD all check).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from esus.container import Services
from esus.errors import IntegrityFailure
from esus.model import IndexEntry
from esus.store import ALL_TYPES, change_log_partition


@dataclass
class VerifyReport:
    resources: int = 0
    versions: int = 0
    provenances: int = 0
    index_items: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify_all(services: Services, tenant: str | None = None) -> VerifyReport:
    """All tenants, or only `tenant`'s items (every key begins with the tenant)."""
    settings, store = services.settings, services.store
    report = VerifyReport()

    def mine(items: Any) -> list[dict[str, Any]]:
        return [i for i in items if tenant is None or str(i["pk"]).startswith(f"{tenant}|")]

    index_items = mine(store.scan(settings.index_table))
    report.index_items = len(index_items)
    index_keys = {(str(i["pk"]), str(i["sk"])) for i in index_items}

    history: dict[str, dict[int, dict[str, Any]]] = defaultdict(dict)
    for item in mine(store.scan(settings.history_table)):
        history[str(item["pk"])][int(item["v"])] = item
        report.versions += 1

    targets: Counter[str] = Counter()
    for item in mine(store.scan(settings.provenance_table)):
        report.provenances += 1
        tenant = str(item["pk"]).split("|", 1)[0]
        try:
            record = store.decode_provenance(tenant, item)
        except IntegrityFailure as exc:
            report.problems.append(f"{item['pk']}: {exc}")
            continue
        for target in record.get("target", []):
            targets[f"{tenant}|{target.get('reference')}"] += 1

    owned_refs: set[str] = set()
    for item in mine(store.scan(settings.resources_table)):
        report.resources += 1
        key = str(item["pk"])
        tenant, resource_type, resource_id = key.split("|", 2)
        current = int(item["v"])
        versions = history.get(key, {})
        if sorted(versions) != list(range(1, current + 1)):
            report.problems.append(f"{key}: history versions {sorted(versions)} are not 1..{current}")
        for number, version_item in versions.items():
            try:
                store.decode_version(tenant, resource_type, resource_id, version_item)
            except IntegrityFailure as exc:
                report.problems.append(f"{key} v{number}: {exc}")
                continue
            count = targets[f"{tenant}|{resource_type}/{resource_id}/_history/{number}"]
            if count != 1:
                report.problems.append(f"{key} v{number}: {count} Provenance records (expected 1)")
            sort = f"{version_item['lu']}|{resource_type}|{resource_id}|{number:012d}"
            for level in (ALL_TYPES, resource_type):
                if (change_log_partition(tenant, level), sort) not in index_keys:
                    report.problems.append(f"{key} v{number}: missing from the {level} change log")
        if current in versions and _content(versions[current]) != _content(item):
            report.problems.append(f"{key}: current item differs from history v{current}")
        for ref in item.get("idx") or ():
            owned_refs.add(str(ref))
            entry = IndexEntry.from_ref(str(ref))
            if (entry.partition, entry.sort) not in index_keys:
                report.problems.append(f"{key}: index item {entry.partition} is missing")

    for item in index_items:
        partition = str(item["pk"])
        parts = partition.split("|")
        hashed = len(parts) == 4 and parts[2] in ("phone", "email", "telecom", "identifier")
        if hashed and f"{partition}\n{item['sk']}" not in owned_refs:
            report.problems.append(f"index item {partition} / {item['sk']} belongs to no live version")
    return report


def _content(item: dict[str, Any]) -> tuple[Any, ...]:
    return item.get("v"), item.get("del"), item.get("lu"), item.get("doc")
