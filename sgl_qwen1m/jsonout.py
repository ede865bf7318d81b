"""Compact, readable JSON for committed files (the tracked tree has a size budget).

:func:`dumps` puts every object or list that fits in ``width`` characters on one line (so a results file has one
row per line) and indents the rest by one space per level. ``json.loads(dumps(x)) == x`` for any JSON value.
:func:`write` and :func:`load` put that text in a file, gzip-compressed when the name ends in ``.gz`` (fixed
mtime: the same object gives the same bytes).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any, Union

__all__ = ["dumps", "write", "load"]


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


def write(path: Union[str, Path], obj: Any, width: int = 200) -> Path:
    """``dumps(obj, width=width)`` and a newline into ``path`` (gzip if it ends in ``.gz``; parents created)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    text = (dumps(obj, width=width) + "\n").encode()
    p.write_bytes(gzip.compress(text, mtime=0) if p.suffix == ".gz" else text)
    return p


def load(path: Union[str, Path]) -> Any:
    """The JSON value in ``path`` (gunzipped if it ends in ``.gz``)."""
    raw = Path(path).read_bytes()
    return json.loads(gzip.decompress(raw) if str(path).endswith(".gz") else raw)
