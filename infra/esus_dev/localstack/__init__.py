"""The local stack: API Gateway + Lambda + moto driven by template.yaml, dev keys, state files."""
