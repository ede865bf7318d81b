"""Torch references of vertical-slash sparse prefill: fp32 oracles, the torch selection path, attention recall.

* ``estimate_vs_ref`` / ``pattern_mask_ref``: slow and obvious on purpose (they materialise ``[H, n, L]``); the
  Triton kernels in ``estimate.py`` and ``attention.py`` are tested against them.
* ``select_vertical_slash``, ``block_pattern``, ``loop_bounds``: the selection step in torch (``topk``/``sort``/
  ``searchsorted``), which the Triton ``select.py`` rewrites exactly; ``SparsePrefill`` runs them with
  ``QWEN1M_SPARSE_SELECT=torch``. ``computed_keys``: the kernel's work for density reports (not on the hot path).

Dimension legend: P = sparse pieces, H = query heads on this rank, L = longest key range of a piece,
NB = ``ceil(L / 64)`` key blocks, MB = most 64-row query blocks of any piece. Rules are documented in
:mod:`sgl_qwen1m.ops.sparse.plan`. These functions run on any device, do no host sync and have no per-head loop
(``computed_keys`` aside).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from sgl_qwen1m.config import LOCAL_DIAGONALS, SINK_COLUMNS
from sgl_qwen1m.ops.dca.plan import stage_of
from sgl_qwen1m.ops.sparse.plan import _FORCED, BLOCK, ESTIMATE_VARIANTS, PAD, LayerBudget, PiecePlan

__all__ = [
    "estimate_logits_ref",
    "estimate_vs_ref",
    "pattern_mask_ref",
    "attention_recall",
    "select_vertical_slash",
    "block_pattern",
    "loop_bounds",
    "computed_keys",
]


def estimate_logits_ref(
    q: torch.Tensor,
    k: torch.Tensor,
    q_positions: torch.Tensor,
    chunk_len: Optional[int],
    sm_scale: float,
    logit_scale: float = 1.0,
) -> torch.Tensor:
    """``[H, n, L]`` fp32 logits (natural-log units, ``-inf`` above the causal diagonal) of the estimation rows;
    arguments as :func:`estimate_vs_ref`. With DCA each key is scored by the query variant of its stage."""
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
    return logits.masked_fill(kpos[None, None, :] > pos[None, :, None], float("-inf"))


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
    pos = q_positions.long().to(k.device)
    kpos = torch.arange(length, device=k.device)
    logits = estimate_logits_ref(q, k, q_positions, chunk_len, sm_scale, logit_scale)
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


def _topk_sorted(scores: torch.Tensor, budget: torch.Tensor, kmax: int) -> torch.Tensor:
    """Indices of each row's top-``budget[h]`` entries (scores < 0 never count), ascending, PAD-padded.

    scores ``[P, H, L]`` float32; budget ``[H]``; returns ``[P, H, max(kmax, 1)]`` int32.
    """
    k = max(1, min(kmax, scores.shape[-1]))
    val, idx = torch.topk(scores, k, dim=-1, sorted=True)
    rank = torch.arange(k, device=scores.device)
    keep = (rank.view(1, 1, k) < budget.view(1, -1, 1)) & (val >= 0)
    idx = torch.where(keep, idx, PAD)
    return torch.sort(idx, dim=-1).values.to(torch.int32)


def select_vertical_slash(
    vertical: torch.Tensor,
    slash: torch.Tensor,
    q_end: torch.Tensor,
    budget: LayerBudget,
    sink: int = SINK_COLUMNS,
    local: int = LOCAL_DIAGONALS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Critical columns and diagonals of every piece and head.

    Parameters
    ----------
    vertical, slash : torch.Tensor
        ``[P, H, L]`` float32 column sums and diagonal sums (offset ``o = pos - c``); modified in place.
    q_end : torch.Tensor
        ``[P]`` int64: keys (and diagonals) ``>= q_end`` do not exist for that piece.
    budget : LayerBudget

    Returns
    -------
    (v_idx ``[P, H, KV]``, s_idx ``[P, H, KS]``) int32, ascending, padded with :data:`PAD`.
    """
    length = vertical.shape[-1]
    ar = torch.arange(length, device=vertical.device)
    absent = ar.view(1, 1, -1) >= q_end.view(-1, 1, 1)
    for x, n in ((vertical, sink), (slash, local)):
        n = min(n, length)
        x[..., :n] = _FORCED + (n - ar[:n]).to(x.dtype)  # forced, earliest first on ties with the budget
        x.masked_fill_(absent, -1.0)
    return _topk_sorted(vertical, budget.vertical, budget.max_vertical), _topk_sorted(
        slash, budget.slash, budget.max_slash
    )


def block_pattern(s_idx: torch.Tensor, dense: torch.Tensor, num_key_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block diagonals of the slash set.

    Parameters
    ----------
    s_idx : ``[P, H, KS]`` int32 diagonals (PAD-padded).
    dense : ``[P]`` bool: pieces that run densely get every block diagonal.
    num_key_blocks : NB.

    Returns
    -------
    cov : ``[P, H, NB]`` int8, 1 where block diagonal ``d`` is chosen (``cov[..., 0] == 1`` always).
    diag : ``[P, H, NB]`` int32 chosen block diagonals ascending, PAD-padded.
    """
    p, h, _ = s_idx.shape
    nb = num_key_blocks
    s = s_idx.long()
    valid = s != PAD
    d1 = torch.where(valid, s // BLOCK, nb)
    d2 = torch.where(valid & (s % BLOCK != 0), s // BLOCK + 1, nb)
    cov = torch.zeros(p, h, nb + 1, dtype=torch.int8, device=s_idx.device)
    one = torch.ones((), dtype=torch.int8, device=s_idx.device).expand_as(d1)
    cov.scatter_(2, d1.clamp(max=nb), one)
    cov.scatter_(2, d2.clamp(max=nb), one)
    cov = cov[..., :nb].contiguous()
    cov[..., 0] = 1
    cov.masked_fill_(dense.view(p, 1, 1), 1)
    ar = torch.arange(nb, device=s_idx.device, dtype=torch.int32)
    diag = torch.sort(torch.where(cov.bool(), ar, PAD), dim=-1).values
    return cov, diag


def loop_bounds(
    diag: torch.Tensor,
    v_idx: torch.Tensor,
    first_block: torch.Tensor,
    c0: torch.Tensor,
    chunk_len: Optional[int],
    max_blocks: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (piece, head, row block) loop ranges of the sparse kernel, split by DCA region.

    With row block ``rb`` in DCA chunk ``[c0, c0 + C)``: key blocks of the own chunk are ``d <= rb - c0/64``,
    the previous chunk ``d <= rb - (c0 - C)/64``, earlier chunks ``d <= rb``. Columns split likewise at
    ``c0 - C`` and ``c0``; the intra columns end where the leading band of block diagonals begins: with block
    diagonals ``0 .. band - 1`` all chosen, every column from ``64 * (rb - band + 1)`` on is covered by them (the
    kernel would load and mask it), so the intra column range stops there (never below ``c0``).

    Parameters
    ----------
    diag : ``[P, H, NB]`` int32 ascending; v_idx : ``[P, H, KV]`` int32 ascending.
    first_block, c0 : ``[P]`` int64.
    chunk_len : DCA chunk length or None.

    Returns
    -------
    dcnt : ``[P, H, MB, 3]`` int32 ends of the intra / succ / inter block-diagonal ranges in ``diag``.
    vcnt : ``[P, H, MB, 3]`` int32 ends of the inter / succ / intra column ranges in ``v_idx``.
    """
    p, h, nb = diag.shape
    rb = first_block.view(p, 1) + torch.arange(max_blocks, device=diag.device).view(1, -1)  # [P, MB]
    prev = (c0 - chunk_len).clamp(min=0) if chunk_len is not None else torch.zeros_like(c0)
    band = (diag == torch.arange(nb, device=diag.device, dtype=diag.dtype)).sum(-1)  # [P, H] leading 0, 1, ...

    def count(seq: torch.Tensor, vals: torch.Tensor, right: bool) -> torch.Tensor:
        vals = vals.view(p, -1, vals.shape[-1]).expand(p, h, vals.shape[-1]).to(seq.dtype).contiguous()
        return torch.searchsorted(seq.contiguous(), vals, right=right).to(torch.int32)

    dcnt = torch.stack(
        [
            count(diag, rb - (c0 // BLOCK).view(p, 1), True),
            count(diag, rb - (prev // BLOCK).view(p, 1), True),
            count(diag, rb, True),
        ],
        dim=-1,
    )
    mb = rb.shape[1]
    band_start = torch.maximum((rb.view(p, 1, mb) - band.view(p, h, 1) + 1) * BLOCK, c0.view(p, 1, 1))
    vcnt = torch.stack(
        [
            count(v_idx, prev.view(p, 1).expand(p, mb), False),
            count(v_idx, c0.view(p, 1).expand(p, mb), False),
            count(v_idx, band_start, False),
        ],
        dim=-1,
    )
    return dcnt.contiguous(), vcnt.contiguous()


def computed_keys(
    plan: PiecePlan, dcnt: torch.Tensor, vcnt: torch.Tensor
) -> torch.Tensor:
    """Upper bound of (query-block, key) pairs the sparse kernel computes, per head: ``[H]`` int64 (64 rows each).

    Counts whole 64-key tiles for block diagonals and every loaded column (covered ones included, as the
    kernel computes them masked). Used for TFLOP/s and density reports, not on the hot path.
    """
    tot = None
    for i, pc in enumerate(plan.pieces):
        nbk = pc.num_blocks
        tiles = dcnt[i, :, :nbk, 2].long() * BLOCK
        cols = vcnt[i, :, :nbk, 2].long()  # all columns before the row block are visited
        s = (tiles + cols).sum(-1)
        tot = s if tot is None else tot + s
    return tot
