"""Value parsers shared by the command line (:mod:`sgl_qwen1m.cli`): ``type=`` functions for ``argparse``.

Each raises ``argparse.ArgumentTypeError`` naming the bad value, which argparse turns into a usage error (exit 2)::

    lengths("131072,256K,1M")       -> [131072, 262144, 1048576]   (K = 1024, M = 1024**2; sorted, unique)
    length_or_zero("256K")          -> 262144; "0" -> 0 (none)
    positive_floats("1,4,8.5")      -> [1.0, 4.0, 8.5]
    key_value("disable_cuda_graph=true") -> ("disable_cuda_graph", True)   (JSON value, else the string)
    positive_int("8") -> 8;  positive_float("79.1") -> 79.1;  unit_fraction("0.7") -> 0.7   (in (0, 1))

A verb's handler raises :class:`CommandError` for what only shows when it runs (an unreachable server, a model
directory without ``config.json``): :func:`sgl_qwen1m.cli.main` prints it as ``<prog> <verb>: error: <message>``
and exits with its ``exit_code`` (1), no traceback.

Imports nothing from the rest of the package.
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

__all__ = [
    "lengths",
    "length_or_zero",
    "positive_floats",
    "key_value",
    "positive_int",
    "positive_float",
    "unit_fraction",
    "CommandError",
]


class CommandError(Exception):
    """A clear, user-facing failure of a verb (printed without a traceback); ``exit_code`` 1 unless given."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _checked(text: str, convert, ok, syntax: str, value_error: str):
    """``convert(text)`` if it parses (else ``"<syntax>, got <text>"``) and passes ``ok`` (else
    ``"<value_error>, got <text>"``), both as ``argparse.ArgumentTypeError``."""
    try:
        value = convert(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{syntax}, got {text!r}") from None
    if not ok(value):
        raise argparse.ArgumentTypeError(f"{value_error}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """An integer > 0 (``"8"``; not ``"0"``, ``"-1"``, ``"1.5"``)."""
    return _checked(text, int, lambda v: v > 0, "expected an integer > 0", "expected an integer > 0")


def positive_float(text: str) -> float:
    """A finite number > 0."""
    return _checked(
        text, float, lambda v: math.isfinite(v) and v > 0, "expected a number > 0", "expected a finite number > 0"
    )


def unit_fraction(text: str) -> float:
    """A fraction strictly between 0 and 1 (``--mem-fraction-static``)."""
    return _checked(
        text,
        float,
        lambda v: 0.0 < v < 1.0,
        "expected a fraction in (0, 1)",
        "expected a fraction in (0, 1) (share of GPU memory)",
    )


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


def lengths_or_none(text: str) -> list[int]:
    """Lengths as in :func:`lengths`, or ``[]`` for ``"0"`` / ``""`` ("none")."""
    return lengths(text) if text.strip() not in ("0", "") else []


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
