"""Where a long prefill's GPU time goes, stage by stage (issue 18, build item 1).

``python -m sgl_qwen1m bench stages --url URL --long-tokens 1000000 --backend qwen1m-sparse-local --out FILE.json``
asks a running server (``sglang.launch_server``, loopback) to record a torch-profiler trace of the GPU kernels
(``POST /start_profile`` with activities ``["GPU"]``), sends one long prompt (one new token), stops the profile
(``POST /stop_profile``; SGLang writes ``*.trace.json.gz`` into ``--trace-dir`` on the server's host, which must be
this host) and sums the kernels' time per stage. ``bench stages --trace FILE.trace.json.gz ...`` sums an existing
trace. ``bench plot --kind stages FILE.json [FILE2.json ...]`` draws one stacked bar per file (before/after).

Stages (:data:`STAGES`, first matching kernel-name pattern wins; anything else is ``other``):
``estimation`` (the two Triton estimation passes), ``selection`` (radix select and block pattern), ``sparse_attention``
(the vertical-slash kernel), ``dense_attention`` (FlashInfer prefill/decode: DCA's dense segments and short pieces),
``merge`` (FlashInfer's state merge of DCA segments), ``rope`` (the fused DCA RoPE), ``linear`` (GEMMs: projections,
MLP/experts, logits), ``moe_routing``, ``norm_activation`` and ``other`` (copies, KV writes, small torch ops).

Rows (one per stage, ``metric`` ``stage_ms``, ``case`` ``stage:<name>``): the summed kernel time in ms, with its
``kernels`` count and ``share`` of the summed time; plus ``gpu_busy_s`` (union of kernel intervals: time the GPU
ran anything) and ``ttft_s`` (the request's, as the client saw it; the profiler's overhead is in it). Kernel sums can
exceed the busy time only where kernels overlap on several streams.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from pathlib import Path
from typing import Any, Iterable, Optional, Union

__all__ = ["STAGES", "stage_of", "kernel_events", "stage_summary", "busy_seconds", "top_other", "newest_trace",
           "profile_long_prompt", "write_rows", "register", "plot_stages"]

STAGES: tuple[tuple[str, str], ...] = (
    ("estimation", r"_est_lse_kernel|_est_scores_kernel"),
    ("selection", r"_hist_kernel|_count_kernel|_write_kernel|_pattern_kernel"),
    ("sparse_attention", r"_vs_attn_kernel"),
    ("merge", r"[Mm]erge[_]?[Ss]tate"),
    ("dense_attention", r"BatchPrefill|BatchDecode|SinglePrefill|SingleDecode|PersistentKernel|flash_?attn|fmha"),
    ("rope", r"_dca_rope_kernel|[Rr]otary|rope"),
    ("moe_routing", r"topk|moe_align|moe_sum|count_and_sort|grouped_topk"),
    ("linear", r"gemm|Gemm|GEMM|nvjet|xmma|cutlass|cublas|fused_moe_kernel|matmul"),
    ("norm_activation", r"[Nn]orm|silu|act_and_mul|gelu|Activation"),
)
_COMPILED = tuple((name, re.compile(pat)) for name, pat in STAGES)


@functools.lru_cache(maxsize=None)
def stage_of(kernel_name: str) -> str:
    """The stage a CUDA kernel's name belongs to (``other`` when no pattern matches). Cached: a long prefill's trace
    repeats a few hundred kernel names across its ~10^5 launches."""
    for name, pat in _COMPILED:
        if pat.search(kernel_name):
            return name
    return "other"


def kernel_events(trace: Union[str, Path, dict[str, Any]]) -> list[tuple[str, float, float]]:
    """``(name, start_us, duration_us)`` of every GPU kernel of a chrome trace (torch profiler export; ``.gz`` or
    plain JSON, or the parsed dict), sorted by start."""
    if not isinstance(trace, dict):
        p = Path(trace)
        raw = gzip.open(p, "rt").read() if p.suffix == ".gz" else p.read_text()
        trace = json.loads(raw)
    events = trace.get("traceEvents", []) if isinstance(trace, dict) else trace
    out = [(str(e.get("name", "")), float(e["ts"]), float(e.get("dur", 0.0))) for e in events
           if isinstance(e, dict) and e.get("cat") == "kernel" and e.get("ph") == "X" and "ts" in e]
    return sorted(out, key=lambda x: x[1])


def busy_seconds(events: Iterable[tuple[str, float, float]]) -> float:
    """Length of the union of the kernels' ``[start, start + duration)`` intervals, in seconds."""
    total, end = 0.0, float("-inf")
    for _, ts, dur in sorted(events, key=lambda x: x[1]):
        a, b = max(ts, end), ts + dur
        if b > a:
            total += b - a
        end = max(end, b)
    return total / 1e6


def stage_summary(events: list[tuple[str, float, float]]) -> dict[str, dict[str, float]]:
    """Per stage (every name of :data:`STAGES` plus ``other``, in that order): ``ms`` summed kernel time,
    ``kernels`` count and ``share`` of the summed time of all stages."""
    out = {name: {"ms": 0.0, "kernels": 0} for name, _ in STAGES}
    out["other"] = {"ms": 0.0, "kernels": 0}
    for name, _, dur in events:
        s = out[stage_of(name)]
        s["ms"] += dur / 1e3
        s["kernels"] += 1
    total = sum(s["ms"] for s in out.values()) or 1.0
    for s in out.values():
        s["share"] = s["ms"] / total
    return out


def top_other(events: list[tuple[str, float, float]], n: int = 8) -> list[tuple[str, float]]:
    """The ``n`` kernel names of stage ``other`` with the most time (ms): what a new pattern should catch."""
    acc: dict[str, float] = {}
    for name, _, dur in events:
        if stage_of(name) == "other":
            acc[name] = acc.get(name, 0.0) + dur / 1e3
    return sorted(acc.items(), key=lambda x: -x[1])[:n]


def newest_trace(directory: Union[str, Path], since: float) -> Optional[Path]:
    """The newest ``*.trace.json.gz`` under ``directory`` written after ``since`` (epoch seconds), or None."""
    found = [p for p in Path(directory).rglob("*.trace.json*") if p.stat().st_mtime >= since]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def profile_long_prompt(url: str, long_tokens: int, trace_dir: str, timeout_s: float) -> tuple[Path, float]:
    """Profile one ``long_tokens`` prompt (one new token) on the server at ``url``; the trace path and its TTFT."""
    import threading
    import time

    from .common import make_prompt
    from .load import StreamTrace, stream_generate
    from .reliability_http import post

    def call(path: str, body: dict[str, Any], timeout_s: float) -> None:
        r = post(url, path, body, timeout_s)
        if r.status != 200:
            raise RuntimeError(f"{url}{path}: {r.short()}")

    Path(trace_dir).mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    call("/start_profile", {"output_dir": str(Path(trace_dir).resolve()), "activities": ["GPU"],
                            "profile_prefix": f"stages-{long_tokens}"}, 60)
    tr = StreamTrace("long", 0.0)
    try:
        stream_generate(url, make_prompt(long_tokens, seed=3), 1, tr, threading.Event(), timeout_s)
    finally:
        call("/stop_profile", {}, 600)
    if tr.error or tr.first_token is None:
        raise RuntimeError(f"the profiled prompt failed: {tr.error or 'no token'}")
    for _ in range(120):  # the scheduler writes the trace after stop_profile returns on some versions
        found = newest_trace(trace_dir, t0)
        if found is not None:
            return found, tr.first_token - tr.sent
        time.sleep(1.0)
    raise RuntimeError(f"no *.trace.json.gz appeared under {trace_dir} (is the server on this host?)")


def write_rows(out: str, events: list[tuple[str, float, float]], backend: str, prompt_tokens: int,
               ttft_s: Optional[float], argv: Optional[list[str]], gpu: str, extra: dict[str, Any]) -> dict[str, Any]:
    """Rows of :func:`stage_summary` (+ ``gpu_busy_s``, ``ttft_s``) into the results file ``out``; returns them."""
    from .results import Results, command_line

    res = Results.open(out, command=command_line(argv), gpu=gpu)
    summary, busy = stage_summary(events), busy_seconds(events)
    for name, s in summary.items():
        res.upsert("stage_ms", backend, prompt_tokens, s["ms"], save=False, case=f"stage:{name}", stage=name,
                   kernels=int(s["kernels"]), share=round(s["share"], 4), **extra)
    res.upsert("gpu_busy_s", backend, prompt_tokens, busy, save=False, case="stages", **extra)
    if ttft_s is not None:
        res.upsert("ttft_s", backend, prompt_tokens, ttft_s, save=False, case="stages", via="HTTP, profiler on",
                   **extra)
    res.save()
    return {"stages": summary, "gpu_busy_s": busy, "ttft_s": ttft_s,
            "top_other_ms": top_other(events)}


def register(sub: Any) -> None:
    """Add ``stages`` to the ``bench`` subparsers."""
    from sgl_qwen1m.args import length_or_zero, positive_float

    st = sub.add_parser("stages", help="GPU time per prefill stage of one long prompt (torch-profiler trace)")
    src = st.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="running server (loopback, same host) to profile one long prompt on")
    src.add_argument("--trace", help="an existing *.trace.json(.gz) to summarise")
    st.add_argument("--long-tokens", type=length_or_zero, default=1_000_000, help="the prompt (with --url)")
    st.add_argument("--trace-dir", default="/tmp/qwen1m-stages", help="where the server writes the trace")
    st.add_argument("--backend", default="qwen1m-sparse-local", help="label of the server's configuration")
    st.add_argument("--variant", default="", help="label of the tree/kernel variant (before, after, ...)")
    st.add_argument("--timeout-s", type=positive_float, default=900.0)
    st.add_argument("--out", required=True, help="results JSON")
    st.set_defaults(handler=_run_stages)


def _run_stages(ns: Any, argv: list[str]) -> int:
    from sgl_qwen1m.args import CommandError

    from .results import gpu_name

    ttft = None
    trace = Path(ns.trace) if ns.trace else None
    try:
        if ns.url:
            trace, ttft = profile_long_prompt(ns.url, ns.long_tokens, ns.trace_dir, ns.timeout_s)
        events = kernel_events(trace)
    except (OSError, ValueError, RuntimeError) as e:  # unreadable trace, not loopback, server refused or failed
        raise CommandError(f"{trace or ns.url}: {e}") from e
    if not events:
        raise CommandError(f"{trace}: no GPU kernel events (was the profile started with activities GPU?)")
    extra = {"trace": trace.name, **({"variant": ns.variant} if ns.variant else {})}
    out = write_rows(ns.out, events, ns.backend, ns.long_tokens, ttft, argv, gpu_name().split(",")[0].strip(), extra)
    print(json.dumps(out, indent=1))
    return 0


def plot_stages(docs: list[tuple[str, dict[str, Any]]], out_png: Union[str, Path]) -> Path:
    """One stacked bar per ``(label, results dict)``: seconds of GPU time per stage (``stage_ms`` rows), the TTFT
    beside each bar when the file has one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sgl_qwen1m.figures import save_png

    names = [n for n, _ in STAGES] + ["other"]
    top = 0.0
    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(docs), 4.5))
    for x, (label, data) in enumerate(docs):
        rows = {r.get("stage"): r["value"] for r in data["rows"] if r["metric"] == "stage_ms"}
        bottom = 0.0
        for i, n in enumerate(names):
            v = (rows.get(n) or 0.0) / 1e3
            ax.bar(x, v, bottom=bottom, color=f"C{i}", label=n if x == 0 else None, width=0.6)
            bottom += v
        top = max(top, bottom)
        ttft = [r["value"] for r in data["rows"] if r["metric"] == "ttft_s"]
        ax.text(x, bottom, f"{bottom:.3g} s" + (f"\nTTFT {ttft[0]:.3g} s" if ttft else ""), ha="center",
                va="bottom", fontsize=7)
    ax.set_ylim(0, top * 1.18 or 1.0)
    ax.set_xticks(range(len(docs)), [lbl for lbl, _ in docs], fontsize=7)
    ax.set_ylabel("GPU kernel time (s)")
    gpu = str(docs[0][1].get("gpu", "")).split(",")[0] if docs else ""
    ax.set_title("Prefill GPU time by stage" + (f" ({gpu})" if gpu else ""), fontsize=9)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return save_png(fig, out_png)
