"""Bundle builders: history and searchset, with absolute links."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from esus.domain.fhir import now_instant
from esus.domain.params import last_value
from esus.http.api import outcome
from esus.model import Version

STATUS_TEXT = {200: "200 OK", 201: "201 Created", 204: "204 No Content"}


def history_bundle(base_url: str, self_url: str, versions: list[Version], next_url: str | None) -> dict[str, Any]:
    return _paged("history", self_url, next_url, [_history_entry(base_url, v) for v in versions])


def _paged(kind: str, self_url: str, next_url: str | None, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A Bundle page with absolute self and (when there is more) next links, and no total."""
    links = [{"relation": "self", "url": self_url}]
    if next_url:
        links.append({"relation": "next", "url": next_url})
    return {"resourceType": "Bundle", "type": kind, "timestamp": now_instant(), "link": links, "entry": entries}


def _history_entry(base_url: str, version: Version) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": f"{base_url}/{version.reference}"}
    if version.resource is not None:
        entry["resource"] = version.resource
    entry["request"] = {
        "method": version.method,
        "url": version.resource_type if version.method == "POST" else version.reference,
    }
    entry["response"] = {
        "status": STATUS_TEXT.get(version.status, str(version.status)),
        "etag": version.etag,
        "lastModified": version.last_updated,
    }
    return entry


def searchset_bundle(
    base_url: str, resource_type: str, self_params: dict[str, list[str]], resources: list[dict[str, Any]],
    total: int | None, next_cursor: str | None, last_cursor: str | None, previous_cursor: str | None = None,
    included: list[dict[str, Any]] | None = None, path: str | None = None,
) -> dict[str, Any]:
    """Links are GETs on the type endpoint (or `path`, e.g. Patient/1/Observation) with the parameters the
    search applied; the cursor travels in the query string. `total` is left out when it was not computed
    (_total=none). `included` (_include, _revinclude) follow the matches with search.mode=include."""
    params = {k: v for k, v in self_params.items() if k != "_cursor"}

    def link(cursor: str | None) -> str:
        query = dict(params)
        if cursor:
            query["_cursor"] = [cursor]
        encoded = urlencode(query, doseq=True)
        return f"{base_url}/{path or resource_type}" + (f"?{encoded}" if encoded else "")

    links = [
        {"relation": "self", "url": link(last_value(self_params.get("_cursor")))},
        {"relation": "first", "url": link(None)},
    ]
    if previous_cursor:
        links.append({"relation": "previous", "url": link(previous_cursor)})
    if next_cursor:
        links.append({"relation": "next", "url": link(next_cursor)})
    if total:
        links.append({"relation": "last", "url": link(last_cursor)})
    return {
        "resourceType": "Bundle",
        "type": "searchset",
        "timestamp": now_instant(),
        **({"total": total} if total is not None else {}),
        "link": links,
        "entry": search_entries(base_url, resources, "match") + search_entries(base_url, included or [], "include"),
    }


def page_bundle(
    base_url: str, self_url: str, next_url: str | None, resources: list[dict[str, Any]],
    included: list[dict[str, Any]],
) -> dict[str, Any]:
    """A searchset page of an operation ($everything): absolute self and next links, no total."""
    return _paged("searchset", self_url, next_url,
                  search_entries(base_url, resources, "match") + search_entries(base_url, included, "include"))


def search_entries(base_url: str, resources: list[dict[str, Any]], mode: str) -> list[dict[str, Any]]:
    return [{"fullUrl": f"{base_url}/{r['resourceType']}/{r['id']}", "resource": r, "search": {"mode": mode}}
            for r in resources]


def response_bundle(kind: str, results: list[Any], with_resources: bool) -> dict[str, Any]:
    """transaction-response / batch-response: per entry status, location, etag (or the OperationOutcome)."""
    entries = []
    for result in results:
        response: dict[str, Any] = {"status": STATUS_TEXT.get(result.status, str(result.status))}
        version = result.version
        if version is not None:
            response.update({"location": version.versioned_reference, "etag": version.etag,
                             "lastModified": version.last_updated})
        if result.outcome is not None:
            response["outcome"] = outcome(result.outcome.issues)
        entry: dict[str, Any] = {"response": response}
        if with_resources and version is not None and version.resource is not None:
            entry = {"fullUrl": version.reference, "resource": version.resource, **entry}
        entries.append(entry)
    return {"resourceType": "Bundle", "type": kind, "timestamp": now_instant(), "entry": entries}
