"""ESUS developer tooling: the local stack (template-driven, embedded moto) and the `esus` CLI."""
