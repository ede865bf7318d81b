"""Triton sparse attention of vertical-slash sparse prefill on SGLang's paged KV pool (no K/V copies, no GQA repeat).

``vs_attention``: one launch per layer for every piece, head and 64-row query block. It walks the head's block
diagonals and then its extra columns, switching between the intra / succ / inter query rotations by key region,
so all DCA stages of a query merge inside one online softmax (no LSE merge pass). Keys and values are read
through ``req_to_token`` from the pool, by KV head, so a GQA group's query heads (adjacent programs) share
them in L2. Returns natural-log LSE. An FP8 pool (e4m3 / e5m2) is read as stored and widened in registers; its
per-tensor ``k_scale`` is folded into the logit scale and ``v_scale`` into the output (no dequantised copy).

fp32 oracle: :func:`sgl_qwen1m.ops.sparse.reference.pattern_mask_ref` with ``ops.dca.reference.dca_attention_ref``;
tests: ``tests/test_sparse.py``.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from sgl_qwen1m.ops.sparse._triton import LOG2E, _load_kv, _load_q, _tuned
from sgl_qwen1m.ops.sparse.plan import BLOCK, SparsePattern, SparseState

__all__ = ["vs_attention"]


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

    Measured and dropped (benchmarks/results/sparse-ab-h100/attn_variants_h100.log.gz): running the tiles left of the row block
    without the mask, and walking the leading band as 128-key tiles, were slower or within noise end to end."""
    for t in range(lo, hi):
        dd = tl.load(dg + t)
        cols = (rb - dd) * BN + tl.arange(0, BN)
        cmask = cols < qend
        slots = tl.load(R2T + pool * s_r2t + cols, mask=cmask, other=0).to(tl.int64)
        k = _load_kv(K, s_kn, kvoff, slots, cmask, q.dtype, D)
        s = tl.where(cols[None, :] <= rows[:, None], tl.dot(q, tl.trans(k)), float("-inf"))
        v = _load_kv(V, s_vn, vvoff, slots, cmask, q.dtype, D)
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
        k = _load_kv(K, s_kn, kvoff, slots, ok, q.dtype, D)
        s = tl.where(ok[None, :], tl.dot(q, tl.trans(k)), float("-inf"))
        v = _load_kv(V, s_vn, vvoff, slots, ok, q.dtype, D)
        m, l, acc = _online(m, l, acc, s, scale, v)
    return m, l, acc


@_tuned((3, 4, 5, 6))
@triton.jit
def _vs_attn_kernel(
    Q, s_qt, s_qv, s_qh, QS, K, s_kn, s_kh, V, s_vn, s_vh, O, s_ot, s_oh, LSE, s_lt,
    R2T, s_r2t, PIECE, BLK, DIAG, s_dg_p, s_dg_h, COV, s_cv_p, s_cv_h, VCOL, s_vc_p, s_vc_h, DCNT, VCNT, MB,
    sm_log2, v_scale,
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
    out = acc * (v_scale / l)[:, None]  # v_scale: the FP8 pool's per-tensor value scale (1.0 for bf16)
    d = tl.arange(0, D)
    tl.store(O + trow[:, None] * s_ot + h * s_oh + d[None, :], out.to(O.dtype.element_ty), mask=rmask[:, None])
    if LSE is not None:
        tl.store(LSE + trow * s_lt + h, (m + tl.log2(l)) * 0.6931471805599453, mask=rmask)


def vs_attention(
    q: torch.Tensor,
    state: SparseState,
    pattern: SparsePattern,
    kv_cache: tuple[torch.Tensor, torch.Tensor],
    *,
    sm_scale: float,
    dca: bool,
    k_scale: float = 1.0,
    v_scale: float = 1.0,
    out: Optional[torch.Tensor] = None,
    return_lse: bool = False,
) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Sparse DCA attention of every planned piece.

    Parameters
    ----------
    q : ``[T, V, H, D]`` query variants (``V >= 3`` with DCA: intra, succ, inter first).
    state : SparseState
        The batch's plan: ``q_scale`` ``[T]`` float32 per-token logit multiplier, ``req_to_token`` ``[R, ctx]`` int32,
        ``piece_table`` ``[P, 8]`` int32, ``block_table`` ``[NBLK, 2]`` int32 (see ``PiecePlan``).
    pattern : SparsePattern
        The layer's pattern: ``diag``, ``cov`` ``[P, H, NB]``; ``v_idx`` ``[P, H, KV]``; ``dcnt``, ``vcnt``
        ``[P, H, MB, 3]``.
    kv_cache : (k, v)
        ``[N, Hkv, D]`` each: the layer's pools (keys at DCA positions), in the query dtype or FP8 (e4m3 / e5m2,
        widened in registers; no dequantised copy).
    sm_scale : softmax scale; dca : whether the succ / inter regions run (a DCA model).
    k_scale, v_scale : the pool's per-tensor dequantisation scales (SGLang's ``layer.k_scale_float`` /
        ``v_scale_float``; 1.0 for a bf16 pool). ``k_scale`` is folded into the fp32 logit scale (so the LSE is that
        of the dequantised keys), ``v_scale`` multiplies the normalised output.
    out : optional ``[T, H, D]`` output buffer.

    Returns
    -------
    out ``[T, H, D]`` in ``q.dtype`` (rows outside the pieces untouched), lse ``[T, H]`` float32 natural log or None.
    """
    k_cache, v_cache = kv_cache
    q_scale, req_to_token = state.q_scale, state.req_to_token
    piece_table, block_table = state.piece_table, state.block_table
    diag, cov, v_idx, dcnt, vcnt = pattern.diag, pattern.cov, pattern.v_idx, pattern.dcnt, pattern.vcnt
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
            sm_scale * k_scale * LOG2E, float(v_scale),
            G=h // hkv, D=d, BM=BLOCK, BN=BLOCK, DCA=dca,
        )
    return out, lse
