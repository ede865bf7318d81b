"""``python -m sgl_qwen1m bench reliability``: hostile requests against ONE real ``sglang.launch_server``.

Starts the server (``--attention-backend qwen1m``, the 7B-1M shape, dummy weights, a small KV pool so "over the
pool" cases are cheap), warms it up, then runs the cases of :mod:`.reliability_cases` (the server process and the
case runners are in :mod:`.reliability_suite`, the HTTP calls in :mod:`.reliability_http`). After each case:

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
import time
from pathlib import Path
from typing import Any, Optional

from .backends import SPECS, model_label, prepare_model_dir, source_dir
from .common import Deadline, Progress
from .gpu_mem import query_used_mib
from .reliability_cases import Sizes, build_cases
from .reliability_http import Reply, http_call, in_threads, kv_state, wait_idle
from .reliability_suite import ReliabilityOptions, Server, Suite
from .results import Results, collect_versions, command_line, gpu_name
from .serve import free_port, log_tail
from sgl_qwen1m.sizing import ModelShape

__all__ = ["ReliabilityOptions", "Reply", "http_call", "kv_state", "wait_idle", "in_threads", "free_port",
           "run_reliability", "format_table"]


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
