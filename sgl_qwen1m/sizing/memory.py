"""Memory arithmetic: the context length a run needs, SGLang's static split (weights, ``req_to_token``, KV pool) at a
``mem_fraction_static``, the device memory beyond it during a chunked prefill, and the bounds of the fraction for one
long request. Part of :mod:`sgl_qwen1m.sizing`."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Optional

from .shape import GIB, ModelShape

__all__ = [
    "auto_context_length",
    "MemoryPlan",
    "plan_memory",
    "prefill_overhead_gib",
    "activation_bytes_per_token",
    "OVERHEAD_FIXED_GIB",
    "MFS_CAP",
    "StaticSplit",
    "split_static",
]


def auto_context_length(max_prompt_tokens: int, new_tokens: int, margin: int = 1024, align: int = 4096) -> int:
    """Smallest multiple of ``align`` that holds the longest prompt, its new tokens and a margin."""
    need = max_prompt_tokens + new_tokens + margin
    return -(-need // align) * align


@dataclass(frozen=True)
class MemoryPlan:
    """What SGLang's static allocation leaves for the KV pool and for activations (approximate, GiB)."""

    gpu_gib: float
    mem_fraction_static: float
    weights_gib: float
    req_to_token_gib: float
    kv_pool_gib: float
    kv_pool_tokens: int
    headroom_gib: float
    context_length: int

    @property
    def fits(self) -> bool:
        """True when the pool holds one request of ``context_length`` tokens."""
        return self.kv_pool_tokens >= self.context_length

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly view, rounded to MiB."""
        return {
            "gpu_gib": round(self.gpu_gib, 2),
            "mem_fraction_static": self.mem_fraction_static,
            "weights_gib": round(self.weights_gib, 2),
            "req_to_token_gib": round(self.req_to_token_gib, 3),
            "kv_pool_gib": round(self.kv_pool_gib, 2),
            "kv_pool_tokens": self.kv_pool_tokens,
            "headroom_gib": round(self.headroom_gib, 2),
            "context_length": self.context_length,
            "fits": self.fits,
        }


def _weights_and_table_gib(shape: ModelShape, context_length: int, max_running_requests: int) -> tuple[float, float]:
    """GiB of the weights and of SGLang's ``req_to_token`` table (int32, ``(mrr + 1) x (context_length + 4)``)."""
    return shape.weight_bytes() / GIB, (max_running_requests + 1) * (context_length + 4) * 4 / GIB


def plan_memory(
    shape: ModelShape,
    gpu_gib: float,
    mem_fraction_static: float,
    context_length: int,
    max_running_requests: int = 2048,
    max_total_tokens: Optional[int] = None,
    kv_dtype_bytes: int = 2,
) -> MemoryPlan:
    """Mirror SGLang 0.5.17's static sizing: ``gpu * mfs`` holds weights, ``req_to_token`` and the KV pool.

    ``req_to_token`` is an int32 table of ``(max_running_requests + 1) x (context_length + 4)``; SGLang uses at
    least 2048 rows unless ``max_running_requests`` is given. ``headroom`` (``gpu * (1 - mfs)``) is what
    activations, the FlashInfer workspace and the CUDA context share. ``kv_dtype_bytes``: 2 for bf16/fp16, 1 for fp8.
    """
    static = gpu_gib * mem_fraction_static
    weights, r2t = _weights_and_table_gib(shape, context_length, max_running_requests)
    pool_gib = max(0.0, static - weights - r2t)
    kv_token = shape.kv_bytes_per_token(kv_dtype_bytes)
    tokens = int(pool_gib * GIB // kv_token)
    if max_total_tokens is not None and max_total_tokens > 0 and max_total_tokens < tokens:
        tokens = max_total_tokens
        pool_gib = tokens * kv_token / GIB
    headroom = gpu_gib - weights - r2t - pool_gib
    return MemoryPlan(
        gpu_gib=gpu_gib,
        mem_fraction_static=mem_fraction_static,
        weights_gib=weights,
        req_to_token_gib=r2t,
        kv_pool_gib=pool_gib,
        kv_pool_tokens=tokens,
        headroom_gib=headroom,
        context_length=context_length,
    )


# Device memory outside SGLang's static pool that does not grow with the chunk: CUDA context, cuBLAS/FlashInfer
# workspaces, decode CUDA graphs. Fitted with the per-token term below to the committed peaks (nvidia-smi,
# device-wide): 7B-1M shape, chunk 8192 on H100 (600K: 50.0 GiB; 128K/256K: 32.0 GiB) and chunk 16384 on H200
# (1M: 73.0 GiB); the model reproduces all three within 0.1 GiB.
OVERHEAD_FIXED_GIB = 2.1


def prefill_overhead_gib(shape: ModelShape, chunked_prefill_size: int, dtype_bytes: int = 2) -> float:
    """Predicted device memory beyond weights, ``req_to_token`` and the KV pool during a chunked prefill (GiB).

    ``OVERHEAD_FIXED_GIB`` plus the live activations of one prefill chunk: per token the gate/up output and the
    activated MLP (``3 * intermediate``), the 5-wide DCA query (``5 * heads * head_dim``), K and V
    (``2 * kv_heads * head_dim``) and about six hidden-size buffers (residual, norm output, attention output,
    temporaries) in ``dtype_bytes`` each: 196.6 KB/token for Qwen2.5-7B, 1.5 GiB at 8192 tokens.
    """
    if chunked_prefill_size <= 0:
        raise ValueError(f"chunked_prefill_size must be > 0, got {chunked_prefill_size}")
    return OVERHEAD_FIXED_GIB + chunked_prefill_size * activation_bytes_per_token(shape, dtype_bytes) / GIB


def activation_bytes_per_token(shape: ModelShape, dtype_bytes: int = 2) -> int:
    """Live activation bytes per token of a forward step (the per-token term of :func:`prefill_overhead_gib`)."""
    return dtype_bytes * (
        shape.mlp_activation_width + 5 * shape.heads * shape.head_dim + 2 * shape.kv_heads * shape.head_dim + 6 * shape.hidden
    )


MFS_CAP = 0.90  # never recommend a larger mem_fraction_static


def _round_up(x: float, step: float) -> float:
    return round(math.ceil(x / step - 1e-9) * step, 4)


def _round_down(x: float, step: float) -> float:
    return round(math.floor(x / step + 1e-9) * step, 4)


@dataclass(frozen=True)
class StaticSplit:
    """One request of ``context_length`` tokens against SGLang's static pool at ``mem_fraction_static`` (GiB).

    ``min_mfs``: the smallest fraction whose pool holds the request; ``max_mfs``: the largest that leaves
    ``overhead_gib + safety`` free (at most ``MFS_CAP``); ``plan``: :func:`plan_memory` at ``mfs``; ``peak_gib``:
    weights + ``req_to_token`` + KV pool + ``overhead_gib``.
    """

    plan: MemoryPlan
    kv_gib: float  # KV of one request of context_length tokens
    overhead_gib: float
    min_mfs: float
    max_mfs: float
    room_ok: bool  # overhead + safety fit outside the static pool

    @property
    def mfs(self) -> float:
        return self.plan.mem_fraction_static

    @property
    def weights_gib(self) -> float:
        return self.plan.weights_gib

    @property
    def req_to_token_gib(self) -> float:
        return self.plan.req_to_token_gib

    @property
    def peak_gib(self) -> float:
        return self.plan.weights_gib + self.plan.req_to_token_gib + self.plan.kv_pool_gib + self.overhead_gib

    @property
    def pool_ok(self) -> bool:
        """The pool holds ``context_length`` tokens."""
        return self.plan.kv_pool_tokens >= self.plan.context_length

    @property
    def fits(self) -> bool:
        """Both the pool and the activations fit."""
        return self.pool_ok and self.room_ok


def split_static(
    shape: ModelShape,
    gpu_gib: float,
    context_length: int,
    max_running_requests: int,
    chunked_prefill_size: int,
    kv_dtype_bytes: int = 2,
    safety_gib: float = 2.0,
    mem_fraction_static: Optional[float] = None,
    max_total_tokens: Optional[int] = None,
) -> StaticSplit:
    """Bounds of ``mem_fraction_static`` for one ``context_length`` request and the split at the chosen fraction.

    Without ``mem_fraction_static`` the choice sizes the pool for the request plus at least 5 % of the GPU (rounded
    up to 0.05), at most ``max_mfs``; if the request cannot fit, the fraction it would need (rounded up to 0.01).
    """
    gpu, context, mrr = gpu_gib, context_length, max_running_requests
    weights, r2t = _weights_and_table_gib(shape, context, mrr)
    kv_one = context * shape.kv_bytes_per_token(kv_dtype_bytes) / GIB
    overhead = prefill_overhead_gib(shape, chunked_prefill_size)
    mfs_min = (weights + r2t + kv_one) / gpu
    mfs_max = min(MFS_CAP, _round_down((gpu - overhead - safety_gib) / gpu, 0.01))
    if mem_fraction_static is None:
        chosen = min(_round_up(mfs_min + 0.05, 0.05), mfs_max)
        chosen = max(chosen, min(_round_up(mfs_min, 0.01), MFS_CAP))  # if it cannot fit, show what it would need
    else:
        chosen = mem_fraction_static
    plan = plan_memory(shape, gpu, chosen, context, mrr, max_total_tokens, kv_dtype_bytes=kv_dtype_bytes)
    split = StaticSplit(plan, kv_one, overhead, mfs_min, mfs_max, room_ok=False)
    room = gpu * (1 - chosen) >= overhead + safety_gib - 1e-9 and gpu - split.peak_gib >= safety_gib - 1e-9
    return dataclasses.replace(split, room_ok=room)
