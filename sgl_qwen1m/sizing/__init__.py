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

Modules: :mod:`.shape` (``ModelShape`` and the known shapes), :mod:`.flops` (the prefill floor), :mod:`.memory` (the
static split and the activation overhead). Everything is importable from ``sgl_qwen1m.sizing``.
"""

from __future__ import annotations

from . import flops, memory, shape
from .flops import head_budgets, mean_keys_per_query, prefill_flops, prefill_floor_s
from .memory import (
    MFS_CAP,
    OVERHEAD_FIXED_GIB,
    MemoryPlan,
    StaticSplit,
    activation_bytes_per_token,
    auto_context_length,
    plan_memory,
    prefill_overhead_gib,
    split_static,
)
from .shape import GIB, QWEN3_30B_A3B, QWEN3_235B_A22B, QWEN25_7B, QWEN25_14B, ModelShape, kv_dtype_label

__all__ = [*shape.__all__, *flops.__all__, *memory.__all__]
