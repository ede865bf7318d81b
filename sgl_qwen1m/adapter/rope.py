"""Swap SGLang's unfused ``DualChunkRotaryEmbedding.forward`` for the one-launch Triton ``dca_rope`` on a loaded model.

SGLang 0.5.17's module (``layers/rotary_embedding/rope_variant.py:678-833``) computes the five query rotations and
the key rotation with about sixty small PyTorch ops per layer; in a long-context decode step those launches cost
more than attention itself. The replacement reads the module's own cos/sin buffers, so it computes the same
function (fp32 arithmetic instead of bf16 intermediates). Only models served by ``qwen1m`` are touched: the
backend calls :func:`install_fused_dca_rope` on its model runner's model. Modules with ``offsets``, GPT-J style
rotation or partial rotary dims keep SGLang's forward.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, Optional

import torch

from sgl_qwen1m.ops.dca.plan import DCARopeCaches

__all__ = ["install_fused_dca_rope"]


def _fused_forward(module: Any, caches: DCARopeCaches, positions: torch.Tensor, query: torch.Tensor,
                   key: torch.Tensor, offsets: Optional[torch.Tensor] = None):
    if offsets is not None or query.dim() != 2 or key.dim() != 2 or not query.is_cuda:
        return type(module).forward(module, positions, query, key, offsets)
    from sgl_qwen1m.ops.dca.rope import dca_rope

    return dca_rope(positions, query, key, caches, module.head_size)


def replacement_signature() -> inspect.Signature:
    """What a model's ``self.rotary_emb(...)`` call may pass to the installed replacement (checked against SGLang's
    model sources by ``sgl_qwen1m.adapter.conformance``)."""
    return inspect.signature(functools.partial(_fused_forward, None, None))


def install_fused_dca_rope(model: torch.nn.Module) -> int:
    """Replace ``forward`` on every eligible ``DualChunkRotaryEmbedding`` of ``model``; returns how many."""
    from sglang.srt.layers.rotary_embedding.rope_variant import DualChunkRotaryEmbedding

    n = 0
    for m in model.modules():
        if not isinstance(m, DualChunkRotaryEmbedding) or not m.is_neox_style or m.rotary_dim != m.head_size:
            continue
        caches = DCARopeCaches(
            q=m.cos_sin_q_cache, qc=m.cos_sin_qc_cache, k=m.cos_sin_k_cache,
            qc_no_clamp=m.cos_sin_qc_no_clamp_cache, q_inter=m.cos_sin_q_inter_cache,
            chunk_len=m.chunk_size - m.local_size,
        )
        m.forward = functools.partial(_fused_forward, m, caches)
        n += 1
    return n
