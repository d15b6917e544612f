"""Generators of committed tables and template.yaml's per-function block (each with an is-current test)."""
