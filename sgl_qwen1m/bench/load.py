"""``python -m sgl_qwen1m bench load``: chat streams keep decoding while one long prompt prefills, against a running
server (``python -m sglang.launch_server ...``; loopback, stdlib HTTP, streamed ``POST /generate`` with input ids).

1. Idle: the long prompt alone -> ``ttft_idle_s``.
2. Load: ``streams`` chats start and decode (``ignore_eos``); once each has its first token the long prompt is sent;
   while it prefills a new chat of ``chat_prompt`` tokens arrives every ``1 / chat_rate`` s. When the long prompt's
   first token arrives every chat is closed (the server aborts a dropped stream).

Reported (rows keyed by ``case`` = ``scenario``, ``prompt_tokens`` = the long prompt): ``ttft_s``, ``ttft_idle_s``,
``ttft_ratio_vs_idle``; ``itl_p50_ms`` / ``itl_p99_ms`` / ``itl_max_ms`` over every gap between token-bearing stream
events of every chat inside the prefill window (from sending the long prompt to its first token; a gap that straddles
the window's start counts); ``chat_ttft_s`` (max over the chats that arrived during the prefill; p50 and all samples
in the row). The timeline of every stream is saved beside the JSON (``<out stem>.<scenario>.timeline.json``,
:func:`timeline_doc`) so its plot can be drawn anywhere (``bench plot --kind timeline FILE``; the GPU host has no
matplotlib): tokens of each stream over time, the long prompt's prefill shaded and the engine steps inside it marked
(every token arrival of a chat ends one step).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from .common import make_prompt, sse_chunks
from .reliability_http import connect
from .results import Results, command_line

__all__ = ["LoadOptions", "StreamTrace", "percentile", "gap_stats", "stream_generate", "run_load", "timeline_doc",
           "plot_timeline"]


@dataclass(kw_only=True)
class LoadOptions:
    """One load scenario against ``url``."""

    url: str
    out: str
    scenario: str = "long+chats"
    backend: str = "qwen1m-sparse"
    long_tokens: int = 1 << 20
    streams: int = 8
    chat_prompt: int = 2048
    chat_rate: float = 0.5  # new chats per second during the prefill (0: none)
    chat_new_tokens: int = 8192  # outlasts the prefill (chats are closed when it ends) without a huge KV reservation
    timeout_s: float = 1800.0
    skip_idle: bool = False
    plot: bool = True
    gpu: str = "unknown"
    kv_dtype: str = ""  # the server's --kv-cache-dtype, stored on every row when given


@dataclass
class StreamTrace:
    """One streamed request: send time and ``(time, tokens so far)`` per token-bearing event (perf_counter s)."""

    name: str
    sent: float
    events: list[tuple[float, int]] = field(default_factory=list)
    error: str = ""

    @property
    def first_token(self) -> Optional[float]:
        return self.events[0][0] if self.events else None

    def gaps(self, start: float = float("-inf"), end: float = float("inf")) -> list[float]:
        """Seconds between consecutive token events whose later event lies in ``(start, end]``."""
        return [b[0] - a[0] for a, b in zip(self.events, self.events[1:]) if start < b[0] <= end]


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (``q`` in [0, 100]) of a non-empty sequence (numpy's default method)."""
    if not values:
        raise ValueError("percentile of an empty sequence")
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def gap_stats(gaps: Sequence[float]) -> dict[str, float]:
    """``itl_p50_ms`` / ``itl_p99_ms`` / ``itl_max_ms`` of gaps given in seconds."""
    return {"itl_p50_ms": percentile(gaps, 50) * 1e3, "itl_p99_ms": percentile(gaps, 99) * 1e3,
            "itl_max_ms": max(gaps) * 1e3}


def stream_generate(base: str, ids: list[int], new_tokens: int, trace: StreamTrace, stop: threading.Event,
                    timeout_s: float) -> StreamTrace:
    """Streamed ``/generate`` into ``trace`` until the server ends it, ``stop`` is set (the connection is closed:
    SGLang aborts the request) or ``timeout_s`` passes."""
    body = json.dumps({"input_ids": ids, "stream": True, "sampling_params": {
        "max_new_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True}}).encode()
    conn = connect(base, timeout_s)
    try:
        trace.sent = time.perf_counter()
        conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        if resp.status != 200:
            trace.error = f"HTTP {resp.status}: {resp.read()[:200]!r}"
            return trace
        seen = 0
        # One line at a time until the stream ends or ``stop`` is set (checked before each read, as it blocks).
        lines = iter(lambda: b"" if stop.is_set() else resp.readline(), b"")
        for chunk in sse_chunks(lines):
            if "error" in chunk:
                trace.error = str(chunk["error"])[:200]
                break
            n = int((chunk.get("meta_info") or {}).get("completion_tokens") or len(chunk.get("output_ids") or []))
            if n > seen:
                trace.events.append((time.perf_counter(), n))
                seen = n
            if time.perf_counter() - trace.sent > timeout_s:
                trace.error = f"still streaming after {timeout_s:.0f}s"
                break
    except (OSError, http.client.HTTPException, ValueError) as e:
        trace.error = trace.error or f"{type(e).__name__}: {e}"
    finally:
        conn.close()
    return trace


def _start(base: str, name: str, ids: list[int], new_tokens: int, stop: threading.Event, timeout_s: float,
           traces: list[StreamTrace]) -> threading.Thread:
    tr = StreamTrace(name, time.perf_counter())
    traces.append(tr)
    th = threading.Thread(target=stream_generate, args=(base, ids, new_tokens, tr, stop, timeout_s), daemon=True)
    th.start()
    return th


def _long_ttft(o: LoadOptions, ids: list[int], name: str) -> StreamTrace:
    tr = StreamTrace(name, 0.0)
    stream_generate(o.url, ids, 1, tr, threading.Event(), o.timeout_s)
    if tr.error or tr.first_token is None:
        raise RuntimeError(f"{name}: the long prompt failed: {tr.error or 'no token came back'}")
    return tr


def run_load(o: LoadOptions, argv: Optional[list[str]] = None) -> dict[str, Any]:
    """Run the scenario, write the rows into ``o.out`` and return a summary (see the module docstring)."""
    long_ids = make_prompt(o.long_tokens, seed=1)
    idle = None if o.skip_idle else _long_ttft(o, long_ids, "long-idle")
    stop, traces, threads = threading.Event(), [], []
    for i in range(o.streams):
        threads.append(_start(o.url, f"chat{i}", make_prompt(o.chat_prompt, seed=100 + i), o.chat_new_tokens, stop,
                              o.timeout_s, traces))
    deadline = time.perf_counter() + o.timeout_s
    while any(t.first_token is None and not t.error for t in traces) and time.perf_counter() < deadline:
        time.sleep(0.01)
    long_ids = make_prompt(o.long_tokens, seed=2)  # not a radix-cache hit on the idle run
    box: list[StreamTrace] = []
    lt = threading.Thread(target=lambda: box.append(_long_ttft(o, long_ids, "long")), daemon=True)
    t_long = time.perf_counter()
    lt.start()
    arrivals, k = [], 0
    period = 1.0 / o.chat_rate if o.chat_rate > 0 else None
    while lt.is_alive():
        if period is not None and time.perf_counter() >= t_long + (k + 1) * period:
            threads.append(_start(o.url, f"new{k}", make_prompt(o.chat_prompt, seed=1000 + k), o.chat_new_tokens,
                                  stop, o.timeout_s, traces))
            arrivals.append(traces[-1])
            k += 1
        lt.join(0.005)
    if not box:
        stop.set()
        raise RuntimeError("the long prompt under load failed (see the server log)")
    long = box[0]
    t_end = long.first_token
    stop.set()
    for th in threads:
        th.join(5.0)
    gaps = [g for t in traces for g in t.gaps(t_long, t_end)]
    res = Results.open(o.out, command=command_line(argv), gpu=o.gpu)
    extra = {"case": o.scenario, "scenario": o.scenario, "streams": o.streams, "chat_rate": o.chat_rate,
             "chat_prompt": o.chat_prompt, **({"kv_dtype": o.kv_dtype} if o.kv_dtype else {})}
    summary: dict[str, Any] = {"ttft_s": t_end - long.sent}
    if idle is not None:
        summary["ttft_idle_s"] = idle.first_token - idle.sent  # type: ignore[operator]
        summary["ttft_ratio_vs_idle"] = summary["ttft_s"] / summary["ttft_idle_s"]
    if gaps:
        summary.update(gap_stats(gaps))
    chat_ttfts = [t.first_token - t.sent for t in arrivals if t.first_token is not None]
    if chat_ttfts:
        summary["chat_ttft_s"] = max(chat_ttfts)
    for metric, value in summary.items():
        more = {"samples": [round(x, 4) for x in chat_ttfts], "p50": percentile(chat_ttfts, 50)} \
            if metric == "chat_ttft_s" else {}
        res.upsert(metric, o.backend, o.long_tokens, value, save=False, **extra, **more)
    errors = [f"{t.name}: {t.error}" for t in traces if t.error and t.first_token is None]
    if errors:
        res.backend_info(o.backend, save=False, error="; ".join(errors[:5]))
    res.save()
    summary.update(gaps=len(gaps), chats_started=len(arrivals), errors=errors)
    doc = timeline_doc(traces, t_long, t_end, o, long_sent=long.sent)
    tl_path = Path(o.out).with_suffix(f".{o.scenario}.timeline.json")
    tl_path.write_text(json.dumps(doc, separators=(",", ":")) + "\n")
    summary["timeline"] = str(tl_path)
    if o.plot:
        plot_timeline(doc, tl_path.with_suffix(".png"))
    return summary


def timeline_doc(traces: Sequence[StreamTrace], t_long: float, t_end: float, o: LoadOptions,
                 long_sent: float) -> dict[str, Any]:
    """Every stream's token arrivals in integer ms since the long prompt was sent, delta-encoded (``dt_ms``: first
    arrival minus ``sent_ms``, then gaps); ``tokens`` only when a stream event carried more than one token. Plus the
    prefill window (``prefill_ms``: from the long request's send, ``long_sent``, to its first token), the scenario
    and its settings: what :func:`plot_timeline` draws."""
    streams = []
    for t in traces:
        ms = [round((e[0] - t_long) * 1e3) for e in t.events]
        sent = round((t.sent - t_long) * 1e3)
        item: dict[str, Any] = {"name": t.name, "sent_ms": sent,
                                "dt_ms": [b - a for a, b in zip([sent] + ms, ms)]}
        if [e[1] for e in t.events] != list(range(1, len(t.events) + 1)):
            item["tokens"] = [e[1] for e in t.events]
        if t.error:
            item["error"] = t.error
        streams.append(item)
    return {"scenario": o.scenario, "backend": o.backend, "long_tokens": o.long_tokens, "streams_n": o.streams,
            "chat_rate": o.chat_rate, "gpu": o.gpu,
            "prefill_ms": [round((long_sent - t_long) * 1e3), round((t_end - t_long) * 1e3)], "streams": streams}


def _events(item: dict[str, Any]) -> tuple[list[float], list[int]]:
    """Arrival times (s since the long prompt was sent) and token counts of one stream of a timeline doc."""
    ts, acc = [], item["sent_ms"]
    for d in item["dt_ms"]:
        acc += d
        ts.append(acc / 1e3)
    return ts, item.get("tokens") or list(range(1, len(ts) + 1))


def plot_timeline(doc: Union[dict[str, Any], Sequence[dict[str, Any]]], path: Path) -> bool:
    """Tokens of each stream over time, the long prompt's prefill shaded, and a tick per engine step inside it
    (distinct chat token arrivals, 5 ms apart at least); one panel per timeline doc (same time axis, so scenarios
    compare), chats decoding before the long prompt in blue, chats arriving during it in orange. False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sgl_qwen1m.figures import save_png
    except ImportError:
        return False
    docs = [doc] if isinstance(doc, dict) else list(doc)
    fig, axes = plt.subplots(len(docs), 1, figsize=(10, 1.2 + 2.8 * len(docs)), sharex=True, squeeze=False)
    for ax, d in zip(axes[:, 0], docs):
        _timeline_panel(ax, d)
    axes[-1, 0].set_xlabel("seconds since the long prompt was sent")
    fig.tight_layout()
    save_png(fig, path, dpi=90)
    return True


def _timeline_panel(ax: Any, doc: dict[str, Any]) -> None:
    lo, hi = (x / 1e3 for x in doc["prefill_ms"])
    steps: list[float] = []
    seen: set[bool] = set()
    for item in doc["streams"]:
        ts, ns = _events(item)
        if not ts:
            continue
        new = item["sent_ms"] >= doc["prefill_ms"][0]
        label = None if new in seen else ("chats arriving during the prefill" if new else "chats decoding before it")
        seen.add(new)
        ax.step(ts, ns, where="post", lw=0.7, color="C1" if new else "C0", alpha=0.8, label=label)
        steps += [x for x in ts if lo < x <= hi]
    marks: list[float] = []
    for x in sorted(steps):
        if not marks or x - marks[-1] > 0.005:
            marks.append(x)
    ax.axvspan(lo, hi, color="0.92", label=f"long prompt prefill ({doc['long_tokens']:,} tokens, {hi - lo:.1f} s)")
    if marks:
        ax.plot(marks, [0] * len(marks), "|", color="k", ms=8, label=f"engine steps in the prefill ({len(marks)})")
    ax.set_ylabel("tokens received")
    ax.set_title(f"{doc['backend']}: {doc['scenario']}, {doc['streams_n']} streams, {doc['chat_rate']}/s new chats"
                 + (f" ({doc['gpu']})" if doc.get("gpu") else ""), fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
