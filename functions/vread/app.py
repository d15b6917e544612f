"""GET /fhir/{type}/{id}/_history/{vid}: one exact version (410 for a delete version); a Binary as its
raw content when Accept asks for it (esus.http.binary)."""

from typing import Any

from esus.container import services
from esus.domain.fhir import PROVENANCE
from esus.http.api import FhirRequest, Response, create_app, lambda_entry, provenance_version, resource_response
from esus.http.binary import read_response

app = create_app()


@app.get("/fhir/<resource_type>/<resource_id>/_history/<vid>")
def vread(resource_type: str, resource_id: str, vid: str) -> Response[Any]:
    request = FhirRequest(app)
    principal = request.authorize(resource_type, "vread")
    within = principal.confinement(resource_type, "vread")  # a patient-scoped token: its compartment only
    if resource_type == PROVENANCE:
        record = services().provenance.vread(principal.tenant, resource_id, vid, within=within)
        return resource_response(provenance_version(record))
    version = services().resources.vread(principal.tenant, resource_type, resource_id, vid, within=within)
    return read_response(request, version)  # a Binary may answer with its raw content (Accept)


handler = lambda_entry(app)
