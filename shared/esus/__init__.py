"""ESUS: the code every Lambda function shares (deployed as the layer)."""

from esus.coldstart import pause_for_init

pause_for_init()  # a function's first esus import: no collector passes over what its init builds (esus.coldstart)
