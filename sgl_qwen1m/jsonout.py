"""Compact, readable JSON for committed files (the tracked tree has a size budget).

:func:`dumps` puts every object or list that fits in ``width`` characters on one line (so a results file has one
row per line) and indents the rest by one space per level. ``json.loads(dumps(x)) == x`` for any JSON value.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps"]


def dumps(obj: Any, indent: int = 0, width: int = 200) -> str:
    """``obj`` as JSON text (no trailing newline); see the module docstring."""
    flat = json.dumps(obj, separators=(",", ":"))
    if not isinstance(obj, (dict, list)) or len(flat) + indent <= width or not obj:
        return flat
    pad = " " * (indent + 1)
    if isinstance(obj, dict):
        items = [f"{pad}{json.dumps(k)}: {dumps(v, indent + 1, width)}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    items = [pad + dumps(v, indent + 1, width) for v in obj]
    return "[\n" + ",\n".join(items) + "\n" + " " * indent + "]"
