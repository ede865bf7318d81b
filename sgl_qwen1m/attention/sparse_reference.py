"""fp32 oracles for vertical-slash sparse prefill, and the attention-recall metric.

Slow and obvious on purpose (they materialise ``[H, n, L]``); the Triton kernels in ``kernels_sparse.py`` are
tested against them. Rules are documented in :mod:`sgl_qwen1m.attention.vertical_slash`.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from sgl_qwen1m.attention.dca import stage_of
from sgl_qwen1m.attention.vertical_slash import BLOCK, PAD

__all__ = ["ESTIMATE_VARIANTS", "estimate_vs_ref", "pattern_mask_ref", "attention_recall"]

# Query variant used to *score* keys of each DCA stage (intra, succ, inter): the continuous-position variants
# for the two cross stages (SGLang's 5-wide q: intra, succ, inter, succ_critical, inter_critical).
ESTIMATE_VARIANTS = (0, 3, 4)


def estimate_vs_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    q_positions: torch.Tensor,
    chunk_len: Optional[int],
    sm_scale: float,
    logit_scale: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash scores of one piece from its last queries, in fp32.

    Parameters
    ----------
    q : torch.Tensor
        ``[n, V, H, D]`` query variants of the estimation rows (``V == 5`` with DCA, ``V >= 1`` without).
    k : torch.Tensor
        ``[L, Hkv, D]`` keys of positions ``0..L-1`` (``L`` = the piece's ``q_end``).
    q_positions : torch.Tensor
        ``[n]`` absolute positions (all in one DCA chunk).

    Returns
    -------
    vertical : ``[H, L]`` column sums of the softmax; slash : ``[H, L]`` sums along ``o = pos - c``.
    """
    n, _, h, _ = q.shape
    length = k.shape[0]
    g = h // k.shape[1]
    kf = k.float().repeat_interleave(g, dim=1)
    pos = q_positions.long().to(k.device)
    kpos = torch.arange(length, device=k.device)
    if chunk_len is None:
        logits = torch.einsum("nhd,lhd->hnl", q[:, 0].float(), kf)
    else:
        per = torch.stack([torch.einsum("nhd,lhd->hnl", q[:, v].float(), kf) for v in ESTIMATE_VARIANTS])
        stage = stage_of(pos[:, None], kpos[None, :], chunk_len).clamp(min=0)  # [n, L]
        logits = torch.gather(per, 0, stage[None, None].expand(1, h, n, length))[0]
    logits = logits * (sm_scale * logit_scale)
    logits = logits.masked_fill(kpos[None, None, :] > pos[None, :, None], float("-inf"))
    p = torch.softmax(logits, dim=-1)  # [H, n, L]
    vertical = p.sum(1)
    off = pos[:, None] - kpos[None, :]  # [n, L]
    slash = torch.zeros(h, length, dtype=torch.float32, device=k.device)
    ok = off >= 0
    slash.index_add_(1, off[ok], p[:, ok])
    return vertical, slash


def pattern_mask_ref(
    cov: torch.Tensor, v_idx: torch.Tensor, q_positions: torch.Tensor, length: int
) -> torch.Tensor:
    """Keys each query may attend under a block pattern (causality not applied).

    Parameters
    ----------
    cov : ``[H, NB]`` int8 chosen block diagonals; v_idx : ``[H, KV]`` chosen columns (PAD-padded).
    q_positions : ``[n]``; length : number of keys.

    Returns
    -------
    ``[n, H, length]`` bool.
    """
    h, nb = cov.shape
    pos = q_positions.long().to(cov.device)
    kpos = torch.arange(length, device=cov.device)
    d = pos[:, None] // BLOCK - kpos[None, :] // BLOCK  # [n, L]
    ok_d = (d >= 0) & (d < nb)
    by_slash = cov.bool()[:, d.clamp(0, nb - 1)] & ok_d[None]  # [H, n, L]
    cols = torch.zeros(h, length + 1, dtype=torch.bool, device=cov.device)
    vi = v_idx.long().clamp(max=length)
    vi = torch.where(v_idx.long() == PAD, length, vi)
    cols.scatter_(1, vi, True)
    by_col = cols[:, :length][:, None, :]  # [H, 1, L]
    return (by_slash | by_col).permute(1, 0, 2)


def attention_recall(lse_sparse: torch.Tensor, lse_full: torch.Tensor, base: float = math.e) -> torch.Tensor:
    """Share of each query's unnormalised attention mass the sparse key set captures: ``base ** (lse_s - lse_f)``.

    Both LSEs must be over the same logits in the same base: natural log for this package's Triton kernels and
    the oracles, ``base=2`` for FlashInfer's ``return_lse`` output. Values lie in ``[0, 1]`` (up to rounding).
    """
    if base <= 0 or base == 1:
        raise ValueError(f"attention_recall: base must be > 0 and != 1, got {base}")
    return torch.pow(torch.tensor(float(base), dtype=torch.float32, device=lse_full.device),
                     lse_sparse.float() - lse_full.float())
