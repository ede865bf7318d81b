"""Triton helpers shared by the sparse estimation (``estimate.py``, ``estimate_gqa.py``) and attention
(``attention.py``) kernels."""

from __future__ import annotations

import os
from typing import Optional

import triton
import triton.language as tl

__all__ = ["LOG2E", "_tuned", "_load_q", "_load_kv", "_region", "_tile_range", "_piece_meta",
           "_lse_update", "_diag_index", "_est_logits"]

LOG2E = 1.4426950408889634


def _tuned(stages: tuple[int, ...], reset: Optional[list[str]] = None):
    """Autotune ``num_stages`` (4 warps: one warpgroup per 64-row tile) once per head shape; plain in the interpreter.

    Measured on H100 (benchmarks/results/sparse-ab-h100/tune_sparse_h100.log): 4 warps beat 8, and deeper pipelines hide the
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
    """``[BM, D]`` rows of query variant ``var`` of head ``h`` (unscaled: logits are scaled in fp32 after the dot);
    ``h`` a scalar, or ``[BM, 1]`` for a head per row (a GQA head group's rows, ``estimate_gqa.py``)."""
    d = tl.arange(0, D)
    return tl.load(Q + trow[:, None] * s_qt + var * s_qv + h * s_qh + d[None, :], mask=rmask[:, None], other=0.0)


@triton.jit
def _load_kv(X, s_xn, kvoff, slots, cmask, dtype: tl.constexpr, D: tl.constexpr):
    """``[BN, D]`` pool rows ``slots`` of one KV head, converted in registers to ``dtype`` (the query dtype).

    An FP8 pool (e4m3 / e5m2: SGLang's ``--kv-cache-dtype fp8_*``) is read as stored and widened here, exactly (every
    e4m3 / e5m2 value is a bf16 / fp16 value); its per-tensor scale is applied by the caller in fp32, after the dot
    (keys: folded into the logit scale; values: into the output). For a bf16 pool the conversion is a no-op."""
    d = tl.arange(0, D)
    return tl.load(X + slots[:, None] * s_xn + kvoff + d[None, :], mask=cmask[:, None], other=0.0).to(dtype)


@triton.jit
def _region(r: tl.constexpr, c0, cl, qend, DCA: tl.constexpr):
    """Key range ``[lo, hi)`` of key region ``r`` of a piece whose DCA chunk starts at ``c0``, and the query variant
    that scores it: inter ``[0, c0 - C)`` with ``q_inter_critical`` (4), succ ``[c0 - C, c0)`` with
    ``q_succ_critical`` (3), intra ``[c0, qend)`` with ``q_intra`` (0). Without DCA only region 2 runs, over
    ``[0, qend)``. Both estimation passes walk ``for r in tl.static_range(0 if DCA else 2, 3)`` (unrolled)."""
    if r == 0:
        return 0, tl.maximum(c0 - cl, 0), 4
    elif r == 1:
        return tl.maximum(c0 - cl, 0), c0, 3
    else:
        if DCA:
            return c0, qend, 0
        else:
            return 0, qend, 0


@triton.jit
def _tile_range(lo, hi, sp, nsplit, BN: tl.constexpr):
    """This split's first key tile of the column range ``[lo, hi)`` and the range's end tile: tiles
    ``t = first, first + nsplit, ...`` below the end. ``lo`` is a tile boundary (``plan_pieces`` requires
    ``chunk_len % BLOCK == 0``), so each tile lies in one DCA key region."""
    t0 = lo // BN
    return t0 + (sp - t0 % nsplit + nsplit) % nsplit, tl.cdiv(hi, BN)


@triton.jit
def _piece_meta(PIECE, p):
    """Row ``p`` of the piece table (``plan.SparseState.piece_table``): the request's ``req_to_token`` row, first
    query row, first query position, query count, DCA chunk start, estimation rows; and the query end position."""
    meta = PIECE + p * 8
    qpos0 = tl.load(meta + 2)
    qlen = tl.load(meta + 3)
    return (tl.load(meta).to(tl.int64), tl.load(meta + 1), qpos0, qlen, tl.load(meta + 4), tl.load(meta + 5),
            qpos0 + qlen)


@triton.jit
def _lse_update(m, l, s):
    """One key tile into the running ``(max, sum)`` of each row: ``s`` ``[R, BN]`` log2-unit logits (``-inf`` where
    masked); rows with no key yet keep ``(-inf, 0)``."""
    m_new = tl.maximum(m, tl.max(s, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, l * tl.exp2(m - m_safe) + tl.sum(tl.exp2(s - m_safe[:, None]), 1)


@triton.jit
def _diag_index(BM: tl.constexpr, BN: tl.constexpr):
    """Column indices that shift a ``[BM, BN]`` probability tile so each output column is one diagonal:
    ``out[i, e] = prob[i, j_lo[i, e]]`` (low half, valid where ``ok_lo``) and ``prob[i, j_hi[i, e]]`` (high half);
    indices are clamped to 0 where not valid. Output column ``e`` is diagonal ``(qend - n - c) + e - (BN - 1)``
    (``+ BN`` for the high half) of the key tile starting at column ``c``."""
    i = tl.arange(0, BM)
    e = tl.arange(0, BN)
    j_lo = i[:, None] - e[None, :] + BN - 1
    j_hi = j_lo - BN
    ok_lo = (j_lo >= 0) & (j_lo < BN)
    ok_hi = (j_hi >= 0) & (j_hi < BN)
    return tl.where(ok_lo, j_lo, 0), ok_lo, tl.where(ok_hi, j_hi, 0), ok_hi


@triton.jit
def _est_logits(q, scale, K, s_kn, kvoff, R2T, pool, s_r2t, t, qend, pos, rmask, BN: tl.constexpr, D: tl.constexpr):
    """Logits of the estimation rows ``q`` ``[R, D]`` (``R`` = 64 rows of one head, or of a GQA head group) against
    key tile ``t`` of one KV head, gathered once through ``req_to_token``: ``(s, valid, cols, cmask, c)`` with ``s``
    ``[R, BN]`` fp32 in log2 units, ``-inf`` where masked (causal, rows past ``n``, columns past ``qend``)."""
    c = t * BN
    cols = c + tl.arange(0, BN)
    cmask = cols < qend
    slots = tl.load(R2T + pool * s_r2t + cols, mask=cmask, other=0).to(tl.int64)
    k = _load_kv(K, s_kn, kvoff, slots, cmask, q.dtype, D)
    s = tl.dot(q, tl.trans(k)) * scale[:, None]  # fp32 logits in log2 units
    valid = rmask[:, None] & (cols[None, :] <= pos[:, None])
    return tl.where(valid, s, float("-inf")), valid, cols, cmask, c
