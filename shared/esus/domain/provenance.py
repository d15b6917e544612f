"""Provenance: the server-authored chain-of-custody record of every write, client X-Provenance
headers, US Core 3.1.1 rules, and the index entries that make Provenance searchable.

What a client sends (X-Provenance, POST /Provenance) is a claim: it is kept, but the server always adds
its own facts, so no record can hide who really wrote it or when: `recorded` is the server's time (a
client's own `recorded` moves to `occurredDateTime`), and an `enterer` agent for the token's identity
is appended. Clients may not claim the `enterer` role themselves: every enterer is server-attested."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from esus.domain.fhir import PROVENANCE, validate_resource
from esus.domain.search_legacy import provenance_index_values
from esus.errors import InvalidRequest, Issue
from esus.limits import parse_json
from esus.model import IndexEntry, Version
from esus.security.auth import Principal, reference_resource_type
from esus.settings import Settings
from esus.storage.store import index_partition
from esus.storage.write_plan import unique_entries

DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
ACTIVITY_BY_METHOD = {"POST": "CREATE", "PUT": "UPDATE", "DELETE": "DELETE"}
MAX_HEADER_BYTES = 16_384
ENTERER = {"system": PARTICIPANT_TYPE, "code": "enterer", "display": "Enterer"}
OCCURRED = ("occurredDateTime", "occurredPeriod")


def server_provenance(settings: Settings, principal: Principal, version: Version, activity: str) -> dict[str, Any]:
    """The record the server writes with every version unless the client sent X-Provenance."""
    return {
        "resourceType": PROVENANCE,
        "target": [target_of(version)],
        "recorded": version.last_updated,
        "policy": [settings.integrity_policy_url],
        "activity": {"coding": [{"system": DATA_OPERATION, "code": activity}]},
        "agent": [
            {
                "type": {"coding": [{"system": PARTICIPANT_TYPE, "code": "author", "display": "Author"}]},
                "who": principal.agent_reference,
                "onBehalfOf": tenant_organization(settings, principal),
            }
        ],
    }


def caller_agent(settings: Settings, principal: Principal) -> dict[str, Any]:
    """The authenticated caller, as the server attests it (appended to every client-sent Provenance)."""
    return {"type": {"coding": [dict(ENTERER)]}, "who": principal.agent_reference,
            "onBehalfOf": tenant_organization(settings, principal)}


def attributed(client: dict[str, Any], settings: Settings, principal: Principal, recorded: str) -> dict[str, Any]:
    """A client's Provenance as stored: its claims kept, `recorded` the server's time (the client's own
    `recorded` kept as `occurredDateTime` unless it set occurred[x]) and the caller appended as enterer."""
    record = {k: v for k, v in client.items() if k not in ("id", "meta", "recorded")}
    claimed = client.get("recorded")
    if claimed is not None and not any(k in client for k in OCCURRED):
        record["occurredDateTime"] = claimed
    record["recorded"] = recorded
    record["agent"] = [*client["agent"], caller_agent(settings, principal)]
    return record


def check_client_claims(provenance: dict[str, Any]) -> None:
    """Before attribution: the client names at least one agent of its own, and none as `enterer`."""
    agents = provenance.get("agent")
    if not isinstance(agents, list) or not agents:
        raise InvalidRequest("The Provenance does not meet US Core 3.1.1 (Provenance.agent is required (1..*))",
                             [Issue("required", "Provenance.agent is required (1..*)", "Provenance.agent")])
    issues = [
        Issue("invalid", "the enterer agent is recorded by the server (the authenticated caller); "
                         "clients cannot claim it", f"Provenance.agent[{i}].type")
        for i, agent in enumerate(agents) if _claims_enterer(agent)
    ]
    if issues:
        raise InvalidRequest("Provenance.agent must not claim the enterer role: the server records the "
                             "authenticated caller as enterer", issues)
    claimed = provenance.get("recorded")
    if claimed is not None:
        if not isinstance(claimed, str):
            raise InvalidRequest("Provenance.recorded must be a FHIR instant",
                                 [Issue("invalid", "not an instant", "Provenance.recorded")])
        recorded_key(claimed)  # a client's claimed time must still be an instant with a time zone


def _claims_enterer(agent: Any) -> bool:
    kind = agent.get("type") if isinstance(agent, dict) else None
    codings = kind.get("coding") if isinstance(kind, dict) else None
    return any(
        isinstance(c, dict) and c.get("code") == "enterer" and c.get("system") in (None, PARTICIPANT_TYPE)
        for c in (codings if isinstance(codings, list) else [])
    )


def target_of(version: Version) -> dict[str, Any]:
    return {"reference": version.versioned_reference, "type": version.resource_type}


def tenant_organization(settings: Settings, principal: Principal) -> dict[str, Any]:
    return {"reference": settings.tenant_organization_reference.format(tenant=principal.tenant), "type": "Organization"}


def parse_x_provenance(header: str | None) -> dict[str, Any] | None:
    """X-Provenance: a Provenance without target; the server fills target and recorded and adds the caller."""
    if header is None:
        return None
    if len(header.encode()) > MAX_HEADER_BYTES:
        raise InvalidRequest("X-Provenance is too large", [Issue("too-long", "X-Provenance is too large")])
    body = parse_json(header, "X-Provenance")
    if not isinstance(body, dict) or body.get("resourceType") != PROVENANCE:
        raise InvalidRequest("X-Provenance must be a JSON Provenance resource")
    if "target" in body:
        raise InvalidRequest(
            "X-Provenance must not carry a target: the server sets it to the version it writes",
            [Issue("invalid", "target is set by the server", "Provenance.target")],
        )
    # Checked now, before any read or write (the target is only known later).
    check_client_claims(body)
    finalize({**body, "target": [{"reference": "Basic/x-provenance-check"}],
              "recorded": body.get("recorded") or "1970-01-01T00:00:00Z"}, "x-provenance-check", "1970-01-01T00:00:00Z")
    return body


def client_provenance(
    template: dict[str, Any], version: Version, settings: Settings, principal: Principal
) -> dict[str, Any]:
    provenance = attributed(template, settings, principal, version.last_updated)
    provenance["target"] = [target_of(version)]
    return provenance


def finalize(provenance: dict[str, Any], provenance_id: str, last_updated: str) -> dict[str, Any]:
    """Assign server id and meta, then validate against FHIR R4 and US Core 3.1.1 rules (a record that holds
    a client's claims)."""
    record = _identified(provenance, provenance_id, last_updated)
    check_us_core(record)
    validate_resource(PROVENANCE, record)
    return record


def server_record(settings: Settings, principal: Principal, version: Version, activity: str,
                  provenance_id: str) -> dict[str, Any]:
    """server_provenance with its id and meta. It is valid FHIR R4 and US Core by construction (a property test
    holds it to the R4B model for any token), so it skips the model validation that would load the FHIR
    models on a delete's first request; only the strings it copies from the token are checked."""
    claim, value = ("fhirUser", principal.fhir_user) if principal.fhir_user else ("sub", principal.subject)
    if NOT_A_FHIR_STRING.fullmatch(value) or LONE_SURROGATE.search(value):
        raise InvalidRequest(f"The token's {claim} cannot be recorded as the Provenance agent: it is not a FHIR "
                             "string", [Issue("invalid", f"{claim} is not a FHIR string", "Provenance.agent.who")])
    return _identified(server_provenance(settings, principal, version, activity), provenance_id,
                       version.last_updated)


# What the R4B models reject as a FHIR `string`: they search for `[ \r\n\t\S]` (Rust regex: \s is Unicode
# White_Space, narrower than Python's), so only strings made of the other White_Space characters fail.
NOT_A_FHIR_STRING = re.compile("[\v\f\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]*")
LONE_SURROGATE = re.compile("[\ud800-\udfff]")  # not Unicode text: the models refuse it too


def _identified(provenance: dict[str, Any], provenance_id: str, last_updated: str) -> dict[str, Any]:
    record = {k: v for k, v in provenance.items() if k not in ("id", "meta")}
    return {"resourceType": PROVENANCE, "id": provenance_id,
            "meta": {"versionId": "1", "lastUpdated": last_updated}, **record}


def check_us_core(provenance: dict[str, Any]) -> None:
    issues: list[Issue] = []
    targets = provenance.get("target")
    if not isinstance(targets, list) or not targets:
        issues.append(Issue("required", "Provenance.target is required (1..*)", "Provenance.target"))
    if not provenance.get("recorded"):
        issues.append(Issue("required", "Provenance.recorded is required (1..1)", "Provenance.recorded"))
    agents = provenance.get("agent")
    if not isinstance(agents, list) or not agents:
        issues.append(Issue("required", "Provenance.agent is required (1..*)", "Provenance.agent"))
    else:
        for i, agent in enumerate(agents):
            who = agent.get("who") if isinstance(agent, dict) else None
            if not isinstance(who, dict) or not (who.get("reference") or who.get("identifier")):
                issues.append(Issue("required", "agent.who is required", f"Provenance.agent[{i}].who"))
                continue
            reference = str(who.get("reference") or "")
            who_type = who.get("type") or reference_resource_type(reference) or reference.split("/", 1)[0]
            if who_type in ("Practitioner", "Device") and not agent.get("onBehalfOf"):
                issues.append(Issue(
                    "required",
                    "agent.onBehalfOf is required when agent.who is a Practitioner or Device (US Core 3.1.1)",
                    f"Provenance.agent[{i}].onBehalfOf",
                ))
    if issues:
        raise InvalidRequest("The Provenance does not meet US Core 3.1.1 (" + "; ".join(
            i.diagnostics for i in issues) + ")", issues)


def recorded_key(recorded: str) -> str:
    """`recorded` as a sortable UTC string (clients may send offsets or lower precision)."""
    try:
        moment = datetime.fromisoformat(recorded.replace("Z", "+00:00"))
        utc = moment.astimezone(UTC) if moment.tzinfo is not None else None
    except (ValueError, OverflowError):  # OverflowError: 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise InvalidRequest("Provenance.recorded must be a FHIR instant",
                             [Issue("invalid", "not an instant", "Provenance.recorded")]) from None
    if utc is None:
        raise InvalidRequest("Provenance.recorded needs a time zone",
                             [Issue("invalid", "instant without time zone", "Provenance.recorded")])
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def index_entries(
    tenant: str, provenance: dict[str, Any], sort_key: str, token: Callable[[str, str], str]
) -> list[IndexEntry]:
    """The record's index items: `token(param, "Type/id")` is the key (a keyed HMAC token: a target,
    agent or entity may be a patient, and index keys never name one in clear)."""
    order = f"{sort_key}|{provenance['id']}"
    return unique_entries([
        IndexEntry(index_partition(tenant, PROVENANCE, param, token(param, value)), order, provenance["id"])
        for param, value in sorted(provenance_index_values(provenance))
    ])


def clear_reference(_param: str, reference: str) -> str:
    """How Provenance index keys were written before keyed tokens (the reference itself): only used to
    find and remove such items (`esus reencrypt`)."""
    return reference
