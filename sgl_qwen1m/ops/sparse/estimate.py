"""Triton estimation passes of vertical-slash sparse prefill on SGLang's paged KV pool (no K/V copies).

``estimate_scores``: two passes over the keys of each piece (one query head per program, 64 estimation rows):
pass 1 the fp32 log-sum-exp of every row, pass 2 the softmax column sums (vertical) and diagonal sums (slash).
Workspace is ``[P, H, L]`` scores plus ``[P, H, S, 64]`` partials: no ``[H, 64, L]`` tensor. With DCA each pass
walks the inter, succ and intra key regions in turn, each with its own query variant, so one query tile is live
(selecting the variant per tile cost 41-44% of the estimation time, ``benchmarks/results/sparse-ab-h100/estimate_regions_h100.log.gz``).

An FP8 key pool is widened in registers and its per-tensor ``k_scale`` folded into the logit scale.

A second design, one program per GQA head group sharing each key gather (``estimate_gqa.py``), gives the same
scores through ``_estimate(..., design="gqa")``; serving uses this one until a GPU A/B says otherwise
(``bench ops-sparse --stage-breakdown --est-designs head,gqa``).

fp32 oracle: :func:`sgl_qwen1m.ops.sparse.reference.estimate_vs_ref`; tests: ``tests/test_sparse.py``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from sgl_qwen1m.ops.sparse._triton import (LOG2E, _diag_index, _est_logits, _load_q, _lse_update, _piece_meta,
                                           _region, _tile_range, _tuned)
from sgl_qwen1m.ops.sparse.plan import BLOCK, SparseState

__all__ = ["estimate_scores", "splits_per_row", "PROGRAMS_PER_SM"]


@triton.jit
def _est_setup(PIECE, QS, sm_log2, s_kh, G: tl.constexpr, BM: tl.constexpr):
    """This program's (head, piece, split), its KV-head offset, the piece metadata and the estimation rows (the
    piece's last ``n`` queries) with their logit scale."""
    h = tl.program_id(0)
    p = tl.program_id(1)
    sp = tl.program_id(2)
    H = tl.num_programs(0)
    pool, qrow0, qpos0, qlen, c0, n, qend = _piece_meta(PIECE, p)
    i = tl.arange(0, BM)
    rmask = i < n
    pos = qend - n + i
    trow = (qrow0 + qlen - n + i).to(tl.int64)
    scale = tl.load(QS + trow, mask=rmask, other=0.0) * sm_log2
    kvoff = (h // G) * s_kh
    return h, p, sp, H, kvoff, pool, c0, n, qend, rmask, pos, trow, scale


@triton.jit
def _lse_region(q, scale, m, l, lo, hi, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, pos, rmask,
                BN: tl.constexpr, D: tl.constexpr):
    """Running (max, sum) of the estimation rows over the key tiles of ``[lo, hi)`` that belong to split ``sp``."""
    first, end = _tile_range(lo, hi, sp, nsplit, BN)
    for t in range(first, end, nsplit):
        s, valid, cols, cmask, c = _est_logits(q, scale, K, s_kn, kvoff, R2T, pool, s_r2t, t, qend, pos, rmask,
                                               BN, D)
        m, l = _lse_update(m, l, s)
    return m, l


@_tuned((2, 3, 4))
@triton.jit
def _est_lse_kernel(
    Q, s_qt, s_qv, s_qh, QS, K, s_kn, s_kh, R2T, s_r2t, PIECE, ML, sm_log2, cl, nsplit,
    G: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DCA: tl.constexpr,
):
    """Pass 1. Key regions run one after the other with their own query variant (intra: 0; with DCA, succ keys:
    the succ critical variant 3, inter keys: the inter critical variant 4), so one query tile is live at a time."""
    h, p, sp, H, kvoff, pool, c0, n, qend, rmask, pos, trow, scale = _est_setup(PIECE, QS, sm_log2, s_kh, G, BM)
    m = tl.full([BM], float("-inf"), tl.float32)
    l = tl.zeros([BM], tl.float32)
    for r in tl.static_range(0 if DCA else 2, 3):
        lo, hi, var = _region(r, c0, cl, qend, DCA)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, var, h, D)
        m, l = _lse_region(q, scale, m, l, lo, hi, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, pos, rmask,
                           BN, D)
    out = ML + ((p * H + h) * nsplit + sp) * (2 * BM) + tl.arange(0, BM)
    tl.store(out, m)
    tl.store(out + BM, l)


@triton.jit
def _scores_region(q, scale, lse, lo, hi, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, n, pos, rmask,
                   vbase, sbase, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
    """Vertical (column) and slash (diagonal) softmax sums of the key tiles of ``[lo, hi)`` in split ``sp``."""
    e = tl.arange(0, BN)
    j_lo, ok_lo, j_hi, ok_hi = _diag_index(BM, BN)  # out[i, e] = prob[i, i - e + BN - 1]: one diagonal per column
    first, end = _tile_range(lo, hi, sp, nsplit, BN)
    for t in range(first, end, nsplit):
        s, valid, cols, cmask, c = _est_logits(q, scale, K, s_kn, kvoff, R2T, pool, s_r2t, t, qend, pos, rmask,
                                               BN, D)
        pr = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        tl.store(vbase + cols, tl.sum(pr, 0), mask=cmask)
        dlo = tl.sum(tl.where(ok_lo, tl.gather(pr, j_lo, axis=1), 0.0), 0)
        dhi = tl.sum(tl.where(ok_hi, tl.gather(pr, j_hi, axis=1), 0.0), 0)
        # diagonal o = pos_i - col = (qend - n - c) + (i - j), and i - j = e - (BN - 1) (+ BN for the high half)
        o_lo = (qend - n - c) + e - (BN - 1)
        o_hi = o_lo + BN
        tl.atomic_add(sbase + o_lo, dlo, mask=(o_lo >= 0) & (o_lo < qend), sem="relaxed")
        tl.atomic_add(sbase + o_hi, dhi, mask=(o_hi >= 0) & (o_hi < qend) & (e < BM - 1), sem="relaxed")


@_tuned((2, 3, 4), reset=["SLASH"])
@triton.jit
def _est_scores_kernel(
    Q, s_qt, s_qv, s_qh, QS, K, s_kn, s_kh, R2T, s_r2t, PIECE, LSE2, VERT, SLASH, s_sc_p, s_sc_h,
    sm_log2, cl, nsplit,
    G: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DCA: tl.constexpr,
):
    """Pass 2, region by region as pass 1."""
    h, p, sp, H, kvoff, pool, c0, n, qend, rmask, pos, trow, scale = _est_setup(PIECE, QS, sm_log2, s_kh, G, BM)
    lse = tl.load(LSE2 + (p * H + h) * BM + tl.arange(0, BM), mask=rmask, other=0.0)
    vbase = VERT + p * s_sc_p + h * s_sc_h
    sbase = SLASH + p * s_sc_p + h * s_sc_h
    for r in tl.static_range(0 if DCA else 2, 3):
        lo, hi, var = _region(r, c0, cl, qend, DCA)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, var, h, D)
        _scores_region(q, scale, lse, lo, hi, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, n, pos, rmask,
                       vbase, sbase, BM, BN, D)


# Resident estimation programs aimed at per SM (``bench ops-sparse --est-programs-per-sm`` sweeps it). 16: on one H100
# (benchmarks/results/sparse-ops-h100/estimate_stages_h100.json, 7B budgets, DCA, chunk 16384, scores checked equal)
# both passes took 6.49 -> 5.29 ms per layer at 256K keys and 12.85 -> 10.28 ms at 1M going from 4 to 16 (2: 8.16 and
# 16.20 ms); the per-GQA-group design at its best was within 4 % of this (5.47 ms at 256K, 10.06 ms at 1M).
PROGRAMS_PER_SM = 16


def splits_per_row(programs: int, tiles: int, device: torch.device, programs_per_sm: int = PROGRAMS_PER_SM) -> int:
    """Programs per row (at most ``tiles``) so that about ``programs_per_sm`` programs run per SM when
    ``programs`` rows share the GPU (each program walks every ``splits``-th key tile of its row)."""
    # off the GPU (the Triton interpreter in the tests) one "SM": as many splits as 4 SMs at 4 programs gave before
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 1
    return max(1, min(tiles, -(-programs_per_sm * sms // max(programs, 1))))


def estimate_scores(
    q: torch.Tensor,
    state: SparseState,
    k_cache: torch.Tensor,
    *,
    sm_scale: float,
    chunk_len: Optional[int],
    k_scale: float = 1.0,
) -> torch.Tensor:
    """Vertical and slash scores of every piece (see :mod:`sgl_qwen1m.ops.sparse.plan`).

    Parameters
    ----------
    q : ``[T, V, H, D]`` query variants (``V == 5`` with DCA: intra, succ, inter, succ_critical, inter_critical).
    state : SparseState
        The batch's plan: ``q_scale`` ``[T]`` float32 per-token logit multiplier (YaRN ``s**2``; ones without),
        ``req_to_token`` ``[R, ctx]`` int32 slot table, ``piece_table`` ``[P, 8]`` int32 (column 0 already mapped to
        the request's row in ``req_to_token``), ``plan.max_len`` L, the longest ``q_end``.
    k_cache : ``[N, Hkv, D]`` the layer's key pool, in the query dtype or FP8 (widened in registers).
    sm_scale : softmax scale; chunk_len : DCA chunk length C, or None without DCA.
    k_scale : the key pool's per-tensor dequantisation scale (1.0 for bf16), folded into the fp32 logit scale.

    Returns
    -------
    ``[2, P, H, L]`` float32: vertical scores, then slash scores.
    """
    return _estimate(q, state, k_cache, sm_scale=sm_scale, chunk_len=chunk_len, k_scale=k_scale)


def combine_lse(ml: torch.Tensor) -> torch.Tensor:
    """``[P, H, 64]`` log2 LSE of every estimation row from pass 1's per-split running ``(max, sum)``
    ``ml`` ``[P, H, splits, 2, 64]``."""
    m, l = ml[:, :, :, 0], ml[:, :, :, 1]
    mx = m.amax(dim=2, keepdim=True)
    mx_safe = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    return (mx_safe + torch.log2((l * torch.exp2(m - mx_safe)).sum(2, keepdim=True))).squeeze(2).contiguous()


DESIGNS = ("head", "gqa")  # one program per query head (default) | per GQA head group (estimate_gqa.py)


def _estimate(q: torch.Tensor, state: SparseState, k_cache: torch.Tensor, *, sm_scale: float,
              chunk_len: Optional[int], k_scale: float = 1.0, passes: int = 2,
              programs_per_sm: int = PROGRAMS_PER_SM, design: str = "head") -> torch.Tensor:
    """:func:`estimate_scores`; ``passes=1`` stops after pass 1 and returns its ``[P, H, 64]`` log2 LSE (the
    stage benchmark times the two passes apart with it); ``programs_per_sm`` as :func:`splits_per_row`;
    ``design`` one of :data:`DESIGNS` (same outputs)."""
    if design not in DESIGNS:
        raise ValueError(f"estimation design {design!r}: choose from {', '.join(DESIGNS)}")
    q_scale, req_to_token, piece_table = state.q_scale, state.req_to_token, state.piece_table
    max_len = state.plan.max_len
    _, nv, h, _ = q.shape
    hkv = k_cache.shape[1]
    p = piece_table.shape[0]
    dca = chunk_len is not None
    if dca and nv < 5:
        raise ValueError(f"estimate_scores: DCA needs the 5 query variants, got {nv}")
    tiles = triton.cdiv(max_len, BLOCK)
    sm_log2 = sm_scale * k_scale * LOG2E
    cl = chunk_len if dca else 1 << 30
    # rows padded to whole tiles: row strides stay multiples of 16 whatever L is (one Triton specialisation)
    scores = (torch.zeros(2, p, h, tiles * BLOCK, dtype=torch.float32, device=q.device)[..., :max_len]
              if passes == 2 else None)
    if design == "gqa":
        from sgl_qwen1m.ops.sparse import estimate_gqa as gqa

        programs, lse_pass, scores_pass = gqa.grid(h, hkv, p, 1)[0], gqa.gqa_lse_pass, gqa.gqa_scores_pass
    else:
        programs, lse_pass, scores_pass = h, _head_lse_pass, _head_scores_pass
    ns = splits_per_row(programs * p, tiles, q.device, programs_per_sm)
    ml = torch.empty(p, h, ns, 2, BLOCK, dtype=torch.float32, device=q.device)
    lse_pass(q, k_cache, req_to_token, piece_table, q_scale, ml, sm_log2, cl, dca, BLOCK)
    lse2 = combine_lse(ml)
    if scores is None:
        return lse2
    scores_pass(q, k_cache, req_to_token, piece_table, q_scale, lse2, scores, sm_log2, cl, ns, dca, BLOCK)
    return scores


def _head_lse_pass(q: torch.Tensor, k_cache: torch.Tensor, req_to_token: torch.Tensor, piece_table: torch.Tensor,
                   q_scale: torch.Tensor, ml: torch.Tensor, sm_log2: float, cl: int, dca: bool, block: int) -> None:
    """Pass 1 of the per-head design into ``ml`` ``[P, H, splits, 2, 64]`` (grid ``(H, P, splits)``)."""
    _, _, h, d = q.shape
    ns = ml.shape[2]
    _est_lse_kernel[(h, piece_table.shape[0], ns)](
        q, q.stride(0), q.stride(1), q.stride(2), q_scale, k_cache, k_cache.stride(0), k_cache.stride(1),
        req_to_token, req_to_token.stride(0), piece_table, ml, sm_log2, cl, ns,
        G=h // k_cache.shape[1], D=d, BM=block, BN=block, DCA=dca)


def _head_scores_pass(q: torch.Tensor, k_cache: torch.Tensor, req_to_token: torch.Tensor, piece_table: torch.Tensor,
                      q_scale: torch.Tensor, lse2: torch.Tensor, scores: torch.Tensor, sm_log2: float, cl: int,
                      splits: int, dca: bool, block: int) -> None:
    """Pass 2 of the per-head design into ``scores`` ``[2, P, H, L]`` (zeroed) from pass 1's ``[P, H, 64]`` LSE."""
    _, _, h, d = q.shape
    vert, slash = scores[0], scores[1]
    _est_scores_kernel[(h, piece_table.shape[0], splits)](
        q, q.stride(0), q.stride(1), q.stride(2), q_scale, k_cache, k_cache.stride(0), k_cache.stride(1),
        req_to_token, req_to_token.stride(0), piece_table, lse2, vert, slash, vert.stride(0), vert.stride(1),
        sm_log2, cl, splits, G=h // k_cache.shape[1], D=d, BM=block, BN=block, DCA=dca)
