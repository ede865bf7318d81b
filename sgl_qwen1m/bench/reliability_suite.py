"""The reliability suite's harness (:mod:`.reliability`): its options, the server it runs against
(``sglang.launch_server`` in its own session, restartable, or an external ``url``) and the case runners
(:class:`Suite`: each case of :mod:`.reliability_cases`, the follow-up request and the idle level of the KV pool).
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .common import Progress, check_output, make_prompt, stop_process_group
from .gpu_mem import query_used_mib
from .reliability_cases import Case, Sizes, generate_body, judge, new_rid, normal_body
from .reliability_http import Reply, connect, http_call, in_threads, in_threads_async, kv_state, post, wait_idle
from .serve import ServeOptions, _wait_healthy, free_port, server_command


__all__ = ["Server", "Suite"]


@dataclass(kw_only=True)
class ReliabilityOptions(ServeOptions):
    """Server settings (:class:`ServeOptions`) and case sizes (:class:`Sizes`)."""

    out: str = "benchmarks/results/reliability-h200/reliability_h200.json"
    url: str = ""
    """An already running server on loopback: no launch, nothing restarted."""
    max_restarts: int = 2
    """Restarts after the server dies (deadline permitting)."""

    # The 7B-1M shape with a small KV pool, so that "under the context, over the pool" cases are cheap.
    context_length: int = 245760
    max_total_tokens: int = 204800
    mem_fraction_static: float = 0.70
    sizes: dict[str, int] = field(default_factory=dict)
    """Overrides of :class:`Sizes` fields (tests use small ones)."""

    start_timeout_s: float = 240.0
    request_timeout_s: float = 60.0
    """Per simple request."""
    idle_timeout_s: float = 60.0
    """Wait for the KV pool to drain back to its idle level after a case."""
    deadline_s: float = 500.0


class Server:
    """``sglang.launch_server`` in its own session, restartable; or an external ``url`` (never restarted)."""

    def __init__(self, opts: ReliabilityOptions, model_dir: Path, log_path: Path, log: Progress) -> None:
        self.opts, self.model_dir, self.log_path, self.log = opts, model_dir, log_path, log
        self.proc: Optional[subprocess.Popen] = None
        self.url, self.starts, self.cmd = opts.url.rstrip("/"), 0, []

    def start(self, timeout_s: float) -> float:
        if self.opts.url:
            return 0.0
        port = self.opts.port or free_port()
        self.url = f"http://{self.opts.host}:{port}"
        self.cmd = server_command(self.opts, self.model_dir, self.opts.context_length, port)
        with open(self.log_path, "a") as logf:
            logf.write(f"\n===== start {self.starts + 1}: {' '.join(self.cmd)}\n")
            logf.flush()
            self.proc = subprocess.Popen(self.cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
        self.starts += 1
        return _wait_healthy(self.url, self.proc, timeout_s, self.log, self.log_path)

    def alive(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            return False
        for _ in range(2):
            if http_call(self.url, "GET", "/health", timeout=25).status == 200:
                return True
            time.sleep(1.0)
        return False

    def stop(self) -> None:
        if self.proc is not None:
            stop_process_group(self.proc, self.log, "server", 30.0, 15.0)
            self.proc = None


class Suite:
    """The cases against one server, with the follow-up and idle checks."""

    def __init__(self, opts: ReliabilityOptions, sizes: Sizes, server: Server, log: Progress) -> None:
        self.opts, self.sizes, self.server, self.log = opts, sizes, server, log
        self.baseline: Optional[dict[str, Any]] = None
        self.seed = opts.seed + 1000

    @property
    def url(self) -> str:
        return self.server.url

    def normal(self, timeout_s: Optional[float] = None) -> tuple[bool, str]:
        """The follow-up request: served, ``new_tokens`` valid ids."""
        self.seed += 1
        r = post(self.url, "/generate", normal_body(self.sizes, self.seed, new_rid("next")),
                 timeout_s or self.opts.request_timeout_s)
        if r.status != 200 or not isinstance(r.payload, dict):
            return False, r.short()
        v = check_output(r.payload, self.sizes.new_tokens, self.sizes.vocab_size)
        return v.ok, v.detail

    def measure_baseline(self) -> None:
        """The idle level: KV tokens in use (SGLang's own leak check expects 0) once no request is left."""
        time.sleep(1.0)
        wait_idle(self.url, None, self.opts.idle_timeout_s)
        samples = [kv_state(self.url) for _ in range(2)]
        used = [st["used"] for st in samples if st]
        self.baseline = {"used": min(used) if used else 0, "source": (samples[0] or {}).get("source", "nvidia-smi"),
                         "gpu_mib": query_used_mib()}

    def warm_up(self) -> dict[str, Any]:
        """One normal and one sparse-length request (Triton/JIT compiles happen here, not inside a case)."""
        t0 = time.monotonic()
        ok, detail = self.normal(timeout_s=self.opts.start_timeout_s)
        n = self.sizes.sparse_threshold + self.sizes.chunk
        r = post(self.url, "/generate", generate_body(make_prompt(n, self.opts.seed + 7, self.sizes.vocab_size), 4),
                 self.opts.start_timeout_s)
        self.measure_baseline()
        return {"normal_ok": ok, "normal": detail, "sparse_prompt_tokens": n, "sparse": r.short()[:200],
                "seconds": round(time.monotonic() - t0, 1), "idle": self.baseline}

    def abort(self, rid: Optional[str]) -> None:
        if rid:
            post(self.url, "/abort_request", {"rid": rid}, 10)

    # ---- cases --------------------------------------------------------------------------------------------
    def run_simple(self, case: Case) -> dict[str, Any]:
        r = http_call(self.url, "POST", case.path, case.body, timeout=min(case.budget_s, self.opts.request_timeout_s
                                                                           + case.budget_s / 2))
        if r.status is None:
            self.abort(case.rid)  # e.g. accepted and still generating: do not leave it running
        v = judge(case.expect, r.status, r.payload, r.text, r.error, self.sizes.vocab_size)
        return {"ok": v.ok, "outcome": v.outcome, "response": v.detail, "seconds": round(r.elapsed_s, 2)}

    def run_stream_drop(self, case: Case) -> dict[str, Any]:
        body = json.dumps(dict(generate_body(make_prompt(case.prompt_tokens, self.opts.seed + 11,
                                                         self.sizes.vocab_size), 16), stream=True)).encode()
        conn = connect(self.url, 30)
        t0 = time.monotonic()
        during = None
        try:
            conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
            time.sleep(case.params.get("drop_after_s", 2.0))
            during = kv_state(self.url)
        finally:
            try:
                if conn.sock is not None:
                    conn.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()
        in_flight = bool(during and (during["running"] or during["waiting"] or during["used"]))
        idle, detail, waited = wait_idle(self.url, self.baseline, self.opts.idle_timeout_s)
        state = (f"in flight at the drop ({during['running']} running, kv used {during['used']})"
                 if in_flight and during else f"NOT seen in flight at the drop ({during})")
        return {"ok": in_flight, "outcome": "client dropped mid-prefill" if in_flight else "drop not mid-prefill",
                "response": f"dropped after {time.monotonic() - t0 - waited:.1f}s, {state}; idle {waited:.1f}s later",
                "dropped_in_flight": in_flight}

    def run_abort_queued(self, case: Case) -> dict[str, Any]:
        s, n_long = self.sizes, self.sizes.max_running_requests
        longs = [generate_body(make_prompt(case.prompt_tokens, self.opts.seed + 20 + i, s.vocab_size), s.new_tokens)
                 for i in range(n_long)]
        rid = new_rid("queued")
        queued = normal_body(s, self.opts.seed + 30, rid)
        timeout = case.budget_s - 10
        calls: list[Callable[[], Reply]] = [lambda b=b: post(self.url, "/generate", b, timeout) for b in longs]
        results: list[Reply] = []
        waiting_at_abort: Any = None

        def queued_then_abort() -> Reply:
            return post(self.url, "/generate", queued, timeout)

        t = threading.Thread(target=lambda: results.extend(in_threads(calls, timeout, stagger_s=0.2)), daemon=True)
        t.start()
        time.sleep(1.0)
        q = in_threads_async(queued_then_abort)
        time.sleep(0.7)
        st = kv_state(self.url)
        waiting_at_abort = st["waiting"] if st else None
        ab = post(self.url, "/abort_request", {"rid": rid}, 10)
        q_reply = q(timeout)
        t.join(timeout + 5)
        good = [r.status == 200 and isinstance(r.payload, dict)
                and check_output(r.payload, s.new_tokens, s.vocab_size).ok for r in results]
        fin = (q_reply.payload or {}).get("meta_info", {}).get("finish_reason") if isinstance(q_reply.payload,
                                                                                              dict) else None
        aborted = q_reply.status is not None and (q_reply.status != 200 or (isinstance(fin, dict)
                                                                            and fin.get("type") == "abort"))
        ok = len(good) == n_long and all(good) and q_reply.status is not None
        return {"ok": ok, "outcome": ("others finished, queued one " + ("aborted" if aborted else
                                                                         "finished before the abort")),
                "response": f"{sum(good)}/{n_long} long requests served; waiting at abort {waiting_at_abort}; "
                            f"/abort_request {ab.status}; queued request -> {q_reply.short()[:120]}",
                "queued_aborted": aborted}

    def run_concurrent(self, case: Case) -> dict[str, Any]:
        s = self.sizes
        bodies = [generate_body(make_prompt(case.prompt_tokens, self.opts.seed + 40 + i, s.vocab_size), s.new_tokens)
                  for i in range(s.concurrent)]
        timeout = case.budget_s - 10
        replies = in_threads([lambda b=b: post(self.url, "/generate", b, timeout) for b in bodies], timeout)
        served = refused = 0
        bad: list[str] = []
        for r in replies:
            if r.status == 200 and isinstance(r.payload, dict) and check_output(r.payload, s.new_tokens,
                                                                                s.vocab_size).ok:
                served += 1
            elif r.status is not None and 400 <= r.status < 500:
                refused += 1
            else:
                bad.append(r.short()[:100])
        ok = not bad
        return {"ok": ok, "outcome": f"{served} served, {refused} refused clearly, {len(bad)} lost/failed",
                "response": "; ".join(bad) or f"all {len(replies)} answered within "
                            f"{max(r.elapsed_s for r in replies):.1f}s",
                "served": served, "refused": refused}

    def run_radix(self, case: Case) -> dict[str, Any]:
        s, prefix = self.sizes, case.params["prefix_tokens"]
        p = make_prompt(prefix, self.opts.seed + 50, s.vocab_size)
        a = make_prompt(s.radix_suffix_tokens, self.opts.seed + 51, s.vocab_size)
        b = make_prompt(s.radix_suffix_tokens, self.opts.seed + 52, s.vocab_size)
        if b[0] == a[0]:
            b[0] = (a[0] + 1) % min(s.vocab_size, 151643)

        def gen(ids: list[int]) -> Reply:
            return post(self.url, "/generate", generate_body(ids, 16, return_logprob=True), case.budget_s / 3)

        def flush() -> int:
            for _ in range(20):
                r = http_call(self.url, "POST", "/flush_cache", b"", timeout=15)
                if r.status == 200:
                    return 200
                time.sleep(0.5)
            return r.status or 0

        flush()
        first, cached = gen(p + a), gen(p + b)
        wait_idle(self.url, self.baseline, self.opts.idle_timeout_s)
        flushed = flush()
        fresh = gen(p + b)
        outs = [r.payload if r.status == 200 and isinstance(r.payload, dict) else None for r in (first, cached, fresh)]
        if any(o is None for o in outs):
            return {"ok": False, "outcome": "a request failed",
                    "response": " | ".join(r.short()[:80] for r in (first, cached, fresh))}
        t_cached, t_fresh = outs[1].get("output_ids"), outs[2].get("output_ids")
        hit = (outs[1].get("meta_info") or {}).get("cached_tokens")
        miss = (outs[2].get("meta_info") or {}).get("cached_tokens")
        lp = [[x[0] for x in (o.get("meta_info") or {}).get("output_token_logprobs") or []] for o in outs[1:]]
        dlp = max((abs(x - y) for x, y in zip(*lp) if x is not None and y is not None), default=None)
        same = isinstance(t_cached, list) and t_cached == t_fresh and len(t_cached) == 16
        hit_ok = hit is None or hit >= prefix // 2  # the radix cache served (most of) P
        return {"ok": same and hit_ok, "outcome": ("identical greedy tokens" if same else "tokens DIFFER")
                + ("" if hit_ok else f", no cache hit ({hit})"),
                "response": f"cached_tokens {hit} then {miss} after /flush_cache ({flushed}); max |dlogprob| "
                            f"{dlp if dlp is None else round(dlp, 4)}; distinct tokens {len(set(t_cached or []))}",
                "cached_output_ids": t_cached, "uncached_output_ids": t_fresh, "max_abs_logprob_diff": dlp}

    def run_case(self, case: Case) -> dict[str, Any]:
        runner = {"simple": self.run_simple, "stream_drop": self.run_stream_drop, "abort_queued": self.run_abort_queued,
                  "concurrent_over_pool": self.run_concurrent, "radix_prefix": self.run_radix}[case.kind]
        t0 = time.monotonic()
        try:
            res = runner(case)
        except Exception as e:  # a bug in the suite must not end the run: record it against the case
            res = {"ok": False, "outcome": "suite error", "response": f"{type(e).__name__}: {e}"[:300]}
        res.setdefault("seconds", round(time.monotonic() - t0, 2))
        return res
