"""Generators of committed tables and template.yaml's per-function block (each with an is-current test)."""

import sys
from pathlib import Path


def write_or_check(target: Path, text: str, module: str, check: bool) -> bool:
    """Write a generated file, or with `check` only say whether the committed one is current (False: stale)."""
    if check:
        if (target.read_text(encoding="utf-8") if target.exists() else "") != text:
            print(f"{target} is not current: run python -m {module}", file=sys.stderr)
            return False
        return True
    target.write_text(text, encoding="utf-8")
    return True
