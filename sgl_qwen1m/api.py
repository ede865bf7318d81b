"""Notebook-first API: plan memory, launch an Engine with long-context defaults, show an honest prefill progress bar.

* :func:`plan_memory_for` answers "does this prompt fit on this GPU, and with which SGLang settings" from the
  model's shape alone (pure arithmetic, no GPU): :class:`MemoryAdvice`.
* :func:`engine_kwargs_for` turns that plan into ``sgl.Engine`` keyword arguments; :func:`launch_engine` starts the
  Engine through :func:`sgl_qwen1m.adapter.engine.start_engine` (the only sanctioned way to get one).
* :func:`prefill_progress` shows a ``tqdm.auto`` bar for a long prefill. SGLang reports no prefill progress to the
  caller, so the bar advances on a time **estimate** (FLOP floor / measured efficiency) and says so.

The arithmetic lives in :mod:`sgl_qwen1m.sizing` (``split_static``, ``plan_memory``, ``prefill_overhead_gib``,
``prefill_floor_s``) and is shared with the benchmarks. Importing this module is cheap (no SGLang, no torch).
"""

from __future__ import annotations

import contextlib
import json
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Union

from .sizing import (GIB, MFS_CAP, QWEN3_30B_A3B, QWEN3_235B_A22B, QWEN25_7B, QWEN25_14B, ModelShape,
                     auto_context_length, prefill_floor_s, split_static)

__all__ = [
    "plan_for_serve_config", "GPUS", "MODELS", "KV_DTYPES", "MFS_CAP", "PREFILL_EFFICIENCY", "ModelSpec",
    "MemoryAdvice", "resolve_model", "plan_memory_for", "engine_kwargs_for", "launch_engine", "prefill_eta_s",
    "prefill_progress",
]

# Total device memory as nvidia-smi and torch report it (the committed result files record these).
GPUS: dict[str, float] = {
    "h100": 81559 / 1024,  # NVIDIA H100 80GB HBM3: 81,559 MiB = 79.65 GiB
    "h100-80gb": 81559 / 1024,
    "h200": 143771 / 1024,  # NVIDIA H200: 143,771 MiB = 140.40 GiB
}
KV_DTYPES = {"bf16": 2, "fp16": 2, "fp8": 1}
SAFETY_GIB = 2.0  # headroom kept beyond the predicted activations/CUDA context
# TTFT / FLOP floor at 800 TFLOP/s, measured with qwen1m (dense) on the 7B-1M shape: 600K on H100 (0.70),
# 1M on H200 (0.69), 128K/256K on H100 (0.73/0.72). Used only for the progress estimate.
PREFILL_EFFICIENCY = 0.70
PEAK_TFLOPS = 800.0


@dataclass(frozen=True)
class ModelSpec:
    """What the planner needs of a model: its shape and its position limit."""

    name: str
    shape: ModelShape
    max_position_embeddings: int


MODELS: dict[str, ModelSpec] = {
    "qwen2.5-7b-1m": ModelSpec("qwen2.5-7b-1m", QWEN25_7B, 1_010_000),
    "qwen2.5-14b-1m": ModelSpec("qwen2.5-14b-1m", QWEN25_14B, 1_010_000),
    "qwen3-30b-a3b-2507": ModelSpec("qwen3-30b-a3b-2507", QWEN3_30B_A3B, 1_010_000),  # with config_1m.json
    "qwen3-235b-a22b-2507": ModelSpec("qwen3-235b-a22b-2507", QWEN3_235B_A22B, 1_010_000),
}
_HF_IDS = {
    "qwen/qwen2.5-7b-instruct-1m": "qwen2.5-7b-1m",
    "qwen/qwen2.5-14b-instruct-1m": "qwen2.5-14b-1m",
    "qwen/qwen3-30b-a3b-instruct-2507": "qwen3-30b-a3b-2507",
    "qwen/qwen3-30b-a3b-thinking-2507": "qwen3-30b-a3b-2507",
    "qwen/qwen3-235b-a22b-instruct-2507": "qwen3-235b-a22b-2507",
}


def resolve_model(model: Union[str, Path, ModelSpec]) -> ModelSpec:
    """A known name (``qwen2.5-7b-1m``, ``qwen2.5-14b-1m``, or their HF ids) or a directory with ``config.json``."""
    if isinstance(model, ModelSpec):
        return model
    key = str(model).strip().lower()
    key = _HF_IDS.get(key, key)
    if key in MODELS:
        return MODELS[key]
    path = Path(model)
    cfg_file = path / "config.json" if path.is_dir() else path
    if cfg_file.is_file():
        with open(cfg_file) as f:
            cfg = json.load(f)
        if "max_position_embeddings" not in cfg:
            raise ValueError(f"{cfg_file} has no max_position_embeddings")
        return ModelSpec(str(path), ModelShape.from_config(cfg), int(cfg["max_position_embeddings"]))
    raise ValueError(
        f"model={str(model)!r} is neither a known model {sorted(MODELS) + sorted(_HF_IDS)} "
        f"nor a directory containing config.json"
    )


def _gpu_gib(gpu_gib: Union[float, str]) -> float:
    if isinstance(gpu_gib, str):
        key = gpu_gib.strip().lower()
        if key not in GPUS:
            raise ValueError(f"gpu_gib={gpu_gib!r} is not a known GPU {sorted(GPUS)}; pass the memory in GiB instead")
        return GPUS[key]
    if isinstance(gpu_gib, bool) or not isinstance(gpu_gib, (int, float)) or not gpu_gib > 0:
        raise ValueError(f"gpu_gib must be a positive number of GiB or a GPU name {sorted(GPUS)}, got {gpu_gib!r}")
    return float(gpu_gib)


@dataclass(frozen=True)
class MemoryAdvice:
    """The planner's answer. GiB values are binary GiB (2**30 bytes). ``engine_kwargs()`` gives SGLang's settings."""

    fits: bool
    model: str
    gpu_gib: float
    prompt_tokens: int
    new_tokens: int
    kv_dtype: str
    context_length: int
    mem_fraction_static: float
    max_running_requests: int
    chunked_prefill_size: int
    max_total_tokens: Optional[int]
    weights_gib: float
    kv_gib: float  # KV of one request of context_length tokens
    kv_pool_gib: float  # the pool SGLang preallocates at this mem_fraction_static
    kv_pool_tokens: int
    req_to_token_gib: float
    overhead_gib: float  # predicted activations + CUDA context + workspaces
    predicted_peak_gib: float
    headroom_gib: float  # gpu_gib - predicted_peak_gib
    min_mem_fraction_static: float  # smallest fraction whose pool holds context_length tokens
    max_mem_fraction_static: float  # largest fraction that leaves overhead + safety free
    explanation: str
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def engine_kwargs(self) -> dict[str, Any]:
        """``sgl.Engine`` / ``launch_server`` settings of this plan (without ``model_path``)."""
        kw: dict[str, Any] = {
            "attention_backend": "qwen1m",
            "context_length": self.context_length,
            "mem_fraction_static": self.mem_fraction_static,
            "max_running_requests": self.max_running_requests,
            "chunked_prefill_size": self.chunked_prefill_size,
        }
        if self.max_total_tokens:
            kw["max_total_tokens"] = self.max_total_tokens
        if self.kv_dtype == "fp8":
            kw["kv_cache_dtype"] = "fp8_e4m3"
        return kw

    def __str__(self) -> str:
        return self.explanation


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def plan_memory_for(
    prompt_tokens: int,
    model: Union[str, Path, ModelSpec] = "qwen2.5-7b-1m",
    gpu_gib: Union[float, str] = "h100",
    kv_dtype: str = "bf16",
    max_running_requests: int = 4,
    new_tokens: int = 512,
    chunked_prefill_size: Optional[int] = None,
    mem_fraction_static: Optional[float] = None,
    max_total_tokens: Optional[int] = None,
    safety_gib: float = SAFETY_GIB,
) -> MemoryAdvice:
    """Does a ``prompt_tokens`` prompt (plus ``new_tokens``) fit on one GPU of ``gpu_gib``, and with which settings?

    SGLang preallocates ``gpu * mem_fraction_static`` for weights, the ``req_to_token`` table and the KV pool; the
    rest must hold the chunked-prefill activations, CUDA context and workspaces (``prefill_overhead_gib``, fitted to
    our measured peaks). The recommended ``mem_fraction_static`` sizes the pool for one request of
    ``context_length`` tokens plus at least 5 % of the GPU (rounded up to 0.05), and never exceeds the largest
    fraction that leaves ``overhead + safety_gib`` free (nor ``MFS_CAP``). Pass ``mem_fraction_static`` (and
    ``max_total_tokens``) to check a setting of your own instead. The chunk defaults to 16384 on GPUs of 100 GiB or
    more and 8192 below, and shrinks (to 2048 at least) if that is what makes the prompt fit.

    Raises ``ValueError`` naming the value and the limit for impossible inputs (e.g. a prompt longer than the
    model's ``max_position_embeddings``).
    """
    spec = resolve_model(model)
    gpu = _gpu_gib(gpu_gib)
    _positive_int("prompt_tokens", prompt_tokens)
    _positive_int("new_tokens", new_tokens)
    if not gpu < math.inf:
        raise ValueError(f"gpu_gib must be a finite number of GiB, got {gpu_gib!r}")
    if isinstance(safety_gib, bool) or not isinstance(safety_gib, (int, float)) or not 0 <= safety_gib < math.inf:
        raise ValueError(f"safety_gib must be a finite number >= 0, got {safety_gib!r}")
    if chunked_prefill_size is not None:
        _positive_int("chunked_prefill_size", chunked_prefill_size)
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be one of {sorted(KV_DTYPES)}, got {kv_dtype!r}")
    if not isinstance(max_running_requests, int) or max_running_requests < 1:
        raise ValueError(f"max_running_requests must be an integer >= 1, got {max_running_requests!r}")
    if mem_fraction_static is not None and (
        not isinstance(mem_fraction_static, (int, float)) or not 0.0 < mem_fraction_static < 1.0
    ):
        raise ValueError(f"mem_fraction_static must be in (0, 1), got {mem_fraction_static!r}")
    limit = spec.max_position_embeddings
    if prompt_tokens + new_tokens > limit:
        raise ValueError(
            f"prompt_tokens={prompt_tokens:,} + new_tokens={new_tokens:,} = {prompt_tokens + new_tokens:,} exceeds "
            f"max_position_embeddings={limit:,} of {spec.name}"
        )
    context = min(auto_context_length(prompt_tokens, new_tokens), limit)
    kv_bytes = KV_DTYPES[kv_dtype]
    if chunked_prefill_size is not None:
        chunks = [chunked_prefill_size]
    else:
        first = 16384 if gpu >= 100 else 8192
        chunks = [c for c in (16384, 8192, 4096, 2048) if c <= first]
    tries = []
    for chunk in chunks:
        tries.append(
            _plan_one(
                spec, gpu, prompt_tokens, new_tokens, kv_dtype, kv_bytes, context, max_running_requests, chunk,
                mem_fraction_static, max_total_tokens, safety_gib,
            )
        )
        if tries[-1].fits:
            return tries[-1]
    return tries[0]  # nothing fits: report the default chunk


def plan_for_serve_config(cfg: Mapping[str, Any], gpu_gib: Union[float, str]) -> "MemoryAdvice":
    """The planner's answer for the settings a ``bench serve-smoke`` run recorded (its ``serve_config``)."""
    return plan_memory_for(
        cfg["prompt_tokens"], gpu_gib=gpu_gib, new_tokens=cfg["new_tokens"],
        mem_fraction_static=cfg["mem_fraction_static"], max_running_requests=cfg["max_running_requests"],
        chunked_prefill_size=cfg["chunked_prefill_size"], max_total_tokens=cfg["context_length"],
    )


def _plan_one(
    spec: ModelSpec, gpu: float, prompt: int, new: int, kv_dtype: str, kv_bytes: int, context: int, mrr: int,
    chunk: int, mfs: Optional[float], mtt: Optional[int], safety: float,
) -> MemoryAdvice:
    shape = spec.shape
    s = split_static(shape, gpu, context, mrr, chunk, kv_bytes, safety, mfs, mtt)
    chosen, plan, overhead, peak, fits = s.mfs, s.plan, s.overhead_gib, s.peak_gib, s.fits
    headroom = gpu - peak
    warnings = []
    if fits and chosen > 0.80:
        warnings.append(f"mem_fraction_static {chosen:.2f} is above the largest value we measured (0.80)")
    head = (
        f"{spec.name}, {prompt:,} + {new:,} tokens on a {gpu:.1f} GiB GPU, KV {kv_dtype}: "
        + ("FITS" if fits else "DOES NOT FIT")
    )
    lines = [
        head,
        f"  weights {s.weights_gib:.1f} GiB + KV of one {context:,}-token request {s.kv_gib:.1f} GiB "
        f"({shape.kv_bytes_per_token(kv_bytes):,} B/token) + req_to_token {s.req_to_token_gib:.2f} GiB "
        f"need mem_fraction_static >= {s.min_mfs:.3f}",
        f"  chunked prefill {chunk} needs ~{overhead:.1f} GiB outside the static pool (+{safety:.1f} GiB safety): "
        f"mem_fraction_static <= {s.max_mfs:.2f}",
        f"  at mem_fraction_static {chosen:.2f}: KV pool {plan.kv_pool_gib:.1f} GiB = {plan.kv_pool_tokens:,} tokens, "
        f"predicted peak {peak:.1f} GiB, headroom {headroom:.1f} GiB",
    ]
    if not s.pool_ok:
        lines.append(
            f"  the KV pool holds {plan.kv_pool_tokens:,} tokens < context_length {context:,}: "
            "use a bigger GPU, fp8 KV, tensor parallelism or a shorter prompt"
        )
    elif not s.room_ok:
        lines.append(f"  too little left for activations: lower mem_fraction_static below {s.max_mfs:.2f}")
    lines += [f"  note: {w}" for w in warnings]
    return MemoryAdvice(
        fits=fits, model=spec.name, gpu_gib=gpu, prompt_tokens=prompt, new_tokens=new, kv_dtype=kv_dtype,
        context_length=context, mem_fraction_static=chosen, max_running_requests=mrr, chunked_prefill_size=chunk,
        max_total_tokens=mtt, weights_gib=s.weights_gib, kv_gib=s.kv_gib, kv_pool_gib=plan.kv_pool_gib,
        kv_pool_tokens=plan.kv_pool_tokens, req_to_token_gib=s.req_to_token_gib, overhead_gib=overhead,
        predicted_peak_gib=peak, headroom_gib=headroom, min_mem_fraction_static=s.min_mfs,
        max_mem_fraction_static=s.max_mfs, explanation="\n".join(lines), warnings=tuple(warnings),
    )


def _local_gpu_gib() -> float:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA GPU visible: pass gpu_gib= to plan for another machine")
    return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory / GIB


def engine_kwargs_for(
    model_path: Union[str, Path],
    prompt_tokens: Optional[int] = None,
    gpu_gib: Union[float, str, None] = None,
    kv_dtype: str = "bf16",
    max_running_requests: int = 4,
    new_tokens: int = 512,
    **overrides: Any,
) -> dict[str, Any]:
    """``sgl.Engine`` keyword arguments for ``model_path`` from :func:`plan_memory_for`; ``overrides`` win.

    ``prompt_tokens`` defaults to the longest prompt the model allows. ``gpu_gib`` defaults to this machine's GPU.
    Raises ``ValueError`` with the planner's explanation when the plan does not fit (unless ``overrides`` set
    ``mem_fraction_static``, in which case the caller has decided).
    """
    spec = resolve_model(model_path)
    if prompt_tokens is None:
        prompt_tokens = spec.max_position_embeddings - new_tokens
    advice = plan_memory_for(
        prompt_tokens, spec, _local_gpu_gib() if gpu_gib is None else gpu_gib, kv_dtype, max_running_requests,
        new_tokens,
    )
    if not advice.fits and "mem_fraction_static" not in overrides:
        raise ValueError("the memory plan does not fit:\n" + advice.explanation)
    kw = {"model_path": str(model_path), **advice.engine_kwargs()}
    kw.update(overrides)
    return kw


def launch_engine(model_path: Union[str, Path], prompt_tokens: Optional[int] = None, **kwargs: Any) -> Any:
    """Start ``sgl.Engine`` with the ``qwen1m`` backend and planner-computed long-context settings.

    Keyword arguments are those of :func:`engine_kwargs_for` plus any ``sgl.Engine`` argument as an override.
    In Jupyter (a running event loop) it applies ``nest_asyncio`` first, as SGLang's own notebooks do. In a script,
    call it under ``if __name__ == "__main__":`` (SGLang spawns its scheduler). Call ``engine.shutdown()`` when done.
    """
    import asyncio

    from .adapter.engine import start_engine

    kw = engine_kwargs_for(model_path, prompt_tokens, **kwargs)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        import nest_asyncio

        nest_asyncio.apply()
    return start_engine(**kw)


def prefill_eta_s(
    prompt_tokens: int,
    model: Union[str, Path, ModelSpec] = "qwen2.5-7b-1m",
    peak_tflops: float = PEAK_TFLOPS,
    efficiency: float = PREFILL_EFFICIENCY,
) -> float:
    """Estimated dense prefill time: FLOP floor at ``peak_tflops`` divided by ``efficiency`` (measured 0.70)."""
    if not 0 < efficiency <= 1:
        raise ValueError(f"efficiency must be in (0, 1], got {efficiency}")
    return prefill_floor_s(resolve_model(model).shape, prompt_tokens, peak_tflops) / efficiency


@contextlib.contextmanager
def prefill_progress(
    prompt_tokens: int,
    model: Union[str, Path, ModelSpec] = "qwen2.5-7b-1m",
    eta_s: Optional[float] = None,
    interval_s: float = 0.5,
    **tqdm_kwargs: Any,
) -> Iterator[Any]:
    """A ``tqdm.auto`` bar over ``prompt_tokens`` that advances on the **estimated** prefill time.

    SGLang does not report prefill progress to the caller, so the bar is a clock against :func:`prefill_eta_s`
    (labelled "estimate"); it stops at 99 % until the block exits, then completes::

        with prefill_progress(600_000):
            out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1})
    """
    from tqdm.auto import tqdm

    eta = prefill_eta_s(prompt_tokens, model) if eta_s is None else float(eta_s)
    bar = tqdm(
        total=prompt_tokens,
        desc=f"prefill (estimate, ~{eta:.0f} s)",
        unit="tok",
        unit_scale=True,
        **tqdm_kwargs,
    )
    stop = threading.Event()
    t0 = time.monotonic()

    def tick() -> None:
        while not stop.wait(interval_s):
            frac = min((time.monotonic() - t0) / eta if eta > 0 else 1.0, 0.99)
            bar.n = int(frac * prompt_tokens)
            bar.refresh()

    thread = threading.Thread(target=tick, daemon=True)
    thread.start()
    try:
        yield bar
        bar.n = prompt_tokens
    finally:
        stop.set()
        thread.join()
        bar.set_postfix_str(f"took {time.monotonic() - t0:.1f} s")
        bar.close()
