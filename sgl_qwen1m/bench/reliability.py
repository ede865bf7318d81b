"""``python -m sgl_qwen1m bench reliability``: hostile requests against ONE real ``sglang.launch_server``.

Starts the server (``--attention-backend qwen1m``, the 7B-1M shape, dummy weights, a small KV pool so "over the
pool" cases are cheap), warms it up, then runs the cases of :mod:`.reliability_cases`. After each case:

1. the server must still be alive (process running, ``/health`` 200);
2. its KV pool must return to the idle level measured after warm-up (``/v1/loads``: ``num_used_tokens``, running
   and waiting requests; tokens held by the radix cache are evictable and do not count as used);
3. a normal request must be served with valid output ids.

One row per case, ``{"metric": "survived", "case", "value": 1|0, "response", "next_request_ok",
"mem_back_to_idle", ...}``, in the schema of :mod:`.results` (written after every case). Every request has a
timeout, the run has a deadline, traffic is loopback only, HTTP is the standard library's ``http.client``. If the
server dies, that case scores 0; it is restarted (at most ``--max-restarts`` times, deadline permitting) or every
later case scores 0 with "server dead".
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .backends import SPECS, model_label, prepare_model_dir, source_dir
from .common import Deadline, Progress, check_output, make_prompt, stop_process_group
from .gpu_mem import query_used_mib
from .reliability_cases import Case, Sizes, build_cases, generate_body, judge, new_rid, normal_body
from .reliability_http import Reply, connect, http_call, in_threads, in_threads_async, kv_state, post, wait_idle
from .results import Results, collect_versions, command_line, gpu_name
from .serve import ServeOptions, _wait_healthy, free_port, log_tail, server_command
from sgl_qwen1m.sizing import ModelShape

__all__ = ["ReliabilityOptions", "Reply", "http_call", "kv_state", "wait_idle", "in_threads", "free_port",
           "run_reliability", "format_table"]


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


def format_table(rows: list[dict[str, Any]]) -> str:
    """Plain-text table of the ``survived`` rows."""
    lines = [f"{'case':<26} {'ok':>2} {'next':>4} {'idle':>4} {'s':>6}  outcome: response"]
    for r in rows:
        if r.get("metric") != "survived":
            continue
        v = "-" if r["value"] is None else int(r["value"])
        lines.append(f"{r['case']:<26} {v:>2} {str(r.get('next_request_ok', '-'))[:4]:>4} "
                     f"{str(r.get('mem_back_to_idle', '-'))[:4]:>4} {r.get('seconds', 0):>6}  "
                     f"{r.get('outcome', '')}: {str(r.get('response', r.get('error', '')))[:110]}")
    n = [r for r in rows if r.get("metric") == "survived"]
    lines.append(f"{sum(1 for r in n if r['value'] == 1)}/{len(n)} cases survived")
    return "\n".join(lines)


def _model_dir(opts: ReliabilityOptions) -> Path:
    return prepare_model_dir(SPECS[opts.backend], Path(opts.model_shape), Path(opts.model_dca),
                             Path(opts.work_dir) / "models")


def make_sizes(opts: ReliabilityOptions, model_dir: Path) -> Sizes:
    shape = ModelShape.from_dir(model_dir)
    cfg = json.loads((model_dir / "config.json").read_text())
    thr = (cfg.get("dual_chunk_attention_config") or {}).get("sparse_attention_threshold", 32768)
    if not SPECS[opts.backend].sparse:
        thr = 2**62  # qwen1m-dense: every prompt runs dense DCA
    base = dict(vocab_size=shape.vocab, context_length=opts.context_length, max_total_tokens=opts.max_total_tokens,
                chunk=opts.chunked_prefill_size, sparse_threshold=int(thr),
                max_running_requests=opts.max_running_requests)
    return Sizes(**{**base, **opts.sizes})


def run_reliability(opts: ReliabilityOptions, argv: Optional[list[str]] = None) -> int:
    """Run every case; 0 when all survived."""
    log = Progress("reliability")
    deadline = Deadline(time.time() + opts.deadline_s if opts.deadline_s else 0.0)
    model_dir = _model_dir(opts)
    sizes = make_sizes(opts, model_dir)
    cases = build_cases(sizes, opts.seed)
    out = Path(opts.out)
    log_path = Path(opts.log_file or Path(opts.work_dir) / f"{out.stem}.server.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_path.write_text("")
    res = Results.open(out, command_line(argv), gpu_name(), collect_versions(),
                       extra={"reliability_config": dict({k: v for k, v in vars(opts).items() if k != "sizes"},
                                                         sizes=vars(sizes), cases=[c.name for c in cases])})
    res.row_defaults["model"] = model_label(source_dir(SPECS[opts.backend], opts.model_shape, opts.model_dca))
    server = Server(opts, model_dir, log_path, log)
    suite = Suite(opts, sizes, server, log)
    rc, dead = 1, ""

    def _on_term(signum: int, frame: Any) -> None:  # an outer `timeout` must not orphan the server
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        log(f"starting server (context {sizes.context_length}, pool {sizes.max_total_tokens}), log {log_path}")
        up = server.start(min(opts.start_timeout_s, max(1.0, deadline.remaining())))
        res.upsert("server_start_s", opts.backend, 0, up, case="server")
        res.backend_info(opts.backend, server_command=" ".join(server.cmd), log_file=str(log_path), error=None)
        warm = suite.warm_up()
        res.backend_info(opts.backend, warm_up=warm)
        log(f"healthy after {up:.0f}s; warm-up {warm['seconds']}s ({warm['normal']}); idle {suite.baseline}")
        for case in cases:
            row: dict[str, Any] = {"what": case.what, "expect": case.expect if case.kind == "simple" else case.kind}
            backend = sizes.backend_for(case.prompt_tokens)
            if not deadline.allows(case.budget_s + 2 * opts.idle_timeout_s / 3):
                res.upsert("survived", backend, case.prompt_tokens, None, case=case.name,
                           error="not run: deadline", **row)
                log(f"{case.name}: not run (deadline)")
                continue
            if dead and not opts.url and server.starts <= opts.max_restarts and deadline.allows(
                    opts.start_timeout_s + case.budget_s):
                server.stop()
                time.sleep(5.0)  # let the dead server's processes hand back the GPU
                log(f"restarting the server ({dead})")
                try:
                    server.start(opts.start_timeout_s)
                    suite.measure_baseline()
                    dead = ""
                except Exception as e:
                    dead = f"restart failed: {e}"
            if dead:
                res.upsert("survived", backend, case.prompt_tokens, 0, case=case.name, outcome="server dead",
                           response=dead[:300], next_request_ok=False, mem_back_to_idle=False, **row)
                log(f"{case.name}: server dead")
                continue
            log(f"{case.name}: {case.what}")
            got = suite.run_case(case)
            alive = server.alive()
            idle, idle_detail, idle_s = (wait_idle(server.url, suite.baseline, opts.idle_timeout_s) if alive
                                         else (False, "server dead", 0.0))
            nxt, nxt_detail = suite.normal() if alive else (False, "server dead")
            if alive and not nxt:
                alive = server.alive()
            if not alive:
                dead = f"server died during {case.name}: " + " | ".join(log_tail(log_path, 4).splitlines())[-400:]
            ok = bool(got.pop("ok")) and alive and idle and nxt
            res.upsert("survived", backend, case.prompt_tokens, 1 if ok else 0, case=case.name,
                       next_request_ok=nxt, mem_back_to_idle=idle, server_alive=alive, idle_detail=idle_detail,
                       idle_wait_s=round(idle_s, 1), next_request=nxt_detail, gpu_mem_mib=query_used_mib(),
                       **row, **got)
            log(f"{case.name}: {'SURVIVED' if ok else 'FAILED'}: {got.get('outcome')}: {str(got.get('response'))[:150]}"
                f"; next {'ok' if nxt else nxt_detail}; {idle_detail}")
        rows = [r for r in res.rows if r.get("metric") == "survived" and r.get("case") in {c.name for c in cases}]
        rc = 0 if rows and all(r["value"] == 1 for r in rows) else 1
    except Exception as e:
        res.backend_info(opts.backend, error=f"{type(e).__name__}: {e}"[:1000])
        log(f"FAILED: {e!r}")
        done = {r.get("case") for r in res.rows if r.get("run") == len(res.data["runs"]) - 1}
        for case in cases:  # every case gets a row, so the table shows what was not run and why
            if case.name not in done:
                res.upsert("survived", sizes.backend_for(case.prompt_tokens), case.prompt_tokens, None,
                           case=case.name, what=case.what, error=f"not run: {type(e).__name__}: {e}"[:300],
                           save=False)
        res.save()
    finally:
        signal.signal(signal.SIGTERM, previous)
        server.stop()
        res.backend_info(opts.backend, server_log_tail=log_tail(log_path), server_starts=server.starts)
        beside = out.with_name(f"{out.stem}.server.log")
        if log_path.exists() and log_path.resolve() != beside.resolve():
            try:
                shutil.copyfile(log_path, beside)
            except OSError:
                pass
    print(format_table([r for r in res.rows if r.get("run") == len(res.data["runs"]) - 1]))
    return rc
