"""The per-head vector behind the "distance-decaying" (``-local``) dummy weights, shared by the benchmark recipes
(:mod:`sgl_qwen1m.bench.local_weights`, which sets it into real checkpoints' tensors) and the kernel-work proxy
(:mod:`sgl_qwen1m.refine.work`, which rotates it directly). Plain torch; the reasoning is in ``bench.local_weights``.
"""

from __future__ import annotations

import torch

__all__ = ["DEFAULT_AMPLITUDE", "DEFAULT_SKIP_HIGH_PAIRS", "local_bias_vector"]

DEFAULT_AMPLITUDE = 1.5
DEFAULT_SKIP_HIGH_PAIRS = 16


def local_bias_vector(
    head_dim: int, amplitude: float = DEFAULT_AMPLITUDE, skip_high_pairs: int = DEFAULT_SKIP_HIGH_PAIRS
) -> torch.Tensor:
    """``[head_dim]`` float32 bias of one head (neox rotary layout: pair ``i`` is dims ``i`` and ``i + head_dim/2``):
    ``amplitude`` on every rotary pair but the ``skip_high_pairs`` fastest, which are 0."""
    if head_dim % 2:
        raise ValueError(f"head_dim must be even, got {head_dim}")
    half = head_dim // 2
    if not 0 <= skip_high_pairs < half:
        raise ValueError(f"skip_high_pairs={skip_high_pairs} must be in [0, {half})")
    v = torch.full((head_dim,), float(amplitude))
    v[:skip_high_pairs] = 0.0  # pair i rotates with theta_i = base**(-2i/D): i = 0 is the fastest
    v[half : half + skip_high_pairs] = 0.0
    return v
