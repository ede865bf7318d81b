"""Arithmetic floors and memory arithmetic for Qwen2- and Qwen3-MoE-shaped models (pure Python, no GPU): the planner of
:mod:`sgl_qwen1m.api` and the benchmarks (``python -m sgl_qwen1m plan``) share it.

The prefill floor is the time the GPU would need at ``peak_tflops`` for the prefill FLOPs alone:

* linear layers: ``2 * params_per_layer * layers`` FLOPs per token (embedding and LM head excluded; the LM head
  runs on the last token only), 13.05 GFLOP/token for Qwen2.5-7B;
* dense causal attention: ``2 * head_dim * heads * layers * L**2`` (QK^T and PV, each ``2*d`` FLOPs per
  query-key pair, over half of the ``L x L`` square);
* sparse attention: ``4 * head_dim * L * sum_heads min(budget, L/2)`` with the per-head vertical+slash budget.

Mixture-of-experts layers (qwen3_moe) count every expert's weights for memory and only the ``num_experts_per_tok``
active experts (plus the router) for FLOPs.

For Qwen2.5-7B at 800 TFLOP/s this gives 6.4 s at 128K and 21.5 s at 256K dense, 2.9 s and 5.8 s with the
7B budgets (mean 11.6K keys per query); see shared/gpu/README.md.
"""

from __future__ import annotations

import json
import math
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = [
    "ModelShape",
    "QWEN25_7B",
    "QWEN25_14B",
    "QWEN3_30B_A3B",
    "QWEN3_235B_A22B",
    "GIB",
    "prefill_flops",
    "prefill_floor_s",
    "mean_keys_per_query",
    "head_budgets",
    "MemoryPlan",
    "plan_memory",
    "auto_context_length",
    "prefill_overhead_gib",
    "activation_bytes_per_token",
    "OVERHEAD_FIXED_GIB",
    "MFS_CAP",
    "StaticSplit",
    "split_static",
]

GIB = float(1 << 30)


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen2-style decoder that FLOP and memory arithmetic needs.

    ``num_experts > 0`` makes every layer's MLP a mixture of ``num_experts`` SwiGLU experts of width
    ``moe_intermediate``, ``experts_per_tok`` active per token (Qwen3-MoE; ``intermediate`` is then unused).
    ``qkv_bias`` (Qwen2) and ``qk_norm`` (Qwen3) only change the parameter count by a few thousand per layer.
    """

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = False
    num_experts: int = 0
    experts_per_tok: int = 0
    moe_intermediate: int = 0
    qkv_bias: bool = True
    qk_norm: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ModelShape":
        """Build from an HF ``config.json`` dict (``head_dim`` defaults to ``hidden // heads``)."""
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(
            layers=int(cfg["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads", heads)),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate=int(cfg["intermediate_size"]),
            vocab=int(cfg["vocab_size"]),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            num_experts=int(cfg.get("num_experts", 0) or 0),
            experts_per_tok=int(cfg.get("num_experts_per_tok", 0) or 0),
            moe_intermediate=int(cfg.get("moe_intermediate_size", 0) or 0),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") in (None, "qwen2", "qwen2_moe"))),
            qk_norm=cfg.get("model_type") in ("qwen3", "qwen3_moe"),
        )

    @classmethod
    def from_dir(cls, model_dir: Union[str, Path]) -> "ModelShape":
        """Read ``<model_dir>/config.json``."""
        with open(Path(model_dir) / "config.json") as f:
            return cls.from_config(json.load(f))

    @property
    def _attn_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.hidden * (q + 2 * kv) + q * self.hidden

    @property
    def layer_linear_params(self) -> int:
        """Weights one token multiplies in a layer: q/k/v/o and the gated MLP, or the router plus the active
        experts of a MoE layer (biases and norms ignored). FLOPs use this."""
        if self.num_experts:
            return self._attn_params + self.hidden * self.num_experts + 3 * self.hidden * self.moe_intermediate * self.experts_per_tok
        return self._attn_params + 3 * self.hidden * self.intermediate

    @property
    def layer_weight_params(self) -> int:
        """Weights stored per layer: as ``layer_linear_params`` but with every expert (memory uses this)."""
        if self.num_experts:
            return self._attn_params + self.hidden * self.num_experts + 3 * self.hidden * self.moe_intermediate * self.num_experts
        return self.layer_linear_params

    @property
    def mlp_activation_width(self) -> int:
        """Live MLP activation elements per prefill token: gate/up and the activated product (``3 * intermediate``);
        for MoE, per active expert, gate/up, product and the expert's output (``topk * (3 * moe_inter + hidden)``)."""
        if self.num_experts:
            return self.experts_per_tok * (3 * self.moe_intermediate + self.hidden)
        return 3 * self.intermediate

    @property
    def linear_flops_per_token(self) -> float:
        """FLOPs of all linear layers for one prefill token (13.05e9 for Qwen2.5-7B)."""
        return 2.0 * self.layers * self.layer_linear_params

    @property
    def num_params(self) -> int:
        """All parameters: layers, embedding and (untied) LM head; biases and norms approximated."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        per_layer = (self.layer_weight_params + (q + 2 * kv) * self.qkv_bias + 2 * self.hidden  # qkv bias + 2 norms
                     + 2 * self.head_dim * self.qk_norm)
        emb = self.vocab * self.hidden
        return self.layers * per_layer + emb * (1 if self.tie_embeddings else 2) + self.hidden

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        """Weight memory in bytes (15.2e9 for Qwen2.5-7B, 61.1e9 for Qwen3-30B-A3B in bf16)."""
        return self.num_params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V cache bytes per token over all layers (57,344 for Qwen2.5-7B, 98,304 for Qwen3-30B-A3B in bf16;
        half in FP8)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


# Qwen2.5-7B-Instruct(-1M): 28 layers, 28 query heads, 4 KV heads, head_dim 128.
QWEN25_7B = ModelShape(layers=28, hidden=3584, heads=28, kv_heads=4, head_dim=128, intermediate=18944, vocab=152064)
# Qwen2.5-14B-Instruct(-1M): 48 layers, 40 query heads, 8 KV heads, head_dim 128.
QWEN25_14B = ModelShape(layers=48, hidden=5120, heads=40, kv_heads=8, head_dim=128, intermediate=13824, vocab=152064)
# Qwen3-30B-A3B(-Instruct/Thinking-2507): 48 layers, 32:4 heads, head_dim 128, 128 experts of 768, top-8, qk-norm.
QWEN3_30B_A3B = ModelShape(layers=48, hidden=2048, heads=32, kv_heads=4, head_dim=128, intermediate=6144, vocab=151936,
                           num_experts=128, experts_per_tok=8, moe_intermediate=768, qkv_bias=False, qk_norm=True)
# Qwen3-235B-A22B(-Instruct-2507): 94 layers, 64:4 heads, head_dim 128, 128 experts of 1536, top-8, qk-norm.
QWEN3_235B_A22B = ModelShape(layers=94, hidden=4096, heads=64, kv_heads=4, head_dim=128, intermediate=12288,
                             vocab=151936, num_experts=128, experts_per_tok=8, moe_intermediate=1536, qkv_bias=False,
                             qk_norm=True)


def head_budgets(sparse_cfg: Sequence[Mapping[str, Sequence[Any]]]) -> list[int]:
    """Per-head ``vertical + slash`` key budgets from a ``sparse_attention_config.json`` list."""
    out: list[int] = []
    for layer in sparse_cfg:
        for entry in layer.values():
            out.append(int(entry[1]) + int(entry[2]))
    return out


def mean_keys_per_query(sparse_cfg: Sequence[Mapping[str, Sequence[Any]]]) -> float:
    """Mean ``vertical + slash`` budget over all heads (11,570 for Qwen2.5-7B-Instruct-1M)."""
    budgets = head_budgets(sparse_cfg)
    if not budgets:
        raise ValueError("sparse_attention_config has no heads")
    return sum(budgets) / len(budgets)


def prefill_flops(shape: ModelShape, prompt_tokens: int, keys_per_query: Optional[float] = None) -> float:
    """Prefill FLOPs of one prompt: linear layers plus causal attention (dense, or sparse with a mean budget)."""
    n = float(prompt_tokens)
    linear = shape.linear_flops_per_token * n
    all_heads = shape.heads * shape.layers
    if keys_per_query is None:
        attn = 2.0 * shape.head_dim * all_heads * n * n
    else:
        attn = 4.0 * shape.head_dim * all_heads * n * min(float(keys_per_query), n / 2.0)
    return linear + attn


def prefill_floor_s(
    shape: ModelShape,
    prompt_tokens: int,
    peak_tflops: float = 800.0,
    keys_per_query: Optional[float] = None,
) -> float:
    """Seconds the prefill needs at ``peak_tflops`` (dense bf16 H100 ~800 TFLOP/s)."""
    if peak_tflops <= 0:
        raise ValueError(f"peak_tflops must be > 0, got {peak_tflops}")
    return prefill_flops(shape, prompt_tokens, keys_per_query) / (peak_tflops * 1e12)


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
