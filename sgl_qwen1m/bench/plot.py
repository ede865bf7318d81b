"""TTFT vs prompt length per backend, with the arithmetic floor, log-log (matplotlib, Agg, 600x400 px).

Needs only the results JSON, so a file measured on a GPU host without matplotlib can be plotted elsewhere:
``python -m sgl_qwen1m bench plot benchmarks/results/<name>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from sgl_qwen1m.sizing import QWEN25_7B, ModelShape, prefill_floor_s
from .results import backends_in

__all__ = ["plot_runs", "plot_ttft", "try_plot"]

_STYLE = {
    "flashinfer": ("tab:blue", "o"),
    "dual_chunk_flash_attn": ("tab:orange", "s"),
    "qwen1m-dense": ("tab:green", "^"),
    "qwen1m-sparse": ("tab:red", "v"),
}


def _geomspace(lo: float, hi: float, n: int = 24) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]


def _tokens_label(x: float, _pos: object = None) -> str:
    """``131072`` -> ``128K``, ``1048576`` -> ``1M``."""
    if x >= 1 << 20:
        return f"{x / (1 << 20):g}M"
    if x >= 1024:
        return f"{x / 1024:g}K"
    return f"{x:g}"


def plot_ttft(
    data: dict[str, Any],
    out_png: Path,
    peak_tflops: float = 800.0,
    shape: Optional[ModelShape] = None,
    keys_per_query: Optional[float] = None,
) -> Path:
    """Write the TTFT plot of a results dict to ``out_png``; return the path.

    ``shape`` and ``keys_per_query`` default to ``data["config"]`` (written by the e2e run), else Qwen2.5-7B and,
    for the sparse floor, nothing.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    config = data.get("config") or {}
    if shape is None:
        shape = ModelShape(**config["shape"]) if config.get("shape") else QWEN25_7B
    if keys_per_query is None:
        keys_per_query = config.get("keys_per_query")
    rows = [r for r in data.get("rows", []) if r["metric"] == "ttft_s" and r.get("value") is not None]
    lengths = sorted({r["prompt_tokens"] for r in rows} or set(config.get("lengths") or [131072]))
    lo, hi = lengths[0], lengths[-1]
    if lo == hi:
        lo, hi = lo / 2, hi * 2

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for backend in backends_in(rows):
        pts = sorted((r["prompt_tokens"], r["value"]) for r in rows if r["backend"] == backend)
        local = backend.endswith("-local")  # same backend on distance-decaying weights (bench/local_weights.py)
        color, marker = _STYLE.get(backend.removesuffix("-local"), (None, "o"))
        ax.plot(
            [p[0] for p in pts],
            [p[1] for p in pts],
            marker=marker,
            color=color,
            label=backend,
            lw=1.5,
            ls="-." if local else "-",
            mfc="white" if local else color,
        )
    xs = _geomspace(lo, hi)
    ax.plot(
        xs,
        [prefill_floor_s(shape, int(x), peak_tflops) for x in xs],
        "--",
        color="0.4",
        lw=1,
        label=f"dense floor @ {peak_tflops:g} TFLOP/s",
    )
    if keys_per_query and any("sparse" in b or b.startswith("dual_chunk") for b in backends_in(rows)):
        ax.plot(
            xs,
            [prefill_floor_s(shape, int(x), peak_tflops, keys_per_query) for x in xs],
            ":",
            color="0.4",
            lw=1,
            label=f"sparse floor ({keys_per_query / 1000:.1f}K keys/query)",
        )
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(_tokens_label))
    ymin, ymax = ax.get_ylim()
    ax.set_yticks([t for t in (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000) if ymin <= t <= ymax])
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{y:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda y, _: f"{y:g}" if str(f"{y:g}")[0] in "25" else ""))
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("time to first token (s)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return _finish(fig, ax, data, f"Prefill TTFT, {shape.layers}-layer Qwen2 shape, batch 1", out_png)


def _finish(fig: Any, ax: Any, data: dict[str, Any], title: str, out_png: Path) -> Path:
    """Title (with the results' GPU), tight layout, save as PNG at 100 dpi (:func:`~sgl_qwen1m.figures.save_png`),
    close; return the path."""
    from sgl_qwen1m.figures import save_png

    gpu = str(data.get("gpu", "")).split(",")[0]
    ax.set_title(title + (f" ({gpu})" if gpu else ""), fontsize=9)
    fig.tight_layout()
    return save_png(fig, out_png)


def plot_runs(data: dict[str, Any], out_png: Path, gpu_gib: Optional[float] = None) -> Path:
    """One bar per (model, kv_dtype, prompt length): measured peak memory, labelled with the TTFT and decode step,
    with each run's ``mem_budget_gib`` and the GPU's memory as lines (runs of different models side by side)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in data.get("rows", []) if r.get("value") is not None]
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    for r in rows:
        if r["metric"] in ("peak_mem_gib", "ttft_s", "decode_step_ms", "mem_budget_gib") and r["prompt_tokens"]:
            key = (str(r.get("model", "?")), str(r.get("kv_dtype", "?")), int(r["prompt_tokens"]))
            runs.setdefault(key, {})[r["metric"]] = r["value"]
            if r.get("mem_budget_gib"):
                runs[key]["budget"] = r["mem_budget_gib"]
    keys = [k for k in sorted(runs) if "peak_mem_gib" in runs[k]]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    for i, k in enumerate(keys):
        run = runs[k]
        color = "tab:purple" if k[1].startswith("fp8") else "tab:gray"
        ax.bar(i, run["peak_mem_gib"], color=color, width=0.7)
        text = f"{run['peak_mem_gib']:.0f} GiB"
        if "ttft_s" in run:
            text += f"\nTTFT {run['ttft_s']:.0f} s"
        if "decode_step_ms" in run:
            text += f"\n{run['decode_step_ms']:.1f} ms/tok"
        ax.text(i, max(run["peak_mem_gib"], run.get("budget") or 0) + 1, text, ha="center", va="bottom", fontsize=6)
        if run.get("budget"):
            ax.hlines(run["budget"], i - 0.45, i + 0.45, colors="tab:red", linestyles="--", lw=1.5)
            ax.text(i, run["budget"] - 1, f"budget\n{run['budget']:g} GiB", fontsize=6, color="white", ha="center",
                    va="top")
    if gpu_gib:
        ax.axhline(gpu_gib, color="0.3", lw=1, ls=":")
        ax.text(len(keys) - 0.5, gpu_gib, f"GPU {gpu_gib:g} GiB", fontsize=6, ha="right", va="bottom")
    def short(model: str) -> str:
        return model.replace("qwen2.5-", "Qwen2.5-").replace("-instruct-2507-1m", "").replace("qwen3-", "Qwen3-")

    def tokens(n: int) -> str:
        return f"{n / 1e6:g}M" if n % 100_000 == 0 else _tokens_label(n)

    ax.set_xticks(range(len(keys)), [f"{short(m)}\n{kv}\n{tokens(n)}" for m, kv, n in keys], fontsize=6)
    ax.set_ylabel("peak device memory (GiB, nvidia-smi)")
    ax.set_ylim(0, max([gpu_gib or 0] + [runs[k]["peak_mem_gib"] for k in keys]) * 1.25)
    ax.grid(True, axis="y", alpha=0.3)
    return _finish(fig, ax, data, "One request per run: peak memory, TTFT, decode step", out_png)


def try_plot(data: dict[str, Any], out_png: Path, peak_tflops: float = 800.0) -> Optional[Path]:
    """``plot_ttft`` that reports instead of failing when matplotlib is missing (the GPU host has none)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib not installed: no plot; run `python -m sgl_qwen1m bench plot <json>` elsewhere", flush=True)
        return None
    path = plot_ttft(data, out_png, peak_tflops)
    print(f"plot -> {path} ({path.stat().st_size // 1024} KB)", flush=True)
    return path
