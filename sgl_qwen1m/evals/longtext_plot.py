"""``python -m sgl_qwen1m eval longtext-plot FILE.json [FILE.json ...] --out PNG``: one figure of ``eval longtext``
results, one line per backend: perplexity of the whole sequence (positions ``0..L``) against the length multiple,
with the in-length perplexity (1x) as a dashed line, and code-retrieval accuracy against the multiple.
Reads the rows only; draws nothing that is not in them. Needs matplotlib.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence, Union

__all__ = ["whole_sequence_rows", "plot_longtext", "register"]


def whole_sequence_rows(rows: Sequence[dict[str, Any]]) -> dict[str, dict[float, float]]:
    """``{backend: {multiple: perplexity}}`` of the rows that cover a whole sequence (``position_start`` 0 and the
    widest ``position_end`` of their multiple)."""
    widest: dict[tuple[str, float], dict[str, Any]] = {}
    for r in rows:
        if r.get("metric") != "perplexity" or r.get("position_start", 0) != 0 or r.get("value") is None:
            continue
        key = (r["backend"], float(r["length_multiple"]))
        if key not in widest or r.get("position_end", 0) > widest[key].get("position_end", 0):
            widest[key] = r
    out: dict[str, dict[float, float]] = {}
    for (backend, m), r in sorted(widest.items()):
        out.setdefault(backend, {})[m] = float(r["value"])
    return out


def plot_longtext(paths: Sequence[Union[str, Path]], out: Union[str, Path]) -> Path:
    """The figure described in the module docstring, from every results file in ``paths``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sgl_qwen1m.figures import save_png

    rows: list[dict[str, Any]] = []
    gpu = ""
    for p in paths:
        d = json.loads(Path(p).read_text())
        rows += d["rows"]
        gpu = gpu or str(d.get("gpu", "")).split(",")[0]
    model = next((str(r["model"]) for r in rows if r.get("model")), "")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ppl = whole_sequence_rows(rows)
    for i, (backend, by_m) in enumerate(ppl.items()):
        ms = sorted(by_m)
        a1.plot(ms, [by_m[m] for m in ms], marker="o", ms=3, color=f"C{i}", label=backend)
        if 1.0 in by_m:
            a1.axhline(by_m[1.0], color=f"C{i}", lw=0.6, ls="--")
    a1.set(xscale="log", yscale="log", xlabel="prompt length / training length",
           ylabel="perplexity of the whole sequence")
    a1.set_xticks([m for m in sorted({m for b in ppl.values() for m in b})])
    a1.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    a1.legend(fontsize=7)
    acc: dict[str, dict[float, float]] = {}
    for r in rows:
        if r.get("metric") == "accuracy" and r.get("value") is not None:
            acc.setdefault(r["backend"], {})[float(r["length_multiple"])] = float(r["value"])
    for i, backend in enumerate(ppl):
        if backend in acc:
            ms = sorted(acc[backend])
            a2.plot(ms, [acc[backend][m] for m in ms], marker="o", ms=3, color=f"C{i}", label=backend)
    a2.set(xscale="log", xlabel="prompt length / training length", ylabel="code retrieval accuracy", ylim=(-0.02, 1.02))
    a2.set_xticks(a1.get_xticks())
    a2.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    fig.suptitle(f"{model}: long-context evaluation" + (f" ({gpu})" if gpu else ""), fontsize=10)
    fig.tight_layout()
    return save_png(fig, out)


def register(sub: Any) -> None:
    """Add ``longtext-plot`` under ``eval``'s subparsers."""
    p = sub.add_parser("longtext-plot", help="plot eval longtext results (perplexity and retrieval vs length)")
    p.add_argument("json", nargs="+", help="results files of eval longtext")
    p.add_argument("--out", required=True, help="PNG path")
    p.set_defaults(handler=_run)


def _run(args: Any, argv: list[str]) -> int:
    path = plot_longtext(args.json, args.out)
    print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0
