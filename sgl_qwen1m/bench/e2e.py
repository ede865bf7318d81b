"""``python -m sgl_qwen1m bench e2e``: TTFT, decode step and peak memory per backend through ``sgl.Engine``.

Each backend runs in its own worker process (``python -m sgl_qwen1m.bench _worker``) that starts ONE Engine,
checks a short prompt, warms up, measures and shuts the Engine down. A crash, an out-of-memory or a hang of one
backend is recorded as that backend's ``error`` (after a timeout the worker's process group is killed) and the
next backend still runs on a clean GPU. Workers add rows to the results file after every measurement.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from .backends import SPECS, BackendSpec, prepare_model_dir
from .common import EngineOptions, Progress, stop_process_group
from sgl_qwen1m.sizing import ModelShape, auto_context_length, mean_keys_per_query, prefill_floor_s
from .results import Results, collect_versions, command_line, gpu_name

__all__ = ["E2EOptions", "run_e2e", "context_length_for", "summary_lines", "worker_env"]

WORKER_GRACE_S = 45.0  # shutdown time granted to a worker past the deadline


@dataclass(kw_only=True)
class E2EOptions(EngineOptions):
    """Everything a worker needs; serialised to JSON between the orchestrator and the workers."""

    # What runs, and where the results go.
    backends: list[str]
    """Names in :data:`.backends.SPECS`, each run in its own worker, in this order."""
    out: str
    """Results JSON (:mod:`.results`); the PNG goes beside it."""
    plot: bool = True
    peak_tflops: float = 800.0
    """For the arithmetic floor of the prefill (H100 dense bf16 ~800)."""
    engine_args: dict[str, Any] = field(default_factory=dict)
    """Extra ``sgl.Engine`` / ``ServerArgs`` fields."""

    # TTFT and decode timing.
    lengths: list[int]
    """Prompt lengths whose TTFT is measured."""
    repeats: int = 1
    """TTFT samples per length; the median is reported."""
    decode_method: str = "stream"
    """``stream``: one streamed request, prefix from the radix cache; ``diff``: ``(t(N+1) - t(1)) / N``."""
    decode_at: list[int] = field(default_factory=list)
    """Prompt lengths of the decode timing (empty: none)."""
    decode_tokens: int = 32

    # Before any timing: a correctness check and a warm-up.
    check_tokens: int = 1024
    """Prompt of the check, answered with ``check_new_tokens`` ids."""
    check_new_tokens: int = 8
    time_unchecked: bool = False
    """Time a backend even if its check failed."""
    warmup_tokens: int = 40960
    """Warm-up prompt (> 32K so the sparse paths compile)."""

    # The orchestrator's clock.
    deadline_at: float = 0.0
    """``time.time()`` by which the run ends (0: none); set by the orchestrator from ``deadline_s``."""
    started_at: float = 0.0
    """``time.time()`` of the orchestrator's start, so workers log on the same clock."""
    backend_timeout_s: float = 1800.0
    """A backend's worker is killed after this long."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)

    @classmethod
    def from_json(cls, text: str) -> "E2EOptions":
        raw = json.loads(text)
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def context_length_for(opts: E2EOptions) -> int:
    """``--context-length`` or the smallest 4096-multiple above the longest prompt + decode tokens + 1024."""
    if opts.context_length:
        return opts.context_length
    longest = max(list(opts.lengths) + list(opts.decode_at) + [opts.warmup_tokens, opts.check_tokens])
    return auto_context_length(longest, opts.decode_tokens + 1)


def _keys_per_query(dca_dir: Path) -> Optional[float]:
    path = dca_dir / "sparse_attention_config.json"
    if not path.exists():
        return None
    with open(path) as f:
        return mean_keys_per_query(json.load(f))


def worker_env(spec: BackendSpec) -> dict[str, str]:
    """The worker's environment: ours, plus the FA3 import shim first on ``PYTHONPATH`` when the spec needs it."""
    env = dict(os.environ)
    if spec.fa3_stub:
        stub = str(Path(__file__).resolve().parent / "fa3_stub")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [stub, env.get("PYTHONPATH", "")]))
    return env


def _run_worker(opts: E2EOptions, name: str, opts_path: Path, log: Progress) -> Optional[str]:
    """Run one backend's worker; return an error string when it did not finish cleanly."""
    cmd = [sys.executable, "-m", "sgl_qwen1m.bench", "_worker", "--options", str(opts_path), "--backend", name]
    env = worker_env(SPECS[name])
    timeout = opts.backend_timeout_s
    if opts.deadline_at:
        timeout = min(timeout, max(1.0, opts.deadline_at - time.time() + WORKER_GRACE_S))
    log(f"starting worker for {name} (timeout {timeout:.0f}s)")
    proc = subprocess.Popen(cmd, start_new_session=True, env=env)
    previous = signal.getsignal(signal.SIGTERM)

    def _on_term(signum: int, frame: Any) -> None:  # the outer `timeout` must not orphan a GPU-holding worker
        stop_process_group(proc, log, "worker", 20.0, 10.0)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _on_term)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        stop_process_group(proc, log, "worker", 20.0, 10.0)
        return f"worker timed out after {timeout:.0f}s and was killed"
    except KeyboardInterrupt:
        stop_process_group(proc, log, "worker", 20.0, 10.0)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return None if rc == 0 else f"worker exited with code {rc}"


def summary_lines(data: dict[str, Any]) -> list[str]:
    """A plain-text table of the results: one line per (backend, prompt length)."""
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for r in data.get("rows", []):
        if r["prompt_tokens"] <= 0:  # per-backend figures (engine start) go in the backend lines
            continue
        by_key.setdefault((r["backend"], r["prompt_tokens"]), {})[r["metric"]] = r
    lines = [f"{'backend':<22}{'tokens':>9}{'ttft_s':>9}{'floor_s':>9}{'decode_ms':>10}{'peak_GiB':>9}  note"]

    def val(metrics: dict[str, Any], metric: str, fmt: str) -> str:
        row = metrics.get(metric)
        return format(row["value"], fmt) if row and row.get("value") is not None else "-"

    for (backend, n), metrics in sorted(by_key.items()):
        ttft = metrics.get("ttft_s", {})
        note = next((r.get("error", "") for r in metrics.values() if r.get("error")), "")
        floor = ttft.get("floor_s")
        lines.append(
            f"{backend:<22}{n:>9}{val(metrics, 'ttft_s', '.2f'):>9}{(format(floor, '.2f') if floor else '-'):>9}"
            f"{val(metrics, 'decode_step_ms', '.2f'):>10}{val(metrics, 'peak_mem_gib', '.1f'):>9}  {note[:60]}"
        )
    starts = {r["backend"]: r["value"] for r in data.get("rows", []) if r["metric"] == "engine_start_s"}
    for backend, info in data.get("backends", {}).items():
        start = f"{starts[backend]:.0f}s" if starts.get(backend) is not None else "-"
        lines.append(
            f"{backend}: checked={info.get('checked')} engine_start={start} error={info.get('error')}"
            + (f" failures={len(info['failures'])}" if info.get("failures") else "")
        )
    return lines


def run_e2e(opts: E2EOptions, argv: Optional[list[str]] = None) -> int:
    """Orchestrate all backends; return 0 when every backend finished and passed its check."""
    log = Progress("e2e")
    opts.started_at = time.time()
    dca_dir, shape_dir = Path(opts.model_dca), Path(opts.model_shape)
    for name in opts.backends:  # fail fast on a bad model directory, before any GPU time is spent
        prepare_model_dir(SPECS[name], shape_dir, dca_dir, Path(opts.work_dir) / "models")
    shape = ModelShape.from_dir(dca_dir if any(SPECS[b].uses_dca_model for b in opts.backends) else shape_dir)
    keys = _keys_per_query(dca_dir)
    if opts.deadline_s:
        opts.deadline_at = time.time() + opts.deadline_s
    config = dataclasses.asdict(opts)
    config.update(
        context_length=context_length_for(opts),
        shape=dataclasses.asdict(shape),
        keys_per_query=keys,
        floor_s={str(n): round(prefill_floor_s(shape, n, opts.peak_tflops), 3) for n in opts.lengths},
    )
    log("collecting GPU name and versions")
    res = Results.open(opts.out, command_line(argv), gpu_name(), collect_versions(), extra={"config": config})
    res.data["runs"][-1].update(backends=opts.backends, lengths=opts.lengths)
    res.save()
    log(f"results -> {res.path}; context_length {config['context_length']}")
    Path(opts.work_dir).mkdir(parents=True, exist_ok=True)
    failures = 0
    for name in opts.backends:
        if opts.deadline_at and time.time() > opts.deadline_at:
            Results.open(opts.out).backend_info(name, error="skipped: deadline reached before start")
            failures += 1
            continue
        opts_path = Path(opts.work_dir) / f"options-{name}.json"
        opts_path.write_text(opts.to_json())
        err = _run_worker(opts, name, opts_path, log)
        res = Results.open(opts.out)  # the worker wrote to the file
        info = res.data["backends"].get(name, {})
        if err and not info.get("error"):
            res.backend_info(name, error=err)
        if err or info.get("error") or info.get("failures") or not info.get("checked"):
            failures += 1
        info = res.data["backends"].get(name, {})
        log(f"{name} done: checked={info.get('checked')} error={info.get('error')} failures={info.get('failures')}")
    data = Results.load(opts.out)
    for line in summary_lines(data):
        print(line, flush=True)
    if opts.plot:
        from .plot import try_plot

        try_plot(data, Path(opts.out).with_suffix(".png"), opts.peak_tflops)
    return 1 if failures else 0
