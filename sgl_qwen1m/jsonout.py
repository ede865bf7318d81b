"""Compact, readable JSON for committed files (the tracked tree has a size budget).

:func:`dumps` puts every object or list that fits in ``width`` characters on one line (so a results file has one
row per line) and indents the rest by one space per level. ``json.loads(dumps(x)) == x`` for any JSON value.
:func:`write` and :func:`load` put that text in a file, gzip-compressed when the name ends in ``.gz`` (fixed
mtime: the same object gives the same bytes).

``python -m sgl_qwen1m.jsonout round FILE --digits 7 [--metric perplexity]`` rounds the floats of a results file's
rows (of one metric, or all) to that many significant digits in place and says so in the file's ``rounded`` field:
measured values carry far fewer real digits than the 17 that ``repr`` writes, and the tree has a size budget.

``python -m sgl_qwen1m.jsonout reflow FILE... --width 1000`` rewrites JSON files (gzipped or not) through
:func:`dumps` with that line width: a results row of up to ``width`` characters stays on one line instead of one line
per field. The values are unchanged (checked before writing).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = ["dumps", "write", "load", "round_floats", "main"]


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


def round_floats(obj: Any, digits: int) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits (ints, strings, bools untouched)."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [round_floats(v, digits) for v in obj]
    return obj


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``round FILE --digits N [--metric M]`` or ``reflow FILE... --width N`` (module docstring)."""
    import argparse
    import shlex

    ap = argparse.ArgumentParser(prog="python -m sgl_qwen1m.jsonout")
    sub = ap.add_subparsers(dest="verb", required=True)
    r = sub.add_parser("round", help="round the floats of a results file's rows in place")
    r.add_argument("file")
    r.add_argument("--digits", type=int, required=True, help="significant digits kept (4 to 15)")
    r.add_argument("--metric", default=None, help="only rows of this metric (default: every row)")
    f = sub.add_parser("reflow", help="rewrite JSON files with one line per object of up to --width characters")
    f.add_argument("files", nargs="+")
    f.add_argument("--width", type=int, default=1000, help="longest one-line object or list (80 to 10000)")
    ns = ap.parse_args(argv)
    if ns.verb == "reflow":
        return _reflow(ap, ns.files, ns.width)
    if not 4 <= ns.digits <= 15:
        ap.error(f"--digits {ns.digits}: choose 4 to 15")
    doc = load(ns.file)
    if not isinstance(doc, dict) or not isinstance(doc.get("rows"), list):
        ap.error(f"{ns.file} is not a results file (no rows list)")
    n = 0
    for i, row in enumerate(doc["rows"]):
        if ns.metric is None or row.get("metric") == ns.metric:
            doc["rows"][i] = round_floats(row, ns.digits)
            n += 1
    cmd = "python -m sgl_qwen1m.jsonout " + shlex.join(list(argv) if argv is not None else sys.argv[1:])
    doc["rounded"] = f"floats of {n} rows{' (' + ns.metric + ')' if ns.metric else ''} rounded to {ns.digits} " \
                     f"significant digits by `{cmd}`"
    before = Path(ns.file).stat().st_size
    write(ns.file, doc)
    print(f"{ns.file}: {n} rows rounded to {ns.digits} digits, {before} -> {Path(ns.file).stat().st_size} bytes")
    return 0


def _reflow(ap: Any, files: Sequence[str], width: int) -> int:
    """Rewrite each file through :func:`dumps` at ``width``; the parsed value must come back equal."""
    if not 80 <= width <= 10000:
        ap.error(f"--width {width}: choose 80 to 10000")
    for name in files:
        doc = load(name)
        if json.loads(dumps(doc, width=width)) != doc:  # pragma: no cover - dumps round-trips by construction
            ap.error(f"{name}: reflowed text parses to a different value; file left as it was")
        before = Path(name).stat().st_size
        write(name, doc, width=width)
        print(f"{name}: {before} -> {Path(name).stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
