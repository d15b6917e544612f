"""ESUS: the code every Lambda function shares (deployed as the layer)."""
