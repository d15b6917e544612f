"""The searchset answer shared by type search and compartment search: the search, its _include/_revinclude,
and the Bundle with links that repeat what was applied."""

from __future__ import annotations

from aws_lambda_powertools.event_handler import Response

from esus.domain.includes import IncludeService, parse_includes, split_includes
from esus.domain.search import SearchService
from esus.http.api import FhirRequest, page_response
from esus.http.bundle_render import searchset_bundle


def search_response(
    request: FhirRequest, search: SearchService, includes: IncludeService, resource_type: str,
    compartment: str | None = None,
) -> Response[str]:
    """`compartment`: a Patient id (GET /fhir/Patient/{id}/{type}): only that patient's compartment."""
    principal = request.authorize(resource_type, "search-type")
    params, include_params = split_includes(request.search_params())
    wanted = parse_includes(include_params, [resource_type])
    page = search.search(principal, resource_type, params, request.lenient, compartment)
    included = includes.included(principal, page.resources, wanted) if wanted else []
    shown = dict(page.applied if page.applied is not None else params)  # what was applied, not what was sent
    shown.update(include_params)
    if params.get("_cursor"):
        shown["_cursor"] = params["_cursor"]
    path = f"Patient/{compartment}/{resource_type}" if compartment is not None else None
    bundle = searchset_bundle(
        request.base_url, resource_type, shown, page.resources, page.total, page.next_cursor, page.last_cursor,
        page.previous_cursor, included, path,
    )
    return page_response(bundle)  # a 400 naming a _count that fits when large versions overflow a response
