"""Estimation passes with the query heads of a GQA group sharing each key load (a second design, issue 18).

``estimate.py`` runs one program per query head: every key tile is gathered through ``req_to_token`` once per
query head (7 times per KV head for Qwen2.5-7B's 28:4, twice per pass) and each ``tl.dot`` is 64 rows deep. Here a
program takes ``GB`` query heads of one KV head (``GB`` = the group size rounded up to a power of two, at most 4):
one slot lookup and one K gather per tile feed a ``[GB * 64, D] x [D, 64]`` dot, and the softmax statistics,
column sums and diagonal sums are kept per head by viewing the tile as ``[GB, 64, 64]``. Same outputs as
:func:`sgl_qwen1m.ops.sparse.estimate.estimate_scores` (selected through its ``design="gqa"``); whether it is faster
is measured by ``bench ops-sparse --stage-breakdown --est-designs head,gqa``.

fp32 oracle: :func:`sgl_qwen1m.ops.sparse.reference.estimate_vs_ref`; tests: ``tests/test_sparse.py``.
"""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from sgl_qwen1m.ops.sparse._triton import (_diag_index, _est_logits, _load_q, _lse_update, _piece_meta, _region,
                                           _tile_range)

__all__ = ["heads_per_program", "grid", "gqa_lse_pass", "gqa_scores_pass"]


def heads_per_program(group: int) -> int:
    """``GB``: the GQA group size rounded up to a power of two, at most 4 (a 256-row tile)."""
    return min(triton.next_power_of_2(max(group, 1)), 4)


def _configs(reset=None):
    def wrap(fn):
        if os.environ.get("TRITON_INTERPRET") == "1":
            return fn
        configs = [triton.Config({}, num_warps=w, num_stages=s) for w in (4, 8) for s in (2, 3, 4)]
        return triton.autotune(configs=configs, key=["D", "G", "GB", "DCA"], reset_to_zero=reset)(fn)

    return wrap


@triton.jit
def _setup(PIECE, QS, sm_log2, s_kh, G: tl.constexpr, GB: tl.constexpr, BM: tl.constexpr):
    """This program's KV head, head group, piece and split; per row ``r`` of the ``GB * BM`` tile its query head
    ``h`` (``-1``-safe: masked by ``hmask``), estimation row ``i``, position, token row and logit scale."""
    HG: tl.constexpr = (G + GB - 1) // GB
    kvh = tl.program_id(0) // HG
    hg = tl.program_id(0) % HG
    p = tl.program_id(1)
    sp = tl.program_id(2)
    pool, qrow0, qpos0, qlen, c0, n, qend = _piece_meta(PIECE, p)
    r = tl.arange(0, GB * BM)
    hloc = hg * GB + r // BM
    i = r % BM
    hmask = hloc < G
    h = kvh * G + tl.minimum(hloc, G - 1)
    rmask = hmask & (i < n)
    pos = qend - n + i
    trow = (qrow0 + qlen - n + i).to(tl.int64)
    scale = tl.load(QS + trow, mask=rmask, other=0.0) * sm_log2
    return kvh, hg, p, sp, kvh * s_kh, pool, c0, n, qend, i, hmask, h, rmask, pos, trow, scale


@_configs()
@triton.jit
def _gqa_lse_kernel(
    Q, s_qt, s_qv, s_qh, QS, K, s_kn, s_kh, R2T, s_r2t, PIECE, ML, sm_log2, cl, nsplit, H,
    G: tl.constexpr, GB: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DCA: tl.constexpr,
):
    """Pass 1: running (max, sum) per row, key regions in turn with their query variant (as ``estimate.py``)."""
    kvh, hg, p, sp, kvoff, pool, c0, n, qend, i, hmask, h, rmask, pos, trow, scale = _setup(
        PIECE, QS, sm_log2, s_kh, G, GB, BM)
    m = tl.full([GB * BM], float("-inf"), tl.float32)
    l = tl.zeros([GB * BM], tl.float32)
    for reg in tl.static_range(0 if DCA else 2, 3):
        lo, hi, var = _region(reg, c0, cl, qend, DCA)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, var, h[:, None].to(tl.int64), D)  # a head per row
        first, end = _tile_range(lo, hi, sp, nsplit, BN)
        for t in range(first, end, nsplit):
            s, valid, cols, cmask, c = _est_logits(q, scale, K, s_kn, kvoff, R2T, pool, s_r2t, t, qend, pos,
                                                   rmask, BN, D)  # one K gather for the GB heads
            m, l = _lse_update(m, l, s)
    out = ML + ((p * H + h.to(tl.int64)) * nsplit + sp) * (2 * BM) + i
    tl.store(out, m, mask=hmask)
    tl.store(out + BM, l, mask=hmask)


@_configs(reset=["SLASH"])
@triton.jit
def _gqa_scores_kernel(
    Q, s_qt, s_qv, s_qh, QS, K, s_kn, s_kh, R2T, s_r2t, PIECE, LSE2, VERT, SLASH, s_sc_p, s_sc_h,
    sm_log2, cl, nsplit, H,
    G: tl.constexpr, GB: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DCA: tl.constexpr,
):
    """Pass 2: per head of the group, column sums (vertical) and diagonal sums (slash) of the softmax."""
    kvh, hg, p, sp, kvoff, pool, c0, n, qend, i, hmask, h, rmask, pos, trow, scale = _setup(
        PIECE, QS, sm_log2, s_kh, G, GB, BM)
    lse = tl.load(LSE2 + (p * H + h.to(tl.int64)) * BM + i, mask=rmask, other=0.0)
    g = tl.arange(0, GB)
    hrow = (kvh * G + hg * GB + g).to(tl.int64)  # the group's heads, one per [GB] row
    hm = (hg * GB + g) < G
    vbase = VERT + p * s_sc_p + hrow[:, None] * s_sc_h
    sbase = SLASH + p * s_sc_p + hrow[:, None] * s_sc_h
    e = tl.arange(0, BN)
    j_lo, ok_lo, j_hi, ok_hi = _diag_index(BM, BN)  # per head as in estimate.py: one diagonal per output column
    idx_lo = tl.broadcast_to(j_lo[None, :, :], (GB, BM, BN))
    idx_hi = tl.broadcast_to(j_hi[None, :, :], (GB, BM, BN))
    for reg in tl.static_range(0 if DCA else 2, 3):
        lo, hi, var = _region(reg, c0, cl, qend, DCA)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, var, h[:, None].to(tl.int64), D)  # a head per row
        first, end = _tile_range(lo, hi, sp, nsplit, BN)
        for t in range(first, end, nsplit):
            s, valid, cols, cmask, c = _est_logits(q, scale, K, s_kn, kvoff, R2T, pool, s_r2t, t, qend, pos,
                                                   rmask, BN, D)  # one K gather for the GB heads
            pr = tl.reshape(tl.where(valid, tl.exp2(s - lse[:, None]), 0.0), (GB, BM, BN))
            tl.store(vbase + cols[None, :], tl.sum(pr, 1), mask=hm[:, None] & cmask[None, :])
            dlo = tl.sum(tl.where(ok_lo[None, :, :], tl.gather(pr, idx_lo, axis=2), 0.0), 1)
            dhi = tl.sum(tl.where(ok_hi[None, :, :], tl.gather(pr, idx_hi, axis=2), 0.0), 1)
            o_lo = (qend - n - c) + e - (BN - 1)  # diagonal of output column e (see estimate.py)
            o_hi = o_lo + BN
            tl.atomic_add(sbase + o_lo[None, :], dlo, mask=hm[:, None] & ((o_lo >= 0) & (o_lo < qend))[None, :],
                          sem="relaxed")
            tl.atomic_add(sbase + o_hi[None, :], dhi,
                          mask=hm[:, None] & ((o_hi >= 0) & (o_hi < qend) & (e < BM - 1))[None, :], sem="relaxed")


def grid(heads: int, kv_heads: int, pieces: int, splits: int) -> tuple[int, int, int]:
    """``(Hkv x head groups, P, splits)``: the launch grid of both passes."""
    grp = heads // kv_heads
    return kv_heads * triton.cdiv(grp, heads_per_program(grp)), pieces, splits


def gqa_lse_pass(q: torch.Tensor, k_cache: torch.Tensor, req_to_token: torch.Tensor, piece_table: torch.Tensor,
                 q_scale: torch.Tensor, ml: torch.Tensor, sm_log2: float, cl: int, dca: bool, block: int) -> None:
    """Pass 1 into ``ml`` ``[P, H, splits, 2, 64]`` (running max and sum per split; ``estimate.combine_lse``)."""
    _, _, h, d = q.shape
    grp = h // k_cache.shape[1]
    ns = ml.shape[2]
    _gqa_lse_kernel[grid(h, k_cache.shape[1], piece_table.shape[0], ns)](
        q, q.stride(0), q.stride(1), q.stride(2), q_scale, k_cache, k_cache.stride(0), k_cache.stride(1),
        req_to_token, req_to_token.stride(0), piece_table, ml, sm_log2, cl, ns, h,
        G=grp, GB=heads_per_program(grp), D=d, BM=block, BN=block, DCA=dca)


def gqa_scores_pass(q: torch.Tensor, k_cache: torch.Tensor, req_to_token: torch.Tensor, piece_table: torch.Tensor,
                    q_scale: torch.Tensor, lse2: torch.Tensor, scores: torch.Tensor, sm_log2: float, cl: int,
                    splits: int, dca: bool, block: int) -> None:
    """Pass 2 into ``scores`` ``[2, P, H, L]`` (zeroed) from the ``[P, H, 64]`` log2 LSE of pass 1."""
    _, _, h, d = q.shape
    grp = h // k_cache.shape[1]
    vert, slash = scores[0], scores[1]
    _gqa_scores_kernel[grid(h, k_cache.shape[1], piece_table.shape[0], splits)](
        q, q.stride(0), q.stride(1), q.stride(2), q_scale, k_cache, k_cache.stride(0), k_cache.stride(1),
        req_to_token, req_to_token.stride(0), piece_table, lse2, vert, slash, vert.stride(0), vert.stride(1),
        sm_log2, cl, splits, h, G=grp, GB=heads_per_program(grp), D=d, BM=block, BN=block, DCA=dca)
