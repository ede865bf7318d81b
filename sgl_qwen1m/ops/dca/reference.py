"""fp32 oracles. Slow and obvious on purpose: every fast path is tested against these.

DCA attention as one softmax: for a query at absolute position p and a key at j <= p, the logit uses the
query variant picked by the DCA stage of (p, j) (intra / successive / inter). Merging the three per-stage
softmaxes by their log-sum-exp, as the kernels do, is exactly this single softmax, so this oracle is
independent of any segment planning.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from sgl_qwen1m.ops.dca.plan import DCARopeCaches, stage_of

__all__ = ["dca_attention_ref", "merge_lse_ref", "dca_rope_ref", "LN2"]

LN2 = math.log(2.0)  # FlashInfer's LSE is base 2: lse_natural = lse_base2 * LN2


def dca_attention_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_positions: torch.Tensor,
    chunk_len: Optional[int],
    sm_scale: float,
    logit_scale: float = 1.0,
    block: int = 256,
    key_mask: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact DCA attention of one request, in fp32.

    Parameters
    ----------
    q : torch.Tensor
        ``[Tq, V, H, D]`` rotated query variants, ``V >= 3`` (intra, succ, inter[, critical...]).
        ``V == 1`` is allowed when ``chunk_len`` is None (plain causal attention).
    k, v : torch.Tensor
        ``[L, Hkv, D]`` rotated keys and values of the whole sequence (positions ``0..L-1``).
    q_positions : torch.Tensor
        ``[Tq]`` absolute positions of the queries (each ``< L``).
    chunk_len : int or None
        DCA chunk length ``chunk_size - local_size``; None for plain attention.
    sm_scale : float
        Softmax scale, usually ``D ** -0.5``.
    logit_scale : float
        YaRN multiplier ``s**2`` applied to every logit.
    block : int
        Queries per step (memory bound: ``3 * H * block * L`` floats).
    key_mask : torch.Tensor or None
        ``[Tq, H, L]`` bool: keys each query may attend besides causality (sparse attention); None = all.

    Returns
    -------
    out : torch.Tensor
        ``[Tq, H, D]`` float32.
    lse : torch.Tensor
        ``[Tq, H]`` float32 natural-log log-sum-exp of the scaled logits.
    """
    tq, nvar, h, d = q.shape
    hkv = k.shape[1]
    if h % hkv:
        raise ValueError(f"query heads {h} must be a multiple of KV heads {hkv}")
    if chunk_len is None and nvar < 1 or chunk_len is not None and nvar < 3:
        raise ValueError(f"q needs 3 variants (intra, succ, inter) for DCA, got {nvar}")
    g = h // hkv
    kf = k.float().repeat_interleave(g, dim=1)  # [L, H, D]
    vf = v.float().repeat_interleave(g, dim=1)  # [L, H, D]
    kpos = torch.arange(k.shape[0], device=k.device)
    outs, lses = [], []
    for s in range(0, tq, block):
        qb = q[s : s + block].float()  # [b, V, H, D]
        pos = q_positions[s : s + block].to(k.device).long()
        nv = 1 if chunk_len is None else 3
        logits = torch.einsum("bvhd,lhd->vbhl", qb[:, :nv], kf)  # [nv, b, H, L]
        if chunk_len is None:
            sel = logits[0]
        else:
            stage = stage_of(pos[:, None], kpos[None, :], chunk_len)  # [b, L]
            sel = torch.gather(logits, 0, stage.clamp(min=0)[None, :, None, :].expand(1, -1, h, -1))[0]
        sel = sel * (sm_scale * logit_scale)
        sel = sel.masked_fill((kpos[None, :] > pos[:, None])[:, None, :], float("-inf"))  # [b, H, L]
        if key_mask is not None:
            sel = sel.masked_fill(~key_mask[s : s + block].to(sel.device), float("-inf"))
        lse = torch.logsumexp(sel, dim=-1)  # [b, H]
        p = torch.exp(sel - lse[..., None])
        outs.append(torch.einsum("bhl,lhd->bhd", p, vf))
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


def merge_lse_ref(
    outs: list[torch.Tensor], lses: list[torch.Tensor], base2: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge partial attention results over disjoint key sets by their log-sum-exp.

    Parameters
    ----------
    outs : list of ``[T, H, D]``; lses : list of ``[T, H]`` (``-inf`` marks an empty part).
    base2 : bool
        LSEs are base 2 (FlashInfer) instead of natural log.

    Returns
    -------
    (out ``[T, H, D]`` float32, lse ``[T, H]`` float32 in the input base)
    """
    lse = torch.stack([x.float() for x in lses])  # [P, T, H]
    if base2:
        lse = lse * LN2
    total = torch.logsumexp(lse, dim=0)  # [T, H]
    w = torch.exp(lse - total)  # [P, T, H]
    out = sum(w[i][..., None] * o.float() for i, o in enumerate(outs))
    return out, (total / LN2 if base2 else total)


def _rotate(x: torch.Tensor, cos_sin: torch.Tensor) -> torch.Tensor:
    """NeoX rotation of ``x`` ``[T, heads, D]`` by ``cos_sin`` ``[T, D]`` (``[cos | sin]``), in fp32."""
    half = x.shape[-1] // 2
    cos, sin = cos_sin[:, None, :half].float(), cos_sin[:, None, half:].float()
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def dca_rope_ref(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, caches: DCARopeCaches, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 DCA RoPE: ``q`` ``[T, H*D]``, ``k`` ``[T, Hkv*D]`` -> (``[T, 5*H*D]``, ``[T, Hkv*D]``) float32.

    Query variants in SGLang's order: intra, succ, inter, succ_critical, inter_critical.
    """
    t = positions.shape[0]
    pos = positions.long()
    pc = pos % caches.chunk_len
    qf = q.float().reshape(t, -1, head_dim)
    inter_row = torch.full_like(pc, caches.chunk_len - 1)
    tables = ((caches.q, pc), (caches.qc, pc), (caches.qc, inter_row), (caches.qc_no_clamp, pc), (caches.q_inter, pc))
    q5 = torch.stack([_rotate(qf, tab[rows]) for tab, rows in tables], dim=1)  # [T, 5, H, D]
    k_out = _rotate(k.float().reshape(t, -1, head_dim), caches.k[pos])
    return q5.reshape(t, -1), k_out.reshape(t, -1)
