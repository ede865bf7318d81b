"""``python -m sgl_qwen1m bench load``: chat streams keep decoding while one long prompt prefills, against a running
server (``python -m sglang.launch_server ...``; loopback, stdlib HTTP, streamed ``POST /generate`` with input ids).

1. Idle: the long prompt alone -> ``ttft_idle_s``.
2. Load: ``streams`` chats start and decode (``ignore_eos``); once each has its first token the long prompt is sent;
   while it prefills a new chat of ``chat_prompt`` tokens arrives every ``1 / chat_rate`` s. When the long prompt's
   first token arrives every chat is closed (the server aborts a dropped stream).

Reported (rows keyed by ``case`` = ``scenario``, ``prompt_tokens`` = the long prompt): ``ttft_s``, ``ttft_idle_s``,
``ttft_ratio_vs_idle``; ``itl_p50_ms`` / ``itl_p99_ms`` / ``itl_max_ms`` over the gaps of every chat in the prefill
window ``(t_long, t_end]`` (from sending the long prompt to its first token), :func:`window_gaps`:

* every gap between two token-bearing events of a stream whose later event lies in the window (so a gap that
  straddles the window's start counts);
* plus one *censored* gap per stream still open at ``t_end`` (it had its first token by then, had not ended by itself
  before ``t_end`` and had no error before it): ``t_end`` minus its last event at or before ``t_end``, even when that
  event is before ``t_long``. The chats are closed at ``t_end``, so this is a lower bound of the gap it was in: a
  chat stalled from before ``t_end`` to after it would otherwise count nothing.

``chat_ttft_s``: max over the chats that arrived during the prefill (:func:`chat_ttfts`): the real TTFT of each that
got a first token (also after ``t_end``), ``t_end - sent`` (a lower bound, censored) for each that got none and had
no error before ``t_end``; p50 and all samples in the row. The ``itl_*`` and ``chat_ttft_s`` rows carry ``censored``:
how many of their values are such lower bounds (:func:`summary_from_timeline` recomputes all of this from a saved
timeline). The timeline of every stream is saved beside the JSON (``<out stem>.<scenario>.timeline.json``,
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
from typing import Any, Iterator, Optional, Sequence, Union

from .common import make_prompt, sse_chunks
from .reliability_http import connect
from .results import Results, command_line

__all__ = ["LoadOptions", "StreamTrace", "percentile", "gap_stats", "window_gaps", "chat_ttfts", "window_summary",
           "stream_generate", "run_load", "timeline_doc", "summary_from_timeline", "plot_timeline"]


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
    ended: Optional[float] = None  # when the server ended the stream by itself (not cut by ``stop``, no error)
    error_at: Optional[float] = None  # when ``error`` was set (None with an error: taken as from the start)

    @property
    def first_token(self) -> Optional[float]:
        return self.events[0][0] if self.events else None

    def gaps(self, start: float = float("-inf"), end: float = float("inf")) -> list[float]:
        """Seconds between consecutive token events whose later event lies in ``(start, end]``."""
        return [b[0] - a[0] for a, b in zip(self.events, self.events[1:]) if start < b[0] <= end]

    def failed_by(self, end: float) -> bool:
        """Whether the stream had an error at or before ``end``."""
        return bool(self.error) and (self.error_at is None or self.error_at <= end)

    def open_gap(self, end: float) -> Optional[float]:
        """The censored gap of a stream still open at ``end``: ``end`` minus its last token event at or before
        ``end`` (a lower bound of the gap it was in when it was closed). None when it had no token by ``end``, had
        ended by itself (``ended``) or failed (``error``) at or before ``end``."""
        if (self.ended is not None and self.ended <= end) or self.failed_by(end):
            return None
        last = max((t for t, _ in self.events if t <= end), default=None)
        return None if last is None else end - last


def window_gaps(traces: Sequence[StreamTrace], start: float, end: float) -> tuple[list[float], int]:
    """The inter-token gaps of ``traces`` in the window ``(start, end]`` and how many of them are censored: every gap
    whose later event lies in the window (:meth:`StreamTrace.gaps`), then one :meth:`StreamTrace.open_gap` per
    stream still open at ``end``."""
    gaps = [g for t in traces for g in t.gaps(start, end)]
    cut = [g for g in (t.open_gap(end) for t in traces) if g is not None]
    return gaps + cut, len(cut)


def chat_ttfts(arrivals: Sequence[StreamTrace], end: float) -> tuple[list[float], int]:
    """TTFTs of the chats that arrived in a window ending at ``end`` and how many are censored: the real one when a
    first token came (also after ``end``), else ``end - sent`` (a lower bound) unless the chat failed by ``end``."""
    out, cut = [], 0
    for t in arrivals:
        if t.first_token is not None:
            out.append(t.first_token - t.sent)
        elif not t.failed_by(end):
            out.append(max(0.0, end - t.sent))
            cut += 1
    return out, cut


def window_summary(traces: Sequence[StreamTrace], arrivals: Sequence[StreamTrace], start: float,
                   end: float) -> dict[str, Any]:
    """``itl_*`` (:func:`gap_stats` of :func:`window_gaps`) and ``chat_ttft_s`` (max of :func:`chat_ttfts`), each
    only when it has values, with ``gaps`` / ``gaps_censored`` and ``chat_ttft_samples`` / ``chat_ttft_censored``."""
    gaps, gaps_cut = window_gaps(traces, start, end)
    ttfts, ttft_cut = chat_ttfts(arrivals, end)
    out: dict[str, Any] = gap_stats(gaps) if gaps else {}
    if ttfts:
        out["chat_ttft_s"] = max(ttfts)
    return {**out, "gaps": len(gaps), "gaps_censored": gaps_cut, "chat_ttft_samples": ttfts,
            "chat_ttft_censored": ttft_cut}


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
        seen, cut = 0, False

        def lines() -> Iterator[bytes]:  # one line at a time until EOF or ``stop`` (checked before each read)
            nonlocal cut
            while not (cut := stop.is_set()):
                line = resp.readline()
                if not line:
                    return
                yield line

        for chunk in sse_chunks(lines()):
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
        else:
            if not cut:  # [DONE] or EOF: the server ended it
                trace.ended = time.perf_counter()
    except (OSError, http.client.HTTPException, ValueError) as e:
        trace.error = trace.error or f"{type(e).__name__}: {e}"
    finally:
        conn.close()
        if trace.error and trace.error_at is None:
            trace.error_at = time.perf_counter()
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
    res = Results.open(o.out, command=command_line(argv), gpu=o.gpu)
    extra = {"case": o.scenario, "scenario": o.scenario, "streams": o.streams, "chat_rate": o.chat_rate,
             "chat_prompt": o.chat_prompt, **({"kv_dtype": o.kv_dtype} if o.kv_dtype else {})}
    idle = None if o.skip_idle else _long_ttft(o, long_ids, "long-idle")
    if idle is not None:  # saved at once: a run cut short later (an outer timeout) keeps it
        idle_s = idle.first_token - idle.sent  # type: ignore[operator]
        res.upsert("ttft_idle_s", o.backend, o.long_tokens, idle_s, **extra)
    stop, traces, threads = threading.Event(), [], []
    for i in range(o.streams):
        threads.append(_start(o.url, f"chat{i}", make_prompt(o.chat_prompt, seed=100 + i), o.chat_new_tokens, stop,
                              o.timeout_s, traces))
    deadline = time.perf_counter() + o.timeout_s
    while any(t.first_token is None and not t.error for t in traces) and time.perf_counter() < deadline:
        time.sleep(0.01)
    long_ids = make_prompt(o.long_tokens, seed=2)  # not a radix-cache hit on the idle run
    box: list[StreamTrace] = []
    failed: list[str] = []

    def long_run() -> None:  # the failure is reported by this thread's caller, not raised in the thread
        try:
            box.append(_long_ttft(o, long_ids, "long"))
        except RuntimeError as e:
            failed.append(str(e))

    lt = threading.Thread(target=long_run, daemon=True)
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
        why = failed[0] if failed else "no result"
        res.backend_info(o.backend, error=f"{o.scenario}: the long prompt under load failed: {why}")
        raise RuntimeError(f"the long prompt under load failed (see the server log): {why}")
    long = box[0]
    t_end = long.first_token
    stop.set()
    for th in threads:
        th.join(5.0)
    w = window_summary(traces, arrivals, t_long, t_end)
    summary: dict[str, Any] = {"ttft_s": t_end - long.sent}
    if idle is not None:
        summary["ttft_idle_s"] = idle.first_token - idle.sent  # type: ignore[operator]
        summary["ttft_ratio_vs_idle"] = summary["ttft_s"] / summary["ttft_idle_s"]
    summary.update({k: w[k] for k in ("itl_p50_ms", "itl_p99_ms", "itl_max_ms", "chat_ttft_s") if k in w})
    ttfts = w["chat_ttft_samples"]
    for metric, value in summary.items():
        more: dict[str, Any] = {"censored": w["gaps_censored"]} if metric.startswith("itl_") else {}
        if metric == "chat_ttft_s":
            more = {"samples": [round(x, 4) for x in ttfts], "p50": percentile(ttfts, 50),
                    "censored": w["chat_ttft_censored"]}
        res.upsert(metric, o.backend, o.long_tokens, value, save=False, **extra, **more)
    errors = [f"{t.name}: {t.error}" for t in traces if t.error and t.first_token is None]
    if errors:
        res.backend_info(o.backend, save=False, error="; ".join(errors[:5]))
    res.save()
    summary.update(gaps=w["gaps"], gaps_censored=w["gaps_censored"], chat_ttft_censored=w["chat_ttft_censored"],
                   chats_started=len(arrivals), errors=errors)
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
    arrival minus ``sent_ms``, then gaps); ``tokens`` only when a stream event carried more than one token;
    ``error`` with ``error_ms`` and ``ended_ms`` (the server ended it) when there are. Plus the
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
            if t.error_at is not None:
                item["error_ms"] = round((t.error_at - t_long) * 1e3)
        if t.ended is not None:
            item["ended_ms"] = round((t.ended - t_long) * 1e3)
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


def summary_from_timeline(doc: dict[str, Any]) -> dict[str, Any]:
    """:func:`window_summary` of a saved timeline (integer ms, so gaps to the ms), with ``ttft_s``: its streams'
    traces in s since the long prompt was sent (the window is ``(0, prefill_ms[1]]``); the chats that arrived
    during the prefill are those sent at or after ``prefill_ms[0]`` (as :func:`plot_timeline` colours them)."""
    traces, arrivals = [], []
    for item in doc["streams"]:
        ts, ns = _events(item)
        t = StreamTrace(item["name"], item["sent_ms"] / 1e3, list(zip(ts, ns, strict=True)), item.get("error", ""),
                        *(item[k] / 1e3 if k in item else None for k in ("ended_ms", "error_ms")))
        traces.append(t)
        if item["sent_ms"] >= doc["prefill_ms"][0]:
            arrivals.append(t)
    lo, hi = doc["prefill_ms"]
    return {"ttft_s": (hi - lo) / 1e3, **window_summary(traces, arrivals, 0.0, hi / 1e3)}


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
