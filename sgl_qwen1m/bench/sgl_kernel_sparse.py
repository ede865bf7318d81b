"""SGLang's own vertical-slash kernel (``sgl_kernel.sparse_flash_attn``, MInference's FA2-based ``fwd_sparse``), wrapped
for the kernel-design comparison in ``python -m sgl_qwen1m.bench ops-sparse``. Not used by the ``qwen1m`` backend."""

from __future__ import annotations

import torch

__all__ = ["convert_indexes", "sparse_attention"]


def convert_indexes(q_len: int, kv_len: int, v_idx: torch.Tensor, s_idx: torch.Tensor, v_count: torch.Tensor,
                    s_count: torch.Tensor, block: int = 64):
    """``v_idx`` ``[1, H, KV]`` ascending, ``s_idx`` ``[1, H, KS]`` diagonal offsets descending, per-head counts ``[H]``.

    Returns sgl_kernel's ``(block_count, block_offset, column_count, column_index)``.
    """
    from sgl_kernel.sparse_flash_attn import convert_vertical_slash_indexes_mergehead

    dev = v_idx.device
    qs = torch.tensor([q_len], dtype=torch.int32, device=dev)
    ks = torch.tensor([kv_len], dtype=torch.int32, device=dev)
    return convert_vertical_slash_indexes_mergehead(qs, ks, v_idx, s_idx, v_count, s_count, q_len, block, block, True)


def sparse_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, idx, sm_scale: float):
    """Causal vertical-slash attention: ``q`` ``[1, Tq, H, D]``, ``k``/``v`` ``[1, L, Hkv, D]`` contiguous -> (out, lse)."""
    from sgl_kernel.sparse_flash_attn import sparse_attn_func

    bc, bo, cc, ci = idx
    return sparse_attn_func(q, k, v, bc, bo, cc, ci, softmax_scale=sm_scale, causal=True, return_softmax_lse=True)
