"""Structured dummy weights whose attention decays with distance (``--weights local`` backends of the e2e bench).

SGLang's dummy loader fills every weight uniformly in about [-1e-3, 1e-3]. Queries and keys are then ~1e-4 and the
attention softmax is flat: every column and diagonal scores the same up to rounding, vertical-slash selection picks
scattered diagonals, and a 64x64-tile kernel computes 48-83% of the dense work
(``benchmarks/results/sparse-e2e-h100/sparse_stats_h100.log``). Trained long-context models attend mostly to nearby
tokens, so that measurement says little about their prefill.

The ``local`` setting keeps every random weight and overwrites one thing: the ``q_proj`` and ``k_proj`` biases of
every layer are set to the same constant vector per head, ``amplitude`` on the lower-frequency rotary pairs and 0 on
the ``skip_high_pairs`` highest-frequency pairs. After RoPE the score of a query and a key at distance ``d`` is then
``amplitude**2 / sqrt(D) * 2 * sum_i cos(theta_i * d)`` over the kept pairs: large at ``d = 0`` and decaying roughly
logarithmically with ``d`` (geometric RoPE frequencies), i.e. attention mass falls off like a power of the distance.
Zeroing the fastest pairs removes the score oscillation that would otherwise scatter the top diagonals.

Dense kernels do the same work on either weights; the sparse path chooses its pattern from the real estimation on
these weights (nothing in the sparse path knows about them). :func:`slash_spread` measures the property on CPU.
"""

from __future__ import annotations

import math

import torch

__all__ = ["WEIGHT_KINDS", "local_bias_vector", "local_attention_biases", "slash_spread"]

WEIGHT_KINDS = ("dummy", "local")
DEFAULT_AMPLITUDE = 1.5
DEFAULT_SKIP_HIGH_PAIRS = 16


def local_bias_vector(
    head_dim: int, amplitude: float = DEFAULT_AMPLITUDE, skip_high_pairs: int = DEFAULT_SKIP_HIGH_PAIRS
) -> torch.Tensor:
    """``[head_dim]`` float32 bias of one head (neox rotary layout: pair ``i`` is dims ``i`` and ``i + head_dim/2``)."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    half = head_dim // 2
    if not 0 <= skip_high_pairs < half:
        raise ValueError(f"skip_high_pairs={skip_high_pairs} must be in [0, {half})")
    v = torch.full((head_dim,), float(amplitude))
    v[:skip_high_pairs] = 0.0  # pair i rotates with theta_i = base**(-2i/D): i = 0 is the fastest
    v[half : half + skip_high_pairs] = 0.0
    return v


def local_attention_biases(
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    amplitude: float = DEFAULT_AMPLITUDE,
    skip_high_pairs: int = DEFAULT_SKIP_HIGH_PAIRS,
) -> list[tuple[str, torch.Tensor]]:
    """HF-named ``(name, tensor)`` pairs for ``Engine.update_weights_from_tensor``: q/k biases of every layer.

    ``q_proj.bias`` is ``[num_heads * head_dim]``, ``k_proj.bias`` ``[num_kv_heads * head_dim]`` (float32, CPU).
    """
    if min(num_layers, num_heads, num_kv_heads) <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"bad shape: layers={num_layers} heads={num_heads} kv_heads={num_kv_heads}")
    v = local_bias_vector(head_dim, amplitude, skip_high_pairs)
    out: list[tuple[str, torch.Tensor]] = []
    for i in range(num_layers):
        pre = f"model.layers.{i}.self_attn"
        out.append((f"{pre}.q_proj.bias", v.repeat(num_heads).contiguous()))
        out.append((f"{pre}.k_proj.bias", v.repeat(num_kv_heads).contiguous()))
    return out


def slash_spread(
    bias: torch.Tensor, length: int, num_slash: int, rope_base: float = 1e7, last_q: int = 64, block: int = 64
) -> tuple[int, int]:
    """How scattered the top ``num_slash`` diagonals are when q = k = ``bias`` (CPU, one head).

    Scores the last ``last_q`` queries against ``length`` keys as the estimation does (softmax, then sums per
    diagonal) and returns ``(block diagonals the top diagonals touch, the minimum for a contiguous band)``. A ratio
    near 1 means a tile kernel computes little more than the budget.
    """
    from sgl_qwen1m.model.torch_qwen2 import apply_rope, rope_cos_sin

    d = bias.numel()
    pos = torch.arange(length)
    qpos = pos[-last_q:]
    cos, sin = rope_cos_sin(pos, d, rope_base)
    k = apply_rope(bias.double().expand(length, 1, d), cos, sin)[:, 0]
    q = k[-last_q:]  # q = k = bias: the same rotation at the same positions
    s = (q @ k.T) / math.sqrt(d)
    off = qpos.view(-1, 1) - pos.view(1, -1)
    p = torch.softmax(s.masked_fill(off < 0, float("-inf")), dim=-1)
    diag = torch.zeros(length, dtype=torch.float64).index_add_(0, off.clamp(min=0).flatten(), p.flatten())
    top = torch.topk(diag, min(num_slash, length)).indices
    blocks = torch.unique(torch.cat([top // block, (top + block - 1) // block]))
    return int(blocks.numel()), num_slash // block + 1
