"""Value parsers shared by the command line (:mod:`sgl_qwen1m.cli`): ``type=`` functions for ``argparse``.

Each raises ``argparse.ArgumentTypeError`` naming the bad value, which argparse turns into a usage error (exit 2)::

    lengths("131072,256K,1M")       -> [131072, 262144, 1048576]   (K = 1024, M = 1024**2; sorted, unique)
    length_or_zero("256K")          -> 262144; "0" -> 0 (none)
    positive_floats("1,4,8.5")      -> [1.0, 4.0, 8.5]
    key_value("disable_cuda_graph=true") -> ("disable_cuda_graph", True)   (JSON value, else the string)

Imports nothing from the rest of the package.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

__all__ = ["lengths", "length_or_zero", "positive_floats", "key_value"]


def _length(raw: str) -> int:
    tok = raw.strip().upper()
    mult = 1
    if tok and tok[-1] in "KM":
        mult, tok = (1024 if tok[-1] == "K" else 1024 * 1024), tok[:-1]
    try:
        value = float(tok)
        if not math.isfinite(value):
            raise ValueError
        value = int(value * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad length {raw.strip()!r} (use e.g. 131072, 128K, 1M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"length must be > 0, got {raw.strip()!r}")
    return value


def lengths(text: str) -> list[int]:
    """``"131072,256K,1M"`` -> ``[131072, 262144, 1048576]`` (K = 1024, M = 1024**2), sorted, unique, each > 0."""
    out = {_length(raw) for raw in text.split(",") if raw.strip()}
    if not out:
        raise argparse.ArgumentTypeError("no length given")
    return sorted(out)


def length_or_zero(text: str) -> int:
    """One length as in :func:`lengths` (the smallest if several are given), or ``0`` for "none"."""
    return lengths(text)[0] if text.strip() not in ("0", "") else 0


def positive_floats(text: str) -> list[float]:
    """``"1,4,8.5"`` -> ``[1.0, 4.0, 8.5]`` in the given order; every value finite and > 0."""
    out = []
    for raw in text.split(","):
        if not raw.strip():
            continue
        try:
            value = float(raw)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad number {raw.strip()!r} (use e.g. 1,4,8)") from None
        if not (math.isfinite(value) and value > 0):
            raise argparse.ArgumentTypeError(f"value must be a finite number > 0, got {raw.strip()!r}")
        out.append(value)
    if not out:
        raise argparse.ArgumentTypeError("no value given")
    return out


def key_value(text: str) -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(key, value)``: dashes in the key become underscores, the value is JSON if it parses
    (``true``, ``8192``, ``{"a": 1}``) and the plain string otherwise. Collect with ``action="append"``, then
    ``dict(...)``."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key = key.replace("-", "_")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value
