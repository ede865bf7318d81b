"""One backend, one ``sgl.Engine``: check, warm up, time TTFT per length, time decode, record, shut down.

Runs in the worker process started by :mod:`sgl_qwen1m.bench.e2e`; SGLang is imported here, lazily.

* TTFT: wall time of ``generate(input_ids, max_new_tokens=1, temperature=0)`` after ``flush_cache()``
  (radix cache stays on; the flush makes every measurement a full prefill).
* Decode step (``stream``, default): one streamed request of ``N+1`` tokens at ``--decode-at``, without a flush,
  so the prompt is served from the radix cache when the backend keeps it; step = time between the first and the
  last streamed chunk / tokens between them. (SGLang 0.5.17's ``meta_info`` has no TTFT and reports
  ``decode_throughput`` only with ``enable_metrics``.) ``diff``: ``(t(N+1) - t(1)) / N`` with flushes.
* Peak memory: device-wide nvidia-smi ``memory.used`` peak during each measurement.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Optional

from .backends import SPECS, BackendSpec, kv_dtype_label, model_label, prepare_model_dir, source_dir
from .common import Deadline, Progress, budget_defaults, check_output, make_prompt, median, peak_fields
from .e2e import E2EOptions, context_length_for
from sgl_qwen1m.sizing import ModelShape, prefill_floor_s, prefill_flops
from .gpu_mem import GpuMemSampler
from .results import Results

__all__ = ["engine_kwargs", "run_worker"]

GREEDY: dict[str, Any] = {"temperature": 0.0, "ignore_eos": True}


def engine_kwargs(opts: E2EOptions, spec: BackendSpec, model_dir: Path) -> dict[str, Any]:
    """Keyword arguments of ``sgl.Engine`` (field names of ``sglang.srt.server_args.ServerArgs``)."""
    ctx = context_length_for(opts)
    kw: dict[str, Any] = {
        "model_path": str(model_dir),
        "load_format": "dummy",
        "skip_tokenizer_init": True,
        "attention_backend": spec.attention_backend,
        "context_length": ctx,
        "chunked_prefill_size": opts.chunked_prefill_size,
        "mem_fraction_static": opts.mem_fraction_static,
        "max_running_requests": opts.max_running_requests,
        "disable_radix_cache": False,
        "random_seed": opts.seed,
        "log_level": opts.log_level,
    }
    if opts.max_total_tokens:
        kw["max_total_tokens"] = ctx if opts.max_total_tokens < 0 else opts.max_total_tokens
    if not opts.cuda_graph:
        kw["cuda_graph_backend_decode"] = "disabled"
        kw["cuda_graph_backend_prefill"] = "disabled"
    kw.update(dict(spec.engine_args))
    kw.update(opts.engine_args)
    return kw


def _flush(engine: Any) -> None:
    """``flush_cache`` is refused while a request is in flight; retry for a few seconds."""
    for _ in range(40):
        out = engine.flush_cache()
        if getattr(out, "success", True):
            return
        time.sleep(0.25)
    raise RuntimeError("flush_cache kept failing (requests still pending)")


def _generate(engine: Any, ids: list[int], new_tokens: int, logprob: bool = False) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    out = engine.generate(
        input_ids=ids, sampling_params=dict(GREEDY, max_new_tokens=new_tokens), return_logprob=logprob
    )
    return time.perf_counter() - t0, out


def _stream_decode(engine: Any, ids: list[int], new_tokens: int) -> dict[str, Any]:
    """Stream ``new_tokens`` tokens; time between the first chunk and the last."""
    t0 = time.perf_counter()
    first_t: Optional[float] = None
    first_n = last_n = 0
    last_t = t0
    meta: dict[str, Any] = {}
    gen = engine.generate(input_ids=ids, sampling_params=dict(GREEDY, max_new_tokens=new_tokens), stream=True)
    for chunk in gen:
        now, n = time.perf_counter(), len(chunk.get("output_ids") or [])
        if first_t is None:
            first_t, first_n = now, n
        last_t, last_n, meta = now, n, chunk.get("meta_info") or {}
    if first_t is None or last_n <= first_n:
        raise RuntimeError(f"stream returned {last_n} tokens in one chunk; cannot time decode steps")
    return {
        "step_ms": (last_t - first_t) / (last_n - first_n) * 1e3,
        "steps": last_n - first_n,
        "first_chunk_s": first_t - t0,
        "output_tokens": last_n,
        "cached_tokens": meta.get("cached_tokens"),
    }


class _Run:
    """State of one worker run (engine, sampler, results) with the measurement steps as methods."""

    def __init__(self, opts: E2EOptions, spec: BackendSpec, res: Results, shape: ModelShape) -> None:
        self.opts, self.spec, self.res, self.shape = opts, spec, res, shape
        since = time.time() - opts.started_at if opts.started_at else 0.0
        self.log = Progress(spec.name, time.monotonic() - since)
        self.deadline = Deadline(opts.deadline_at)
        self.sampler = GpuMemSampler().start()
        self.engine: Any = None
        self.last_ttft: Optional[tuple[int, float]] = None

    def prompt(self, n: int) -> list[int]:
        return make_prompt(n, self.opts.seed, self.shape.vocab)

    def row(self, metric: str, n: int, value: Optional[float], **extra: Any) -> None:
        self.res.upsert(metric, self.spec.name, n, value, **extra)

    def predicted_s(self, n: int) -> float:
        """Quadratic extrapolation from the last TTFT, plus slack (0 before any measurement)."""
        if not self.last_ttft:
            return 0.0
        n0, t0 = self.last_ttft
        return t0 * (n / n0) ** 2 * 1.2 + 5.0

    def start(self, kwargs: dict[str, Any]) -> None:
        t_import = time.monotonic()
        from sgl_qwen1m.adapter.engine import start_engine  # imports SGLang (heavy, GPU-only) only here

        self.res.backend_info(self.spec.name, import_sglang_s=round(time.monotonic() - t_import, 2))
        self.log(f"starting Engine ({kwargs['attention_backend']}, {kwargs['model_path']})")
        t0 = time.monotonic()
        self.engine = start_engine(**kwargs)
        self.row("engine_start_s", 0, time.monotonic() - t0)
        self.log(f"engine up in {time.monotonic() - t0:.1f}s")
        if self.spec.weights == "local":
            self.set_local_weights()
        try:
            info = self.engine.get_server_info()
            mem = (info.get("internal_states") or [{}])[0].get("memory_usage")
            self.res.backend_info(
                self.spec.name, memory_usage=mem, max_total_num_tokens=info.get("max_total_num_tokens")
            )
        except Exception as e:  # informational only
            self.log(f"get_server_info failed: {e!r}")

    def set_local_weights(self) -> None:
        """Overwrite a few weights with :mod:`.local_weights` (attention that decays with distance).

        The recipe follows the model directory's ``config.json`` ``model_type`` (q/k biases for Qwen2, embedding +
        q/k projections + q/k norms for Qwen3); tensors go in batches of <= 1 GiB of transient GPU copies.
        """
        import json

        from .local_weights import local_attention_tensors, local_recipe, update_batches

        model_path = self.res.backend_info(self.spec.name, save=False).get("model_path") or getattr(
            getattr(self.engine, "server_args", None), "model_path", None
        )
        if not model_path:
            raise RuntimeError("local weights: no model_path recorded for this backend")
        with open(Path(model_path) / "config.json") as f:
            config = json.load(f)
        recipe = local_recipe(config)
        tensors = local_attention_tensors(config)
        batches = list(update_batches(tensors))
        msg = ""
        for i, batch in enumerate(batches):
            out = self.engine.update_weights_from_tensor(named_tensors=batch, flush_cache=i == len(batches) - 1)
            ok, msg = (out[0], out[1]) if isinstance(out, (tuple, list)) else (getattr(out, "success", True), str(out))
            if not ok:
                raise RuntimeError(f"update_weights_from_tensor refused the {recipe['recipe']} local weights: {msg}")
        self.res.backend_info(
            self.spec.name, weights={"kind": "local", **recipe, "tensors": len(tensors), "updates": len(batches)}
        )
        self.log(f"local weights ({recipe['recipe']}) set on {self.shape.layers} layers ({msg})")

    def check(self) -> bool:
        n = max(self.opts.check_tokens, self.spec.min_prompt_tokens)
        new = self.opts.check_new_tokens if self.spec.decode else 1
        self.log(f"check: {n}-token prompt, {new} new tokens")
        _flush(self.engine)
        dt, out = _generate(self.engine, self.prompt(n), new, logprob=True)
        verdict = check_output(out, new, self.shape.vocab)
        self.res.backend_info(self.spec.name, checked=verdict.ok, check=dict(verdict.as_dict(), prompt_tokens=n))
        self.log(f"check {'passed' if verdict.ok else 'FAILED'} in {dt:.1f}s: {verdict.detail}")
        return verdict.ok

    def warmup(self) -> None:
        n = max(self.opts.warmup_tokens, self.spec.min_prompt_tokens)
        _flush(self.engine)
        dt, _ = _generate(self.engine, self.prompt(n), 1)
        self.log(f"warm-up {n} tokens: {dt:.1f}s")

    def ttft(self, n: int) -> None:
        if n < self.spec.min_prompt_tokens:
            self.row(
                "ttft_s", n, None, error=f"skipped: {self.spec.name} needs > {self.spec.min_prompt_tokens - 1} tokens"
            )
            return
        if not self.deadline.allows(self.predicted_s(n)):
            self.row("ttft_s", n, None, error="skipped: deadline")
            self.log(f"ttft {n}: skipped (deadline)")
            return
        ids, samples = self.prompt(n), []
        self.sampler.reset()
        for _ in range(self.opts.repeats):
            _flush(self.engine)
            dt, out = _generate(self.engine, ids, 1)
            verdict = check_output(out, 1, self.shape.vocab)
            if not verdict.ok:
                raise RuntimeError(f"ttft {n}: bad output: {verdict.detail}")
            samples.append(dt)
        peak = self.sampler.window()
        t = median(samples)
        floor = prefill_floor_s(self.shape, n, self.opts.peak_tflops)
        self.row(
            "ttft_s",
            n,
            t,
            samples=[round(s, 4) for s in samples],
            floor_s=round(floor, 4),
            chunked_prefill_size=self.opts.chunked_prefill_size,
        )
        self.row("tflops", n, prefill_flops(self.shape, n) / t / 1e12, basis="dense-equivalent prefill FLOPs / ttft")
        if peak is not None:
            self.row("peak_mem_gib", n, peak / 1024.0, **peak_fields(peak / 1024.0, self.opts))
        self.last_ttft = (n, t)
        self.log(
            f"ttft {n}: {t:.2f}s (floor {floor:.2f}s, x{t / floor:.1f})"
            + (f", peak {peak / 1024:.1f} GiB" if peak else "")
        )

    def decode(self, n: int) -> None:
        if not self.spec.decode:
            self.row("decode_step_ms", n, None, error=f"skipped: {self.spec.name} decode needs FA3 (not in the bundle)")
            return
        if not self.deadline.allows(self.predicted_s(n) * (2 if self.opts.decode_method == "diff" else 1)):
            self.row("decode_step_ms", n, None, error="skipped: deadline")
            return
        N, ids = self.opts.decode_tokens, self.prompt(n)
        self.sampler.reset()
        if self.opts.decode_method == "diff":
            _flush(self.engine)
            t1, _ = _generate(self.engine, ids, 1)
            _flush(self.engine)
            tn, out = _generate(self.engine, ids, N + 1)
            stats = {"step_ms": (tn - t1) / N * 1e3, "steps": N, "output_tokens": len(out.get("output_ids") or [])}
        else:
            stats = _stream_decode(self.engine, ids, N + 1)
        peak = self.sampler.window()
        step = stats.pop("step_ms")
        self.row(
            "decode_step_ms",
            n,
            step,
            method=self.opts.decode_method,
            peak_mem_gib=None if peak is None else round(peak / 1024, 3),
            **stats,
        )
        self.log(f"decode at {n}: {step:.2f} ms/step ({stats['steps']} steps, {self.opts.decode_method})")

    def close(self) -> None:
        self.sampler.stop()
        if self.engine is not None:
            self.log("shutting down engine")
            self.engine.shutdown()
            self.engine = None


def run_worker(opts: E2EOptions, name: str) -> int:
    """Measure one backend into ``opts.out``; return 0 on success (errors are recorded, not raised)."""
    spec = SPECS[name]
    res = Results.open(opts.out)
    src = source_dir(spec, opts.model_shape, opts.model_dca)
    res.row_defaults.update(model=model_label(src),
                            kv_dtype=kv_dtype_label(opts.engine_args.get("kv_cache_dtype"), src),
                            **budget_defaults(opts))
    try:
        model_dir = prepare_model_dir(
            spec, Path(opts.model_shape), Path(opts.model_dca), Path(opts.work_dir) / "models"
        )
        shape = ModelShape.from_dir(model_dir)
    except Exception as e:
        res.backend_info(name, checked=False, error=f"model directory: {e}")
        return 2
    kwargs = engine_kwargs(opts, spec, model_dir)
    res.backend_info(
        name,
        attention_backend=spec.attention_backend,
        model_path=str(model_dir),
        sparse=spec.sparse,
        weights=spec.weights,
        fa3_import_stub=spec.fa3_stub,
        engine_args=kwargs,
        checked=False,
        check=None,
        error=None,
        traceback=None,
        failures=[],
    )
    run = _Run(opts, spec, res, shape)
    stage = "engine start"
    try:
        run.start(kwargs)
        stage = "check"
        ok = run.check()
        if not ok and not opts.time_unchecked:
            res.backend_info(name, error="correctness check failed; timing skipped (--time-unchecked to force)")
            return 1
        stage = "warm-up"
        run.warmup()
        for n in sorted(opts.lengths):
            stage = f"ttft {n}"
            try:
                run.ttft(n)
            except Exception as e:  # one length failing (e.g. OOM in a chunk) should not hide the others
                msg = f"{type(e).__name__}: {e}"[:500]
                run.row("ttft_s", n, None, error=msg)
                failures = res.data["backends"][name].setdefault("failures", [])
                res.backend_info(name, failures=failures + [f"ttft {n}: {msg}"])
                run.log(f"ttft {n} FAILED: {e!r}")
        for n in opts.decode_at:
            stage = f"decode {n}"
            try:
                run.decode(n)
            except Exception as e:
                run.row("decode_step_ms", n, None, error=f"{type(e).__name__}: {e}"[:500])
                raise
        return 0
    except Exception as e:
        tb = traceback.format_exc(limit=8)
        res.backend_info(name, error=f"{stage}: {type(e).__name__}: {e}"[:1000], traceback=tb[-3000:])
        run.log(f"FAILED at {stage}: {e!r}")
        return 1
    finally:
        run.close()
