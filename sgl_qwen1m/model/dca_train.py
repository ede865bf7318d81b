"""Differentiable, memory-lean Dual Chunk Attention for training-time augmentation (plain torch, any device).

Legend: B batch, H heads (KV heads already repeated), T tokens, D head dim, C DCA chunk length.

Queries of DCA chunk ``i`` (rows ``[iC, (i+1)C)``) see keys ``[0, (i-1)C)`` with ``q_inter``, ``[(i-1)C, iC)`` with
``q_succ`` and ``[iC, p]`` with ``q_intra`` (causal): one softmax over the concatenated logits per query chunk, so
memory is that of causal attention, never ``3 x T x T``. Equals
:func:`sgl_qwen1m.ops.dca.reference.dca_attention_ref` (tested), but differentiable and batched.
"""

from __future__ import annotations

import torch

__all__ = ["dca_blocked_attention"]


def dca_blocked_attention(
    q_intra: torch.Tensor,
    q_succ: torch.Tensor,
    q_inter: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_len: int,
    scale: float,
) -> torch.Tensor:
    """DCA attention of a whole sequence (positions ``0..T-1``).

    Parameters
    ----------
    q_intra, q_succ, q_inter : torch.Tensor
        ``[B, H, T, D]`` queries rotated at the DCA variant positions.
    k, v : torch.Tensor
        ``[B, H, T, D]`` keys rotated at ``p % C`` and values.
    chunk_len : int
        ``C = chunk_size - local_size``.
    scale : float
        Logit multiplier (softmax scale times the YaRN factor ``s**2``).

    Returns
    -------
    torch.Tensor
        ``[B, H, T, D]`` in ``v.dtype``.
    """
    t = q_intra.shape[2]
    c = chunk_len
    causal = torch.ones(c, c, dtype=torch.bool, device=k.device).tril()
    outs = []
    for s in range(0, t, c):
        e = min(s + c, t)
        parts = []
        if s >= 2 * c:
            parts.append(q_inter[:, :, s:e] @ k[:, :, : s - c].transpose(-1, -2))
        if s >= c:
            parts.append(q_succ[:, :, s:e] @ k[:, :, s - c : s].transpose(-1, -2))
        intra = q_intra[:, :, s:e] @ k[:, :, s:e].transpose(-1, -2)
        parts.append(intra.masked_fill(~causal[: e - s, : e - s], float("-inf")))
        p = (torch.cat(parts, -1).float() * scale).softmax(-1)
        outs.append(p.to(v.dtype) @ v[:, :, :e])
    return torch.cat(outs, 2)
