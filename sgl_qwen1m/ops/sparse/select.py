"""Triton kernels for the selection half of the sparse pattern step (replacing torch ``topk``/``sort``/``scatter``).

* ``select_vs``: the top-``budget`` columns (kind 0) and diagonals (kind 1) of every piece and head by an exact
  radix select on the fp32 score bits (4 digits of 8 bits), then the chosen indices in ascending order by a
  prefix-sum compaction (no sort). Each row is cut into slices, one program each, so that long rows (1M keys)
  still fill the GPU: 4 histogram launches (merged per row with atomics; every program replays the digits chosen
  so far from them), one count launch, and one write launch that places each slice at its global offset.
  Sinks / local diagonals rank first; ties at the threshold take the earliest indices.
* ``pattern_bounds``: one program per (piece, head) turns the chosen diagonals into block diagonals (``cov``,
  ``diag``) with vectorised binary searches over the sorted diagonal list, then the per-row-block loop bounds
  (``dcnt``, ``vcnt``) by binary searches over ``diag`` and the chosen columns.

Both are exact integer rewrites of the torch references in :mod:`sgl_qwen1m.ops.sparse.reference`
(``select_vertical_slash``, ``block_pattern``, ``loop_bounds``); ``tests/test_sparse_select.py`` checks equality.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from sgl_qwen1m.ops.sparse.estimate import splits_per_row
from sgl_qwen1m.ops.sparse.plan import BLOCK, PAD, LayerBudget

__all__ = ["select_vs", "pattern_bounds"]

_PAD = tl.constexpr(PAD)
_SPAN = 4096  # elements per selection step
_MAX_SPLITS = 64  # slices per row at most
_BD = 1024  # block diagonals per pattern step
_BR = 128  # row blocks per loop-bounds step


@triton.jit
def _keys(X, off, n, nforce, SPAN: tl.constexpr):
    """Radix keys of ``SPAN`` scores from ``off``: int32 bits (order-preserving for scores >= 0), forced entries
    the largest key, absent or negative entries -1."""
    i = off + tl.arange(0, SPAN)
    x = tl.load(X + i, mask=i < n, other=-1.0)
    bits = x.to(tl.int32, bitcast=True)
    key = tl.where(x >= 0, bits, -1)
    key = tl.where((i < nforce) & (i < n), 0x7FFFFFFF, key)
    return i, key


@triton.jit
def _row(QEND, s_qe, DENSE, s_de, BUD, nforce_v, nforce_s, kout_v, kout_s, S):
    """This program's (head, piece, kind, split) and its row's key count, budget, forced count and output width."""
    h = tl.program_id(0)
    p = tl.program_id(1)
    kind = tl.program_id(2) // S
    split = tl.program_id(2) % S
    H = tl.num_programs(0)
    n = tl.load(QEND + p * s_qe).to(tl.int32)
    need = tl.load(BUD + kind * H + h).to(tl.int32)
    need = tl.where((kind == 0) & (tl.load(DENSE + p * s_de) != 0), 0, need)  # dense pieces take no extra columns
    nforce = tl.where(kind == 0, nforce_v, nforce_s)
    kout = tl.where(kind == 0, kout_v, kout_s)
    return h, p, kind, split, H, n, need, nforce, kout


@triton.jit
def _radix_state(hrow, s_step, need, STEPS: tl.constexpr):
    """Replay the first ``STEPS`` digits of the radix select from their histograms (``hrow + step * s_step``,
    256 bins each). Elements with ``key & hi_mask == prefix`` are still undecided; ``need`` of them remain to take.
    ``done`` marks a threshold found early (budget 0, or no more valid entries than the budget) with ``thr`` set;
    after 4 digits ``thr`` is the exact key of the last element taken."""
    bins = tl.arange(0, 256)
    prefix = tl.full([], 0, tl.int32)
    hi_mask = tl.full([], 0, tl.int32)
    done = need <= 0
    thr = tl.where(done, 0x7FFFFFFF, 0)
    need = tl.maximum(need, 0)
    for step in tl.static_range(STEPS):
        shift = 24 - 8 * step
        digit_bits = (255 << shift) & 0x7FFFFFFF  # keys >= 0: bit 31 is never set
        hist = tl.load(hrow + step * s_step + bins)
        total = tl.sum(hist, 0)
        if step == 0:
            take_all = (~done) & (total <= need)
            need = tl.where(take_all, total, need)
            done = done | take_all
        ge = total - tl.cumsum(hist, 0) + hist  # entries whose digit is >= the bin's
        dig = tl.sum((ge >= need).to(tl.int32), 0) - 1
        above = tl.sum(tl.where(bins > dig, hist, 0), 0)
        need = tl.where(done, need, need - above)
        prefix = tl.where(done, prefix, prefix | (dig << shift))
        hi_mask = hi_mask | digit_bits
    if STEPS == 4:
        thr = tl.where(done, thr, prefix)
    return prefix, hi_mask, need, done, thr


@triton.jit(do_not_specialize=["nforce_v", "nforce_s", "kout_v", "kout_s", "S", "per"])
def _hist_kernel(
    X, s_xk, s_xp, s_xh, QEND, s_qe, DENSE, s_de, BUD, nforce_v, nforce_s, kout_v, kout_s, S, per,
    HIST, s_hs, s_hk, s_hp, s_hh,
    STEP: tl.constexpr, SPAN: tl.constexpr,
):
    """Histogram of digit ``STEP`` over this program's slice of the row (undecided elements only), added into
    the row's global histogram."""
    h, p, kind, split, H, n, need, nforce, kout = _row(QEND, s_qe, DENSE, s_de, BUD, nforce_v, nforce_s,
                                                      kout_v, kout_s, S)
    hrow = HIST + kind * s_hk + p * s_hp + h * s_hh
    prefix, hi_mask, need, done, thr = _radix_state(hrow, s_hs, need, STEP)
    row = X + kind * s_xk + p * s_xp + h * s_xh
    lo = split * per
    hi = tl.minimum(lo + per, n)
    hist = tl.zeros([256], tl.int32)
    if not done:
        for off in range(lo, hi, SPAN):
            _, key = _keys(row, off, hi, nforce, SPAN)
            m = (key >= 0) & ((key & hi_mask) == prefix)
            hist = hist + tl.histogram((key >> (24 - 8 * STEP)) & 255, 256, mask=m)
    tl.atomic_add(hrow + STEP * s_hs + tl.arange(0, 256), hist, sem="relaxed")


@triton.jit(do_not_specialize=["nforce_v", "nforce_s", "kout_v", "kout_s", "S", "per", "s_ck", "s_cp", "s_ch"])
def _count_kernel(
    X, s_xk, s_xp, s_xh, QEND, s_qe, DENSE, s_de, BUD, nforce_v, nforce_s, kout_v, kout_s, S, per,
    HIST, s_hs, s_hk, s_hp, s_hh, CNT, s_ck, s_cp, s_ch,
    SPAN: tl.constexpr,
):
    """Elements above the threshold, and equal to it, in this program's slice."""
    h, p, kind, split, H, n, need, nforce, kout = _row(QEND, s_qe, DENSE, s_de, BUD, nforce_v, nforce_s,
                                                      kout_v, kout_s, S)
    prefix, hi_mask, need, done, thr = _radix_state(HIST + kind * s_hk + p * s_hp + h * s_hh, s_hs, need, 4)
    row = X + kind * s_xk + p * s_xp + h * s_xh
    lo = split * per
    hi = tl.minimum(lo + per, n)
    gt = tl.full([], 0, tl.int32)
    eq = tl.full([], 0, tl.int32)
    for off in range(lo, hi, SPAN):
        _, key = _keys(row, off, hi, nforce, SPAN)
        gt = gt + tl.sum(((key > thr) & (key >= 0)).to(tl.int32), 0)
        eq = eq + tl.sum(((key == thr) & (key >= 0)).to(tl.int32), 0)
    c = CNT + kind * s_ck + p * s_cp + h * s_ch + 2 * split
    tl.store(c, gt)
    tl.store(c + 1, eq)


@triton.jit(do_not_specialize=["nforce_v", "nforce_s", "kout_v", "kout_s", "S", "per", "s_ck", "s_cp", "s_ch", "s_ok", "s_op", "s_oh"])
def _write_kernel(
    X, s_xk, s_xp, s_xh, QEND, s_qe, DENSE, s_de, BUD, nforce_v, nforce_s, kout_v, kout_s, S, per,
    HIST, s_hs, s_hk, s_hp, s_hh, CNT, s_ck, s_cp, s_ch, OUT, s_ok, s_op, s_oh,
    SPAN: tl.constexpr, SMAX: tl.constexpr,
):
    """Chosen indices of this program's slice, in index order, at their global offsets (slices before it take
    their elements above the threshold, then the first ``need`` equal ones in index order); split 0 pads."""
    h, p, kind, split, H, n, need, nforce, kout = _row(QEND, s_qe, DENSE, s_de, BUD, nforce_v, nforce_s,
                                                      kout_v, kout_s, S)
    prefix, hi_mask, need, done, thr = _radix_state(HIST + kind * s_hk + p * s_hp + h * s_hh, s_hs, need, 4)
    sp = tl.arange(0, SMAX)
    c = CNT + kind * s_ck + p * s_cp + h * s_ch + 2 * sp
    n_gt = tl.load(c, mask=sp < S, other=0)
    n_eq = tl.load(c + 1, mask=sp < S, other=0)
    eq_before = tl.cumsum(n_eq, 0) - n_eq
    taken = tl.minimum(tl.maximum(need - eq_before, 0), n_eq)
    before = sp < split
    written = tl.sum(tl.where(before, n_gt + taken, 0), 0)
    eq_seen = tl.sum(tl.where(before, n_eq, 0), 0)
    total = tl.sum(n_gt + taken, 0)
    out = OUT + kind * s_ok + p * s_op + h * s_oh
    row = X + kind * s_xk + p * s_xp + h * s_xh
    lo = split * per
    hi = tl.minimum(lo + per, n)
    for off in range(lo, hi, SPAN):
        i, key = _keys(row, off, hi, nforce, SPAN)
        eq = (key == thr) & (key >= 0)
        eq_rank = tl.cumsum(eq.to(tl.int32), 0) + eq_seen
        sel = ((key > thr) | (eq & (eq_rank <= need))) & (key >= 0)
        pos = written + tl.cumsum(sel.to(tl.int32), 0) - 1
        tl.store(out + pos, i, mask=sel)
        written = written + tl.sum(sel.to(tl.int32), 0)
        eq_seen = eq_seen + tl.sum(eq.to(tl.int32), 0)
    if split == 0:
        for off in range(0, kout, SPAN):
            i = off + tl.arange(0, SPAN)
            tl.store(out + i, _PAD, mask=(i >= total) & (i < kout))


def select_vs(
    scores: torch.Tensor,
    q_end: torch.Tensor,
    dense: torch.Tensor,
    budget: LayerBudget,
    *,
    sink: int,
    local: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen columns and diagonals of every piece and head: ``select_vertical_slash`` semantics, plus no columns
    for pieces that run densely (what ``SparsePrefill.build_pattern`` applies).

    Parameters
    ----------
    scores : ``[2, P, H, L]`` float32: vertical (``[0]``) and slash (``[1]``) scores, read only.
    q_end : ``[P]`` int64; dense : ``[P]`` bool; budget : the layer's per-head budgets.
    sink, local : forced leading columns / diagonals.

    Returns
    -------
    (v_idx ``[P, H, max(max_vertical, 1)]``, s_idx ``[P, H, max(max_slash, 1)]``) int32 ascending, PAD-padded
    (views of one buffer, last-dim stride 1).
    """
    _, p, h, length = scores.shape
    if scores.stride(-1) != 1:
        raise ValueError("select_vs: scores must be contiguous in the key dimension")
    kv = max(1, min(budget.max_vertical, length))
    ks = max(1, min(budget.max_slash, length))
    dev = scores.device
    slices = min(_MAX_SPLITS, splits_per_row(2 * p * h, triton.cdiv(length, _SPAN), dev))
    per = triton.cdiv(triton.cdiv(length, slices), _SPAN) * _SPAN
    splits = triton.cdiv(length, per)
    out = torch.empty(2, p, h, max(kv, ks), dtype=torch.int32, device=dev)
    hist = torch.zeros(4, 2, p, h, 256, dtype=torch.int32, device=dev)
    cnt = torch.empty(2, p, h, splits, 2, dtype=torch.int32, device=dev)
    row = (scores, scores.stride(0), scores.stride(1), scores.stride(2), q_end, q_end.stride(0), dense,
           dense.stride(0), budget.stacked, min(sink, length), min(local, length), kv, ks, splits, per,
           hist, hist.stride(0), hist.stride(1), hist.stride(2), hist.stride(3))
    grid = (h, p, 2 * splits)
    for step in range(4):
        _hist_kernel[grid](*row, STEP=step, SPAN=_SPAN, num_warps=8)
    _count_kernel[grid](*row, cnt, cnt.stride(0), cnt.stride(1), cnt.stride(2), SPAN=_SPAN, num_warps=8)
    _write_kernel[grid](*row, cnt, cnt.stride(0), cnt.stride(1), cnt.stride(2), out, out.stride(0), out.stride(1),
                        out.stride(2), SPAN=_SPAN, SMAX=_MAX_SPLITS, num_warps=8)
    return out[0, :, :, :kv], out[1, :, :, :ks]


@triton.jit
def _count_less(row, n, x, nlog):
    """Vectorised lower bound: for each ``x``, how many of the ascending ``row[0:n]`` are ``< x``."""
    lo = tl.zeros(x.shape, tl.int32)
    hi = tl.zeros(x.shape, tl.int32) + n
    for _ in range(nlog):
        act = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(row + mid, mask=act, other=0x7FFFFFFF)
        go = act & (v < x)
        lo = tl.where(go, mid + 1, lo)
        hi = tl.where(act & (v >= x), mid, hi)
    return lo


@triton.jit(do_not_specialize=["s_sp", "s_sh", "KS", "s_vp", "s_vh", "KV", "s_cp", "s_ch", "s_dp", "s_dh", "NB",
                              "MB", "cl", "log_s", "log_v", "log_d"])
def _pattern_kernel(
    SIDX, s_sp, s_sh, KS, VIDX, s_vp, s_vh, KV, PIECE, COV, s_cp, s_ch, DIAG, s_dp, s_dh, NB,
    DCNT, VCNT, MB, cl, log_s, log_v, log_d,
    BD: tl.constexpr, BR: tl.constexpr, BLK: tl.constexpr,
):
    h = tl.program_id(0)
    p = tl.program_id(1)
    H = tl.num_programs(0)
    meta = PIECE + p * 4
    fb = tl.load(meta + 1).to(tl.int32)
    c0 = tl.load(meta + 2).to(tl.int32)
    dense = tl.load(meta + 3)
    prev = tl.maximum(c0 - cl, 0)
    srow = SIDX + p * s_sp + h * s_sh
    vrow = VIDX + p * s_vp + h * s_vh
    crow = COV + p * s_cp + h * s_ch
    drow = DIAG + p * s_dp + h * s_dh
    # block diagonal d is chosen iff some chosen diagonal o has o // BLK == d, or o // BLK == d - 1 with
    # o % BLK != 0, i.e. iff one lies in [BLK * d - BLK + 1, BLK * d + BLK)
    written = 0
    band = NB  # leading run of chosen block diagonals 0 .. band - 1
    for d0 in range(0, NB, BD):
        d = d0 + tl.arange(0, BD)
        ok = d < NB
        c = _count_less(srow, KS, d * BLK + BLK, log_s) > _count_less(srow, KS, d * BLK - BLK + 1, log_s)
        c = ok & (c | (d == 0) | (dense != 0))
        tl.store(crow + d, c.to(tl.int8), mask=ok)
        tl.store(drow + written + tl.cumsum(c.to(tl.int32), 0) - 1, d, mask=c)
        written = written + tl.sum(c.to(tl.int32), 0)
        band = tl.minimum(band, tl.min(tl.where(ok & ~c, d, NB), 0))
    for d0 in range(0, NB, BD):
        d = d0 + tl.arange(0, BD)
        tl.store(drow + d, _PAD, mask=(d >= written) & (d < NB))
    tl.debug_barrier()  # `diag` written above is read back by other threads of this program
    for j0 in range(0, MB, BR):
        j = j0 + tl.arange(0, BR)
        ok = j < MB
        rb = fb + j
        base = ((p * H + h) * MB + j) * 3
        tl.store(DCNT + base, _count_less(drow, written, rb - c0 // BLK + 1, log_d), mask=ok)
        tl.store(DCNT + base + 1, _count_less(drow, written, rb - prev // BLK + 1, log_d), mask=ok)
        tl.store(DCNT + base + 2, _count_less(drow, written, rb + 1, log_d), mask=ok)
        tl.store(VCNT + base, _count_less(vrow, KV, tl.zeros([BR], tl.int32) + prev, log_v), mask=ok)
        tl.store(VCNT + base + 1, _count_less(vrow, KV, tl.zeros([BR], tl.int32) + c0, log_v), mask=ok)
        # intra columns stop where the leading band covers them (see reference.loop_bounds)
        tl.store(VCNT + base + 2, _count_less(vrow, KV, tl.maximum((rb - band + 1) * BLK, c0), log_v), mask=ok)


def _nlog(n: int) -> int:
    """Halvings a lower bound over ``n`` entries needs."""
    return max(1, int(n).bit_length() + 1)


def pattern_bounds(
    s_idx: torch.Tensor,
    v_idx: torch.Tensor,
    pieces: torch.Tensor,
    *,
    num_key_blocks: int,
    max_blocks: int,
    chunk_len: Optional[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``block_pattern`` and ``loop_bounds`` in one launch.

    Parameters
    ----------
    s_idx : ``[P, H, KS]`` int32 ascending diagonals; v_idx : ``[P, H, KV]`` int32 ascending columns (PAD-padded,
        last-dim stride 1; pieces that run densely must already have no columns).
    pieces : ``[P, 4]`` int64 rows ``[q_end, first_block, c0, dense]`` (``SparseState.pieces``), contiguous.
    num_key_blocks : NB; max_blocks : MB; chunk_len : DCA chunk length or None.

    Returns
    -------
    cov ``[P, H, NB]`` int8, diag ``[P, H, NB]`` int32, dcnt / vcnt ``[P, H, MB, 3]`` int32 (as the torch functions).
    """
    p, h, ks = s_idx.shape
    kv = v_idx.shape[2]
    if s_idx.stride(-1) != 1 or v_idx.stride(-1) != 1:
        raise ValueError("pattern_bounds: index lists must be contiguous in their last dimension")
    if pieces.shape[1:] != (4,) or not pieces.is_contiguous():
        raise ValueError(f"pattern_bounds: pieces must be a contiguous [P, 4] table, got {tuple(pieces.shape)}")
    nb = num_key_blocks
    dev = s_idx.device
    cov = torch.empty(p, h, nb, dtype=torch.int8, device=dev)
    diag = torch.empty(p, h, nb, dtype=torch.int32, device=dev)
    dcnt = torch.empty(p, h, max_blocks, 3, dtype=torch.int32, device=dev)
    vcnt = torch.empty_like(dcnt)
    cl = chunk_len if chunk_len is not None else 1 << 30
    _pattern_kernel[(h, p)](
        s_idx, s_idx.stride(0), s_idx.stride(1), ks, v_idx, v_idx.stride(0), v_idx.stride(1), kv, pieces,
        cov, cov.stride(0), cov.stride(1), diag, diag.stride(0), diag.stride(1), nb, dcnt, vcnt, max_blocks, cl,
        _nlog(ks), _nlog(kv), _nlog(nb), BD=_BD, BR=_BR, BLK=BLOCK, num_warps=4,
    )
    return cov, diag, dcnt, vcnt
