"""Capture every layer's attention inputs of a prefill through the reference model, as ``qwen1m`` would see them.

:func:`capture_layers` runs :meth:`TinyQwen2.prefill` (dense attention, the model's DCA and YaRN settings) and hands
each layer's rotated query variants, cached keys and values to a callback *during* the forward pass, so a caller can
reduce a layer to what it needs and drop it before the next one (one layer alive at a time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from sgl_qwen1m.ops.dca.plan import dca_positions, yarn_logit_scale
from sgl_qwen1m.model.torch_qwen2 import Q5_VARIANTS, TinyQwen2, apply_rope, rope_cos_sin

__all__ = ["LayerInputs", "capture_layers", "query_variants"]


@dataclass
class LayerInputs:
    """One layer's attention inputs for a prompt at positions ``0..L-1``.

    ``q5`` ``[L, V, H, D]`` fp32 rotated query variants (``V == 5`` in SGLang's order with DCA, ``V == 1`` without);
    ``k``, ``v`` ``[L, Hkv, D]`` fp32 as cached (keys rotated at ``p % chunk_len`` with DCA);
    ``logit_scale`` the YaRN multiplier of this prompt length; ``chunk_len`` None without DCA.
    """

    layer: int
    q5: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    chunk_len: Optional[int]
    sm_scale: float
    logit_scale: float


def query_variants(model: TinyQwen2, q: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``[T, V, H, D]`` rotations of unrotated queries ``q`` ``[T, H, D]`` at absolute positions ``pos``."""
    d, theta = model.head_dim, model.theta
    if model.dca is None:
        return apply_rope(q.float(), *rope_cos_sin(pos, d, theta))[:, None]
    dp = dca_positions(pos, model.dca)
    return torch.stack([apply_rope(q.float(), *rope_cos_sin(dp[n], d, theta)) for n in Q5_VARIANTS], 1)


def capture_layers(model: TinyQwen2, ids: Sequence[int], on_layer: Callable[[LayerInputs], None]) -> torch.Tensor:
    """Prefill ``ids`` densely and call ``on_layer`` once per layer, in order; returns the last-token logits.

    Sparse prefill (if set on the model) is switched off for the pass: calibration sees full-attention activations.
    """
    orig, sparse = model._attend, model.sparse
    chunk_len = model.dca.chunk_len if model.dca is not None else None

    def hook(q, k_new, k, v, pos, scale_len, impl, layer=0):  # noqa: ANN001 - mirrors TinyQwen2._attend
        scale = float(yarn_logit_scale(torch.tensor([scale_len]), model.dca)[0])
        on_layer(LayerInputs(layer, query_variants(model, q, pos), k.float(), v.float(), chunk_len, model.sm_scale,
                             scale))
        return orig(q, k_new, k, v, pos, scale_len, impl, layer=layer)

    model._attend = hook  # type: ignore[method-assign]
    model.sparse = None
    try:
        logits, _ = model.prefill(ids)
    finally:
        del model._attend  # the instance attribute; the class method shows again
        model.sparse = sparse
    return logits
