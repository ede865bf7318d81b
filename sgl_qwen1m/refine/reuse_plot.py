"""Plot of the pattern-reuse results (``python -m sgl_qwen1m.refine.reuse plot FILE``; needs matplotlib).

Reads the JSON :mod:`sgl_qwen1m.refine.reuse` writes; draws nothing that is not in it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

__all__ = ["plot"]


def plot(path: str, out: Optional[str] = None) -> Path:
    """PNG beside the JSON: per chunk size (columns), vs ``k``: recall (mean solid, smallest head mean dashed),
    passkey accuracy (when measured) and the estimation passes run / without reuse, one line per length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sgl_qwen1m.figures import save_png

    doc = json.loads(Path(path).read_text())
    rows = doc["rows"]
    chunks = sorted({r["chunked_prefill_size"] for r in rows})
    panels = [("recall", "recall (mean; dashed: min head mean)"), ("accuracy", "passkey accuracy"),
              ("estimation_ratio", "estimation passes / k=1")]
    panels = [p for p in panels if any(r["metric"] == p[0] for r in rows)]
    fig, axes = plt.subplots(len(panels), len(chunks), figsize=(3.4 * len(chunks), 2.5 * len(panels)),
                             squeeze=False, sharey="row")
    for j, c in enumerate(chunks):
        for li, n in enumerate(sorted({r["prompt_tokens"] for r in rows})):
            color = f"C{li}"
            for i, (metric, _) in enumerate(panels):
                sel = sorted((r["reestimate_every"], r["value"], r.get("head_mean_min")) for r in rows
                             if r["metric"] == metric and r["chunked_prefill_size"] == c and r["prompt_tokens"] == n)
                ks = [x[0] for x in sel]
                axes[i][j].plot(ks, [x[1] for x in sel], marker="o", ms=3, color=color, label=f"{n} tokens")
                if metric == "recall":
                    axes[i][j].plot(ks, [x[2] for x in sel], marker="o", ms=3, ls="--", color=color)
        axes[0][j].axhline(0.95, color="grey", lw=0.8, ls=":")
        for i, (metric, _) in enumerate(panels):
            if metric != "recall":
                axes[i][j].set_ylim(0.0, 1.05)
        axes[0][j].set_title(f"chunked prefill {c}", fontsize=9)
        for i in range(len(panels)):
            axes[i][j].set_xscale("log", base=2)
            axes[-1][j].set_xlabel("reestimate_every k")
    for i, (_, label) in enumerate(panels):
        axes[i][0].set_ylabel(label, fontsize=8)
    axes[0][0].legend(fontsize=7)
    budgets = sorted({str(r["budgets"]) for r in rows if "budgets" in r}) or ["budgets: see note"]
    fig.suptitle(f"Pattern reuse, tiny-dca on CPU ({', '.join(budgets)})", fontsize=10)
    fig.tight_layout()
    return save_png(fig, Path(out) if out else Path(path).with_suffix(".png"))
