"""Triton kernels for vertical-slash sparse prefill on SGLang's paged KV pool (no K/V copies, no GQA repeat).

* ``estimate_scores``: two passes over the keys of each piece (one query head per program, 64 estimation rows):
  pass 1 the fp32 log-sum-exp of every row, pass 2 the softmax column sums (vertical) and diagonal sums (slash).
  Workspace is ``[P, H, L]`` scores plus ``[P, H, S, 64]`` partials: no ``[H, 64, L]`` tensor. With DCA each pass
  walks the inter, succ and intra key regions in turn, each with its own query variant, so one query tile is live
  (selecting the variant per tile cost 41-44% of the estimation time, ``logs/estimate_regions_h100.log``).
* ``vs_attention``: one launch per layer for every piece, head and 64-row query block. It walks the head's block
  diagonals and then its extra columns, switching between the intra / succ / inter query rotations by key region,
  so all DCA stages of a query merge inside one online softmax (no LSE merge pass). Keys and values are read
  through ``req_to_token`` from the pool, by KV head, so a GQA group's query heads (adjacent programs) share
  them in L2. Returns natural-log LSE.

fp32 oracles: :mod:`sgl_qwen1m.attention.sparse_reference`; tests: ``tests/test_sparse*.py``.
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import triton
import triton.language as tl

from sgl_qwen1m.attention.vertical_slash import BLOCK

__all__ = ["estimate_scores", "splits_per_row", "vs_attention"]

LOG2E = 1.4426950408889634


def _tuned(stages: tuple[int, ...], reset: Optional[list[str]] = None):
    """Autotune ``num_stages`` (4 warps: one warpgroup per 64-row tile) once per head shape; plain in the interpreter.

    Measured on H100 (benchmarks/results/logs/tune_sparse_h100.log): 4 warps beat 8, and deeper pipelines hide the
    latency of the slot-table -> K/V gather chain (2 stages 21.6 ms, 4 stages 13.0 ms for one 16K-query chunk).
    """

    def wrap(fn):
        if os.environ.get("TRITON_INTERPRET") == "1":
            return fn
        configs = [triton.Config({}, num_warps=4, num_stages=s) for s in stages]
        return triton.autotune(configs=configs, key=["D", "G", "DCA"], reset_to_zero=reset)(fn)

    return wrap


@triton.jit
def _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, var, h, D: tl.constexpr):
    """``[BM, D]`` rows of query variant ``var`` of head ``h`` (unscaled: logits are scaled in fp32 after the dot)."""
    d = tl.arange(0, D)
    return tl.load(Q + trow[:, None] * s_qt + var * s_qv + h * s_qh + d[None, :], mask=rmask[:, None], other=0.0)


@triton.jit
def _load_kv(X, s_xn, kvoff, slots, cmask, D: tl.constexpr):
    d = tl.arange(0, D)
    return tl.load(X + slots[:, None] * s_xn + kvoff + d[None, :], mask=cmask[:, None], other=0.0)


@triton.jit
def _est_setup(PIECE, QS, p, sm_log2, BM: tl.constexpr):
    """Piece metadata and the estimation rows (the piece's last ``n`` queries) with their logit scale."""
    meta = PIECE + p * 8
    pool = tl.load(meta).to(tl.int64)
    qrow0 = tl.load(meta + 1)
    qpos0 = tl.load(meta + 2)
    qlen = tl.load(meta + 3)
    c0 = tl.load(meta + 4)
    n = tl.load(meta + 5)
    qend = qpos0 + qlen
    i = tl.arange(0, BM)
    rmask = i < n
    pos = qend - n + i
    trow = (qrow0 + qlen - n + i).to(tl.int64)
    scale = tl.load(QS + trow, mask=rmask, other=0.0) * sm_log2
    return pool, c0, n, qend, rmask, pos, trow, scale


@triton.jit
def _tile_range(lo, hi, sp, nsplit, BN: tl.constexpr):
    """This split's first key tile of the column range ``[lo, hi)`` and the range's end tile: tiles
    ``t = first, first + nsplit, ...`` below the end. ``lo`` is a tile boundary (``plan_pieces`` requires
    ``chunk_len % BLOCK == 0``), so each tile lies in one DCA key region."""
    t0 = lo // BN
    return t0 + (sp - t0 % nsplit + nsplit) % nsplit, tl.cdiv(hi, BN)


@triton.jit
def _est_logits(q, scale, K, s_kn, kvoff, R2T, pool, s_r2t, t, qend, pos, rmask, BN: tl.constexpr, D: tl.constexpr):
    c = t * BN
    cols = c + tl.arange(0, BN)
    cmask = cols < qend
    slots = tl.load(R2T + pool * s_r2t + cols, mask=cmask, other=0).to(tl.int64)
    k = _load_kv(K, s_kn, kvoff, slots, cmask, D)
    s = tl.dot(q, tl.trans(k)) * scale[:, None]  # fp32 logits in log2 units
    valid = rmask[:, None] & (cols[None, :] <= pos[:, None])
    return tl.where(valid, s, float("-inf")), valid, cols, cmask, c


@triton.jit
def _lse_region(q, scale, m, l, lo, hi, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, pos, rmask,
                BN: tl.constexpr, D: tl.constexpr):
    """Running (max, sum) of the estimation rows over the key tiles of ``[lo, hi)`` that belong to split ``sp``."""
    first, end = _tile_range(lo, hi, sp, nsplit, BN)
    for t in range(first, end, nsplit):
        s, valid, cols, cmask, c = _est_logits(q, scale, K, s_kn, kvoff, R2T, pool, s_r2t, t, qend, pos, rmask,
                                               BN, D)
        m_new = tl.maximum(m, tl.max(s, 1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        l = l * tl.exp2(m - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)
        m = m_new
    return m, l


@_tuned((2, 3, 4))
@triton.jit
def _est_lse_kernel(
    Q, s_qt, s_qv, s_qh, QS, K, s_kn, s_kh, R2T, s_r2t, PIECE, ML, sm_log2, cl, nsplit,
    G: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DCA: tl.constexpr,
):
    """Pass 1. Key regions run one after the other with their own query variant (intra: 0; with DCA, succ keys:
    the succ critical variant 3, inter keys: the inter critical variant 4), so one query tile is live at a time."""
    h = tl.program_id(0)
    p = tl.program_id(1)
    sp = tl.program_id(2)
    H = tl.num_programs(0)
    pool, c0, n, qend, rmask, pos, trow, scale = _est_setup(PIECE, QS, p, sm_log2, BM)
    kvoff = (h // G) * s_kh
    m = tl.full([BM], float("-inf"), tl.float32)
    l = tl.zeros([BM], tl.float32)
    if DCA:
        s_lo = tl.maximum(c0 - cl, 0)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, 4, h, D)
        m, l = _lse_region(q, scale, m, l, 0, s_lo, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, pos, rmask,
                           BN, D)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, 3, h, D)
        m, l = _lse_region(q, scale, m, l, s_lo, c0, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, pos,
                           rmask, BN, D)
        i_lo = c0
    else:
        i_lo = 0
    q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, 0, h, D)
    m, l = _lse_region(q, scale, m, l, i_lo, qend, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, pos, rmask,
                       BN, D)
    out = ML + ((p * H + h) * nsplit + sp) * (2 * BM) + tl.arange(0, BM)
    tl.store(out, m)
    tl.store(out + BM, l)


@triton.jit
def _scores_region(q, scale, lse, lo, hi, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, n, pos, rmask,
                   vbase, sbase, BM: tl.constexpr, BN: tl.constexpr, D: tl.constexpr):
    """Vertical (column) and slash (diagonal) softmax sums of the key tiles of ``[lo, hi)`` in split ``sp``."""
    i = tl.arange(0, BM)
    e = tl.arange(0, BN)
    # out[i, e] = prob[i, i - e + BN - 1]: row-shifted so that each output column is one diagonal
    j_lo = i[:, None] - e[None, :] + BN - 1
    j_hi = j_lo - BN
    ok_lo = (j_lo >= 0) & (j_lo < BN)
    ok_hi = (j_hi >= 0) & (j_hi < BN)
    first, end = _tile_range(lo, hi, sp, nsplit, BN)
    for t in range(first, end, nsplit):
        s, valid, cols, cmask, c = _est_logits(q, scale, K, s_kn, kvoff, R2T, pool, s_r2t, t, qend, pos, rmask,
                                               BN, D)
        pr = tl.where(valid, tl.exp2(s - lse[:, None]), 0.0)
        tl.store(vbase + cols, tl.sum(pr, 0), mask=cmask)
        dlo = tl.sum(tl.where(ok_lo, tl.gather(pr, tl.where(ok_lo, j_lo, 0), axis=1), 0.0), 0)
        dhi = tl.sum(tl.where(ok_hi, tl.gather(pr, tl.where(ok_hi, j_hi, 0), axis=1), 0.0), 0)
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
    h = tl.program_id(0)
    p = tl.program_id(1)
    sp = tl.program_id(2)
    H = tl.num_programs(0)
    pool, c0, n, qend, rmask, pos, trow, scale = _est_setup(PIECE, QS, p, sm_log2, BM)
    kvoff = (h // G) * s_kh
    lse = tl.load(LSE2 + (p * H + h) * BM + tl.arange(0, BM), mask=rmask, other=0.0)
    vbase = VERT + p * s_sc_p + h * s_sc_h
    sbase = SLASH + p * s_sc_p + h * s_sc_h
    if DCA:
        s_lo = tl.maximum(c0 - cl, 0)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, 4, h, D)
        _scores_region(q, scale, lse, 0, s_lo, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, n, pos, rmask,
                       vbase, sbase, BM, BN, D)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, 3, h, D)
        _scores_region(q, scale, lse, s_lo, c0, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, n, pos, rmask,
                       vbase, sbase, BM, BN, D)
        i_lo = c0
    else:
        i_lo = 0
    q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, 0, h, D)
    _scores_region(q, scale, lse, i_lo, qend, sp, nsplit, K, s_kn, kvoff, R2T, pool, s_r2t, qend, n, pos, rmask,
                   vbase, sbase, BM, BN, D)


def splits_per_row(programs: int, tiles: int, device: torch.device) -> int:
    """Programs per row (at most ``tiles``) so that about four programs run per SM when ``programs`` rows share
    the GPU."""
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(tiles, -(-4 * sms // max(programs, 1))))


def estimate_scores(
    q: torch.Tensor,
    q_scale: torch.Tensor,
    k_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    piece_table: torch.Tensor,
    max_len: int,
    sm_scale: float,
    chunk_len: Optional[int],
) -> torch.Tensor:
    """Vertical and slash scores of every piece (see :mod:`sgl_qwen1m.attention.vertical_slash`).

    Parameters
    ----------
    q : ``[T, V, H, D]`` query variants (``V == 5`` with DCA: intra, succ, inter, succ_critical, inter_critical).
    q_scale : ``[T]`` float32 per-token logit multiplier (YaRN ``s**2``; ones without).
    k_cache : ``[N, Hkv, D]`` the layer's key pool.
    req_to_token : ``[R, ctx]`` int32 slot table; piece_table : ``[P, 8]`` int32 (``PiecePlan.piece_table``, with
        column 0 already mapped to the request's row in ``req_to_token``).
    max_len : L, the longest ``q_end``.

    Returns
    -------
    ``[2, P, H, L]`` float32: vertical scores, then slash scores.
    """
    t, nv, h, d = q.shape
    hkv = k_cache.shape[1]
    p = piece_table.shape[0]
    dca = chunk_len is not None
    if dca and nv < 5:
        raise ValueError(f"estimate_scores: DCA needs the 5 query variants, got {nv}")
    tiles = triton.cdiv(max_len, BLOCK)
    ns = splits_per_row(h * p, tiles, q.device)
    ml = torch.empty(p, h, ns, 2, BLOCK, dtype=torch.float32, device=q.device)
    sm_log2 = sm_scale * LOG2E
    cl = chunk_len if dca else 1 << 30
    common = dict(G=h // hkv, D=d, BM=BLOCK, BN=BLOCK, DCA=dca)
    grid = (h, p, ns)
    _est_lse_kernel[grid](q, q.stride(0), q.stride(1), q.stride(2), q_scale, k_cache, k_cache.stride(0),
                          k_cache.stride(1), req_to_token, req_to_token.stride(0), piece_table, ml, sm_log2, cl, ns,
                          **common)
    m, l = ml[:, :, :, 0], ml[:, :, :, 1]
    mx = m.amax(dim=2, keepdim=True)
    mx_safe = torch.where(torch.isinf(mx), torch.zeros_like(mx), mx)
    lse2 = (mx_safe + torch.log2((l * torch.exp2(m - mx_safe)).sum(2, keepdim=True))).squeeze(2).contiguous()
    # rows padded to whole tiles: row strides stay multiples of 16 whatever L is (one Triton specialisation)
    scores = torch.zeros(2, p, h, tiles * BLOCK, dtype=torch.float32, device=q.device)[..., :max_len]
    vert, slash = scores[0], scores[1]
    _est_scores_kernel[grid](q, q.stride(0), q.stride(1), q.stride(2), q_scale, k_cache, k_cache.stride(0),
                             k_cache.stride(1), req_to_token, req_to_token.stride(0), piece_table, lse2, vert, slash,
                             vert.stride(0), vert.stride(1), sm_log2, cl, ns, **common)
    return scores


# ----------------------------------------------------------------------------------------------- sparse attention


@triton.jit
def _online(m, l, acc, s, scale, v):
    """One key tile of the online softmax. ``s``: raw logits (``-inf`` where masked); ``scale``: ``[BM]`` log2-unit
    logit scale."""
    s = s * scale[:, None]
    m_new = tl.maximum(m, tl.max(s, 1))
    pr = tl.exp2(s - m_new[:, None])
    alpha = tl.exp2(m - m_new)
    l = l * alpha + tl.sum(pr, 1)
    acc = acc * alpha[:, None] + tl.dot(pr.to(v.dtype), v)
    return m_new, l, acc


@triton.jit
def _diag_loop(q, scale, m, l, acc, lo, hi, dg, rb, rows, qend, R2T, pool, s_r2t, K, s_kn, kvoff, V, s_vn, vvoff,
               BN: tl.constexpr, D: tl.constexpr):
    """Block diagonals ``dg[lo:hi]`` of row block ``rb``: one ``BN``-key tile each (causally masked).

    Measured and dropped (benchmarks/results/logs/attn_variants_h100.log): running the tiles left of the row block
    without the mask, and walking the leading band as 128-key tiles, were slower or within noise end to end."""
    for t in range(lo, hi):
        dd = tl.load(dg + t)
        cols = (rb - dd) * BN + tl.arange(0, BN)
        cmask = cols < qend
        slots = tl.load(R2T + pool * s_r2t + cols, mask=cmask, other=0).to(tl.int64)
        k = _load_kv(K, s_kn, kvoff, slots, cmask, D)
        s = tl.where(cols[None, :] <= rows[:, None], tl.dot(q, tl.trans(k)), float("-inf"))
        v = _load_kv(V, s_vn, vvoff, slots, cmask, D)
        m, l, acc = _online(m, l, acc, s, scale, v)
    return m, l, acc


@triton.jit
def _col_loop(q, scale, m, l, acc, lo, hi, vc, cv, rb, R2T, pool, s_r2t, K, s_kn, kvoff, V, s_vn, vvoff,
              BN: tl.constexpr, D: tl.constexpr):
    for t in range(lo, hi, BN):
        idx = t + tl.arange(0, BN)
        im = idx < hi
        cols = tl.load(vc + idx, mask=im, other=0)
        covered = tl.load(cv + (rb - cols // BN), mask=im, other=1)
        ok = im & (covered == 0)
        slots = tl.load(R2T + pool * s_r2t + cols, mask=ok, other=0).to(tl.int64)
        k = _load_kv(K, s_kn, kvoff, slots, ok, D)
        s = tl.where(ok[None, :], tl.dot(q, tl.trans(k)), float("-inf"))
        v = _load_kv(V, s_vn, vvoff, slots, ok, D)
        m, l, acc = _online(m, l, acc, s, scale, v)
    return m, l, acc


@_tuned((3, 4, 5, 6))
@triton.jit
def _vs_attn_kernel(
    Q, s_qt, s_qv, s_qh, QS, K, s_kn, s_kh, V, s_vn, s_vh, O, s_ot, s_oh, LSE, s_lt,
    R2T, s_r2t, PIECE, BLK, DIAG, s_dg_p, s_dg_h, COV, s_cv_p, s_cv_h, VCOL, s_vc_p, s_vc_h, DCNT, VCNT, MB,
    sm_log2,
    G: tl.constexpr, D: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, DCA: tl.constexpr,
):
    h = tl.program_id(0)
    b = tl.program_id(1)
    H = tl.num_programs(0)
    p = tl.load(BLK + 2 * b)
    j = tl.load(BLK + 2 * b + 1)
    meta = PIECE + p * 8
    pool = tl.load(meta).to(tl.int64)
    qrow0 = tl.load(meta + 1)
    qpos0 = tl.load(meta + 2)
    qlen = tl.load(meta + 3)
    qend = qpos0 + qlen
    rb = qpos0 // BM + j
    rows = rb * BM + tl.arange(0, BM)
    rmask = (rows >= qpos0) & (rows < qend)
    trow = tl.where(rmask, qrow0 + rows - qpos0, 0).to(tl.int64)
    scale = tl.load(QS + trow, mask=rmask, other=1.0) * sm_log2
    cnt = ((p * H + h) * MB + j) * 3
    kvoff = (h // G) * s_kh
    vvoff = (h // G) * s_vh
    dg = DIAG + p * s_dg_p + h * s_dg_h
    cv = COV + p * s_cv_p + h * s_cv_h
    vc = VCOL + p * s_vc_p + h * s_vc_h
    m = tl.full([BM], float("-inf"), tl.float32)
    l = tl.zeros([BM], tl.float32)
    acc = tl.zeros([BM, D], tl.float32)
    d_intra = tl.load(DCNT + cnt)
    v_succ = tl.load(VCNT + cnt + 1)
    v_intra = tl.load(VCNT + cnt + 2)
    # intra first: block diagonal 0 gives every row a finite running max before any masked column tile
    q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, 0, h, D)
    m, l, acc = _diag_loop(q, scale, m, l, acc, 0, d_intra, dg, rb, rows, qend, R2T, pool, s_r2t, K, s_kn, kvoff,
                           V, s_vn, vvoff, BN, D)
    m, l, acc = _col_loop(q, scale, m, l, acc, v_succ, v_intra, vc, cv, rb, R2T, pool, s_r2t, K, s_kn, kvoff,
                          V, s_vn, vvoff, BN, D)
    if DCA:
        d_succ = tl.load(DCNT + cnt + 1)
        d_all = tl.load(DCNT + cnt + 2)
        v_inter = tl.load(VCNT + cnt)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, 1, h, D)
        m, l, acc = _diag_loop(q, scale, m, l, acc, d_intra, d_succ, dg, rb, rows, qend, R2T, pool, s_r2t, K, s_kn,
                               kvoff, V, s_vn, vvoff, BN, D)
        m, l, acc = _col_loop(q, scale, m, l, acc, v_inter, v_succ, vc, cv, rb, R2T, pool, s_r2t, K, s_kn, kvoff,
                              V, s_vn, vvoff, BN, D)
        q = _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, 2, h, D)
        m, l, acc = _diag_loop(q, scale, m, l, acc, d_succ, d_all, dg, rb, rows, qend, R2T, pool, s_r2t, K, s_kn,
                               kvoff, V, s_vn, vvoff, BN, D)
        m, l, acc = _col_loop(q, scale, m, l, acc, 0, v_inter, vc, cv, rb, R2T, pool, s_r2t, K, s_kn, kvoff,
                              V, s_vn, vvoff, BN, D)
    out = acc / l[:, None]
    d = tl.arange(0, D)
    tl.store(O + trow[:, None] * s_ot + h * s_oh + d[None, :], out.to(O.dtype.element_ty), mask=rmask[:, None])
    if LSE is not None:
        tl.store(LSE + trow * s_lt + h, (m + tl.log2(l)) * 0.6931471805599453, mask=rmask)


def vs_attention(
    q: torch.Tensor,
    q_scale: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    req_to_token: torch.Tensor,
    piece_table: torch.Tensor,
    block_table: torch.Tensor,
    diag: torch.Tensor,
    cov: torch.Tensor,
    v_idx: torch.Tensor,
    dcnt: torch.Tensor,
    vcnt: torch.Tensor,
    sm_scale: float,
    dca: bool,
    out: Optional[torch.Tensor] = None,
    return_lse: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Sparse DCA attention of every planned piece.

    Parameters
    ----------
    q : ``[T, V, H, D]`` query variants (``V >= 3`` with DCA: intra, succ, inter first).
    q_scale : ``[T]`` float32 per-token logit multiplier.
    k_cache, v_cache : ``[N, Hkv, D]`` the layer's pools (keys at DCA positions).
    piece_table : ``[P, 8]`` int32; block_table : ``[NBLK, 2]`` int32 (see ``PiecePlan``).
    diag, cov : ``[P, H, NB]`` from ``block_pattern``; v_idx : ``[P, H, KV]``; dcnt, vcnt : ``[P, H, MB, 3]``.

    Returns
    -------
    out ``[T, H, D]`` in ``q.dtype`` (rows outside the pieces untouched), lse ``[T, H]`` float32 natural log or None.
    """
    t, nv, h, d = q.shape
    hkv = k_cache.shape[1]
    if dca and nv < 3:
        raise ValueError(f"vs_attention: DCA needs the intra/succ/inter query variants, got {nv}")
    if out is None:
        out = torch.empty(t, h, d, dtype=q.dtype, device=q.device)
    lse = torch.empty(t, h, dtype=torch.float32, device=q.device) if return_lse else None
    nblk = block_table.shape[0]
    if nblk:
        _vs_attn_kernel[(h, nblk)](
            q, q.stride(0), q.stride(1), q.stride(2), q_scale,
            k_cache, k_cache.stride(0), k_cache.stride(1), v_cache, v_cache.stride(0), v_cache.stride(1),
            out, out.stride(0), out.stride(1), lse, lse.stride(0) if lse is not None else 0,
            req_to_token, req_to_token.stride(0), piece_table, block_table,
            diag, diag.stride(0), diag.stride(1), cov, cov.stride(0), cov.stride(1),
            v_idx, v_idx.stride(0), v_idx.stride(1), dcnt, vcnt, dcnt.shape[2],
            sm_scale * LOG2E,
            G=h // hkv, D=d, BM=BLOCK, BN=BLOCK, DCA=dca,
        )
    return out, lse
