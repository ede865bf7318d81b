"""``python -m sgl_qwen1m bench serve-smoke``: one long request through ``python -m sglang.launch_server``.

Starts the server as a subprocess in its own session (log to a file), waits for ``/health`` (503 until the
server's own warm-up request has passed), streams ONE ``POST /generate`` with ``input_ids``, checks that
``--new-tokens`` ids come back, records TTFT / end-to-end latency / decode step / peak memory and the server log
tail, then kills the server's process group. Every wait is bounded. Stdlib HTTP only (no ``requests``).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .backends import SPECS, kv_dtype_label, model_label, prepare_model_dir, source_dir
from .common import (
    Deadline, EngineOptions, Progress, budget_defaults, check_output, make_prompt, peak_fields, sse_chunks,
    stop_process_group,
)
from sgl_qwen1m.sizing import ModelShape, auto_context_length
from .gpu_mem import GpuMemSampler
from .results import Results, collect_versions, command_line, gpu_name

__all__ = ["ServeOptions", "server_command", "run_serve_smoke", "free_port", "log_tail"]

_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # localhost: never through a proxy


@dataclass(kw_only=True)
class ServeOptions(EngineOptions):
    """Options of one serve smoke run (engine settings in :class:`EngineOptions`)."""

    out: str
    backend: str = "qwen1m-sparse"
    prompt_tokens: int = 600_000
    new_tokens: int = 32
    mem_fraction_static: float = 0.70
    port: int = 0
    host: str = "127.0.0.1"
    start_timeout_s: float = 300.0
    request_timeout_s: float = 480.0
    log_file: str = ""
    log_level: str = "info"
    server_args: list[str] = field(default_factory=list)


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 60, max_chars: int = 8000) -> str:
    """Last ``lines`` lines of a log file (at most ``max_chars``)."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4 * max_chars))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])[-max_chars:]


def server_command(opts: ServeOptions, model_dir: Path, context_length: int, port: int) -> list[str]:
    """The ``launch_server`` command line (CLI flags of SGLang 0.5.17)."""
    spec = SPECS[opts.backend]
    cmd = [
        sys.executable,
        "-m",
        "sglang.launch_server",
        "--model-path",
        str(model_dir),
        "--load-format",
        "dummy",
        "--skip-tokenizer-init",
        "--attention-backend",
        spec.attention_backend,
        "--context-length",
        str(context_length),
        "--chunked-prefill-size",
        str(opts.chunked_prefill_size),
        "--mem-fraction-static",
        str(opts.mem_fraction_static),
        "--max-running-requests",
        str(opts.max_running_requests),
        "--host",
        opts.host,
        "--port",
        str(port),
        "--random-seed",
        str(opts.seed),
        "--log-level",
        opts.log_level,
    ]
    if opts.max_total_tokens:
        cmd += ["--max-total-tokens", str(context_length if opts.max_total_tokens < 0 else opts.max_total_tokens)]
    if not opts.cuda_graph:
        cmd += ["--cuda-graph-backend-decode", "disabled", "--cuda-graph-backend-prefill", "disabled"]
    return cmd + list(opts.server_args)


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log: Progress, log_path: Path) -> float:
    """Poll ``/health`` until 200; raise if the server exits or the timeout passes. Returns seconds waited."""
    t0, next_note = time.monotonic(), 15.0
    while True:
        waited = time.monotonic() - t0
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with code {proc.returncode} after {waited:.0f}s")
        try:
            with _HTTP.open(url + "/health", timeout=5) as r:
                if r.status == 200:
                    return waited
        except (urllib.error.URLError, OSError):
            pass
        if waited > timeout_s:
            raise TimeoutError(f"server not healthy after {timeout_s:.0f}s")
        if waited >= next_note:
            last = (log_tail(log_path, 1) or "").strip()[:150]
            log(f"waiting for server ({waited:.0f}s): {last}")
            next_note += 15.0
        time.sleep(1.0)


def _stream_generate(url: str, ids: list[int], new_tokens: int, timeout_s: float) -> dict[str, Any]:
    """Streamed ``/generate``; returns the last chunk plus ``ttft_s`` (first chunk) and ``e2e_latency_s``."""
    body = json.dumps(
        {
            "input_ids": ids,
            "stream": True,
            "sampling_params": {"max_new_tokens": new_tokens, "temperature": 0.0, "ignore_eos": True},
        }
    ).encode()
    req = urllib.request.Request(url + "/generate", data=body, headers={"Content-Type": "application/json"})
    t0 = time.perf_counter()
    first: Optional[float] = None
    first_n, last = 0, {}
    with _HTTP.open(req, timeout=timeout_s) as resp:
        for chunk in sse_chunks(resp):
            if "error" in chunk:
                raise RuntimeError(f"server error: {chunk['error']}")
            if first is None:
                first, first_n = time.perf_counter(), len(chunk.get("output_ids") or [])
            last = chunk
            if time.perf_counter() - t0 > timeout_s:
                raise TimeoutError(f"request still streaming after {timeout_s:.0f}s")
    end = time.perf_counter()
    if first is None:
        raise RuntimeError("no chunk came back")
    n = len(last.get("output_ids") or [])
    out = dict(last, ttft_s=first - t0, e2e_latency_s=end - t0)
    if n > first_n:
        out["decode_step_ms"] = (end - first) / (n - first_n) * 1e3
    return out


def run_serve_smoke(opts: ServeOptions, argv: Optional[list[str]] = None) -> int:
    """Run the smoke test; 0 when the server answered with ``new_tokens`` valid ids."""
    log, name = Progress("serve-smoke"), opts.backend
    deadline = Deadline(time.time() + opts.deadline_s if opts.deadline_s else 0.0)
    model_dir = prepare_model_dir(
        SPECS[name], Path(opts.model_shape), Path(opts.model_dca), Path(opts.work_dir) / "models"
    )
    shape = ModelShape.from_dir(model_dir)
    ctx = opts.context_length or auto_context_length(opts.prompt_tokens, opts.new_tokens)
    port = opts.port or free_port()
    cmd = server_command(opts, model_dir, ctx, port)
    log_path = Path(opts.log_file or Path(opts.work_dir) / f"serve-{name}-{opts.prompt_tokens}.log")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    res = Results.open(
        opts.out,
        command_line(argv),
        gpu_name(),
        collect_versions(),
        extra={"serve_config": dict(vars(opts), context_length=ctx, server_command=cmd)},
    )
    src = source_dir(SPECS[name], opts.model_shape, opts.model_dca)
    kv_arg = next((a.split("=", 1)[1] for a in opts.server_args if a.startswith("--kv-cache-dtype=")), None)
    res.row_defaults.update(model=model_label(src), kv_dtype=kv_dtype_label(kv_arg, src), **budget_defaults(opts))
    res.backend_info(name, checked=False, error=None, server_command=" ".join(cmd), log_file=str(log_path))
    ids = make_prompt(opts.prompt_tokens, opts.seed, shape.vocab)
    url = f"http://{opts.host}:{port}"
    log(f"launching server on {url}, context {ctx}, log {log_path}")
    sampler = GpuMemSampler(interval_s=0.5).start()
    with open(log_path, "w") as logf:
        proc = subprocess.Popen(cmd, stdout=logf, stderr=subprocess.STDOUT, start_new_session=True)
    rc = 1

    def _on_term(signum: int, frame: Any) -> None:  # an outer `timeout` must not orphan the server
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        start_budget = min(opts.start_timeout_s, max(1.0, deadline.remaining()))
        up = _wait_healthy(url, proc, start_budget, log, log_path)
        res.upsert("server_start_s", name, 0, up)
        log(f"server healthy after {up:.0f}s; sending {opts.prompt_tokens} tokens")
        sampler.reset()
        out = _stream_generate(url, ids, opts.new_tokens, min(opts.request_timeout_s, max(1.0, deadline.remaining())))
        peak = sampler.window()
        verdict = check_output(out, opts.new_tokens, shape.vocab)
        n = opts.prompt_tokens
        res.upsert("ttft_s", name, n, out["ttft_s"], via="HTTP stream, first chunk")
        res.upsert("e2e_latency_s", name, n, out["e2e_latency_s"], new_tokens=opts.new_tokens)
        res.upsert("output_tokens", name, n, verdict.output_tokens, expected=opts.new_tokens)
        if "decode_step_ms" in out:
            res.upsert("decode_step_ms", name, n, out["decode_step_ms"], method="HTTP stream")
        if peak is not None:
            res.upsert("peak_mem_gib", name, n, peak / 1024.0, **peak_fields(peak / 1024.0, opts))
        res.backend_info(
            name,
            checked=verdict.ok,
            check=verdict.as_dict(),
            meta_info={k: v for k, v in (out.get("meta_info") or {}).items() if not isinstance(v, list)},
        )
        log(
            f"ttft {out['ttft_s']:.1f}s, e2e {out['e2e_latency_s']:.1f}s, {verdict.output_tokens} tokens: "
            f"{'OK' if verdict.ok else 'FAILED'} ({verdict.detail})"
        )
        rc = 0 if verdict.ok else 1
    except Exception as e:
        res.backend_info(name, error=f"{type(e).__name__}: {e}"[:1000])
        log(f"FAILED: {e!r}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        sampler.stop()
        stop_process_group(proc, log, "server", 30.0, 15.0)
        res.backend_info(name, server_log_tail=log_tail(log_path))
    return rc
