"""Prefill FLOPs and their time floor at a peak rate, dense or with the sparse budgets (formulas in
:mod:`sgl_qwen1m.sizing`)."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

from .shape import ModelShape

__all__ = ["head_budgets", "mean_keys_per_query", "prefill_flops", "prefill_floor_s"]


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
