"""Domain rules: resources and versions, conditional interactions, Bundles, search, Provenance, FHIR model."""
