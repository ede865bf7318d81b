"""The fp32 DCA oracle against independent float64 computations, per-stage LSE merging and RoPE semantics."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sgl_qwen1m.ops.dca.plan import RequestSpan, Stage, dca_positions, plan_extend
from sgl_qwen1m.ops.dca.reference import LN2, dca_attention_ref, merge_lse_ref
from sgl_qwen1m.config import DCAConfig

L = 100  # keys per request in the parametrized tests
D = 8
# chunk_len -> DCA boundaries inside [0, L): (L-1)//C
CHUNKS = {60: 1, 40: 2, 30: 3}
TQS = [1, 63, 64, 65]
GQA = [(4, 4), (14, 2)]  # 1:1 and 7:1 (two KV groups, so the head -> KV-head mapping matters)
TOL = dict(atol=2e-5, rtol=2e-5)


# ---------------------------------------------------------------------------------------------------------------
# independent float64 helpers (per-head loops, explicit masks)
# ---------------------------------------------------------------------------------------------------------------


def _attend(q, k, v, mask, scale):
    """Plain masked softmax attention in float64. q [T,H,D], k/v [S,Hkv,D], mask [T,S] bool.

    Query head h reads KV head h // (H // Hkv) (SGLang / FlashInfer GQA layout). Rows with no key get
    out 0 and lse -inf.
    """
    T, H, _ = q.shape
    g = H // k.shape[1]
    out = torch.zeros(T, H, v.shape[-1], dtype=torch.float64)
    lse = torch.full((T, H), -math.inf, dtype=torch.float64)
    for h in range(H):
        logits = (q[:, h].double() @ k[:, h // g].double().T) * scale
        logits = logits.masked_fill(~mask, -math.inf)
        lh = torch.logsumexp(logits, dim=-1)
        p = torch.where(mask, torch.exp(logits - lh[:, None].clamp(min=-1e300)), 0.0)
        out[:, h] = p @ v[:, h // g].double()
        lse[:, h] = lh
    return out, lse


def _stage(p, j, c):
    cp, cj = p // c, j // c
    return torch.where(cp == cj, 0, torch.where(cp == cj + 1, 1, 2))


def _naive_dca(q, k, v, qpos, c, scale):
    """float64 DCA: per head, logits of pair (p, j) from variant stage(p, j); one softmax over j <= p."""
    T, _, H, _ = q.shape
    g = H // k.shape[1]
    j = torch.arange(k.shape[0])
    causal = j[None, :] <= qpos[:, None]
    stage = _stage(qpos[:, None], j[None, :], c) if c is not None else torch.zeros_like(causal, dtype=torch.long)
    out = torch.zeros(T, H, v.shape[-1], dtype=torch.float64)
    lse = torch.zeros(T, H, dtype=torch.float64)
    for h in range(H):
        kh = k[:, h // g].double()
        logits = torch.zeros(T, k.shape[0], dtype=torch.float64)
        for s in range(3 if c is not None else 1):
            logits = torch.where(stage == s, q[:, s, h].double() @ kh.T, logits)
        logits = (logits * scale).masked_fill(~causal, -math.inf)
        lse[:, h] = torch.logsumexp(logits, -1)
        out[:, h] = torch.softmax(logits, -1) @ v[:, h // g].double()
    return out, lse


def _inputs(tq, h, hkv, seed, nvar=5, length=L):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(tq, nvar, h, D, generator=g, dtype=torch.float64)
    k = torch.randn(length, hkv, D, generator=g, dtype=torch.float64)
    v = torch.randn(length, hkv, D, generator=g, dtype=torch.float64)
    qpos = torch.arange(length - tq, length)  # the last tq tokens: an extend with prefix length - tq
    return q, k, v, qpos


def _check(got, want):
    out, lse = got
    wout, wlse = want
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), wout, **TOL)
    torch.testing.assert_close(lse.double(), wlse, **TOL)


# ---------------------------------------------------------------------------------------------------------------
# plain causal
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,hkv", GQA)
@pytest.mark.parametrize("tq", TQS)
def test_no_chunk_equals_naive_causal(tq, h, hkv):
    q, k, v, qpos = _inputs(tq, h, hkv, seed=tq * 100 + h, nvar=1)
    scale = D**-0.5
    mask = torch.arange(L)[None, :] <= qpos[:, None]
    want = _attend(q[:, 0], k, v, mask, scale)
    _check(dca_attention_ref(q, k, v, qpos, None, scale), want)
    # small query blocks (several loop iterations) give the same answer
    _check(dca_attention_ref(q, k, v, qpos, None, scale, block=16), want)


@pytest.mark.parametrize("h,hkv", GQA)
@pytest.mark.parametrize("tq", TQS)
def test_huge_chunk_equals_no_chunk(tq, h, hkv):
    q, k, v, qpos = _inputs(tq, h, hkv, seed=7 + tq)
    scale = D**-0.5
    plain = dca_attention_ref(q[:, :1], k, v, qpos, None, scale)
    for c in (L, L + 1, 10**9):  # a single DCA chunk: succ/inter variants must be ignored
        out, lse = dca_attention_ref(q, k, v, qpos, c, scale)
        torch.testing.assert_close(out, plain[0], atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(lse, plain[1], atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# DCA
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c", sorted(CHUNKS), ids=[f"{b}-boundaries" for _, b in sorted(CHUNKS.items())])
@pytest.mark.parametrize("h,hkv", GQA)
@pytest.mark.parametrize("tq", TQS)
def test_dca_equals_naive_float64(tq, h, hkv, c):
    assert (L - 1) // c == CHUNKS[c]
    q, k, v, qpos = _inputs(tq, h, hkv, seed=c * 1000 + tq * 10 + h)
    scale = D**-0.5
    want = _naive_dca(q, k, v, qpos, c, scale)
    _check(dca_attention_ref(q, k, v, qpos, c, scale), want)
    _check(dca_attention_ref(q, k, v, qpos, c, scale, block=16), want)
    # the critical variants (3, 4) are for sparse estimation only: they must not change the result
    q2 = q.clone()
    q2[:, 3:] = torch.randn_like(q2[:, 3:])
    _check(dca_attention_ref(q2, k, v, qpos, c, scale), want)
    _check(dca_attention_ref(q[:, :3], k, v, qpos, c, scale), want)


def _per_stage_partials_from_plan(q, k, v, qpos, c, scale):
    """Run every plan_extend segment as its own attention call (kernel semantics), collect per-stage parts."""
    tq, _, h, _ = q.shape
    cfg = DCAConfig(c + 3, 3)  # chunk_len == c
    prefix = int(qpos[0])
    plan = plan_extend([RequestSpan(prefix, tq)], cfg)
    outs = [torch.zeros(tq, h, D, dtype=torch.float64) for _ in range(3)]
    lses = [torch.full((tq, h), -math.inf, dtype=torch.float64) for _ in range(3)]
    seen = torch.zeros(3, tq, dtype=torch.long)
    for seg in plan.intra + plan.cross:
        rows = slice(seg.q_start, seg.q_start + seg.q_len)
        ks = slice(seg.kv_start, seg.kv_start + seg.kv_len)
        i = torch.arange(seg.q_len)[:, None]
        kk = torch.arange(seg.kv_len)[None, :]
        if seg.stage == Stage.INTRA:
            mask = kk <= i + (seg.kv_len - seg.q_len)  # causal, bottom-right aligned
        else:
            mask = torch.ones(seg.q_len, seg.kv_len, dtype=torch.bool)
        o, l = _attend(q[rows, int(seg.stage)], k[ks], v[ks], mask, scale)
        outs[seg.stage][rows], lses[seg.stage][rows] = o, l
        seen[seg.stage, rows] += 1
    assert bool((seen <= 1).all()), "a (token, stage) pair appears in two segments"
    return outs, lses


@pytest.mark.parametrize("c", sorted(CHUNKS), ids=[f"{b}-boundaries" for _, b in sorted(CHUNKS.items())])
@pytest.mark.parametrize("h,hkv", GQA)
@pytest.mark.parametrize("tq", TQS)
def test_per_stage_merge_equals_one_softmax(tq, h, hkv, c):
    q, k, v, qpos = _inputs(tq, h, hkv, seed=c * 7 + tq * 3 + h)
    scale = D**-0.5
    ref_out, ref_lse = dca_attention_ref(q, k, v, qpos, c, scale)

    # (a) per-stage parts from explicit stage masks over all keys
    j = torch.arange(L)
    stage = _stage(qpos[:, None], j[None, :], c)
    causal = j[None, :] <= qpos[:, None]
    parts = [_attend(q[:, s], k, v, causal & (stage == s), scale) for s in range(3)]
    # (b) per-stage parts from the segment plan, as the kernels will run them
    plan_outs, plan_lses = _per_stage_partials_from_plan(q, k, v, qpos, c, scale)
    for s in range(3):
        torch.testing.assert_close(plan_outs[s], parts[s][0], atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(plan_lses[s], parts[s][1], atol=1e-12, rtol=1e-12)

    outs, lses = [p[0] for p in parts], [p[1] for p in parts]
    m_out, m_lse = merge_lse_ref(outs, lses)
    torch.testing.assert_close(m_out, ref_out, **TOL)
    torch.testing.assert_close(m_lse, ref_lse, **TOL)
    # FlashInfer-style base-2 LSEs: merged result identical, LSE returned in base 2
    b_out, b_lse = merge_lse_ref(outs, [x / LN2 for x in lses], base2=True)
    torch.testing.assert_close(b_out, ref_out, **TOL)
    torch.testing.assert_close(b_lse * LN2, ref_lse, **TOL)
    # feeding base-2 LSEs as natural logs gives a different (wrong) result whenever >1 stage is present
    present = torch.stack([torch.isfinite(x) for x in lses]).sum(0)
    multi = present > 1  # [Tq, H]: the last query (position L-1) always crosses >= 1 boundary
    assert bool(multi[-1].all())
    wrong, _ = merge_lse_ref(outs, [x / LN2 for x in lses], base2=False)
    assert not torch.allclose(wrong[multi], ref_out[multi], **TOL)


@pytest.mark.parametrize("c", [7, 13, 30])
def test_logit_scale_multiplies_logits(c):
    q, k, v, qpos = _inputs(33, 14, 2, seed=c)
    scale = D**-0.5
    a = 1.297  # the 1M-token YaRN multiplier
    got = dca_attention_ref(q, k, v, qpos, c, scale, logit_scale=a)
    via_q = dca_attention_ref(q * a, k, v, qpos, c, scale)
    via_sm = dca_attention_ref(q, k, v, qpos, c, scale * a)
    for other in (via_q, via_sm):
        torch.testing.assert_close(got[0], other[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got[1], other[1], atol=1e-5, rtol=1e-5)
    _check(got, _naive_dca(q, k, v, qpos, c, scale * a))
    plain = dca_attention_ref(q, k, v, qpos, c, scale)
    assert not torch.allclose(got[0], plain[0], atol=1e-4), "logit_scale had no effect"


@pytest.mark.parametrize("c", [None, 5, 16])
def test_lse_is_natural_log(c):
    # zero queries: every visible logit is 0, so lse = ln(p + 1) and out = mean of v[0..p]
    tq, h, hkv = 20, 4, 2
    _, k, v, qpos = _inputs(tq, h, hkv, seed=3)
    q = torch.zeros(tq, 3, h, D)
    out, lse = dca_attention_ref(q, k, v, qpos, c, D**-0.5)
    want_lse = torch.log(qpos.double() + 1)[:, None].expand(tq, h)
    torch.testing.assert_close(lse.double(), want_lse, atol=1e-6, rtol=1e-6)
    csum = torch.cumsum(v.double(), 0) / torch.arange(1, L + 1, dtype=torch.float64)[:, None, None]
    want_out = csum[qpos].repeat_interleave(h // hkv, dim=1)
    torch.testing.assert_close(out.double(), want_out, atol=1e-6, rtol=1e-6)


def test_rows_are_independent_of_order_and_blocking():
    q, k, v, qpos = _inputs(40, 14, 2, seed=11)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(5))
    base = dca_attention_ref(q, k, v, qpos, 13, D**-0.5)
    shuffled = dca_attention_ref(q[perm], k, v, qpos[perm], 13, D**-0.5, block=7)
    torch.testing.assert_close(shuffled[0], base[0][perm], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(shuffled[1], base[1][perm], atol=1e-6, rtol=1e-6)


def test_reference_argument_errors():
    q, k, v, qpos = _inputs(4, 6, 4, seed=0)
    with pytest.raises(ValueError, match="multiple of KV heads"):
        dca_attention_ref(q, k, v, qpos, None, 1.0)
    q, k, v, qpos = _inputs(4, 4, 2, seed=0, nvar=2)
    with pytest.raises(ValueError, match="3 variants"):
        dca_attention_ref(q, k, v, qpos, 10, 1.0)
    dca_attention_ref(q[:, :1], k, v, qpos, None, 1.0)  # one variant is enough without DCA


# ---------------------------------------------------------------------------------------------------------------
# RoPE semantics: the oracle + dca_positions give logits at the remapped DCA distance
# ---------------------------------------------------------------------------------------------------------------


def _rope(x, pos, base=10.0):
    """Neox-style RoPE (rotate halves) in float64. x [T, ..., D], pos [T]."""
    d2 = x.shape[-1] // 2
    inv = base ** (-torch.arange(d2, dtype=torch.float64) / d2)
    ang = pos.double()[:, None] * inv[None, :]
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (d2,)
    cos, sin = torch.cos(ang).view(shape), torch.sin(ang).view(shape)
    x1, x2 = x[..., :d2].double(), x[..., d2:].double()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


@pytest.mark.parametrize("chunk_size,local_size", [(12, 3), (9, 0), (16, 7)])
def test_rope_rotated_variants_give_dca_distances(chunk_size, local_size):
    cfg = DCAConfig(chunk_size, local_size)
    C, cs = cfg.chunk_len, chunk_size
    n, h, hkv = 4 * C + 3, 4, 2
    g = torch.Generator().manual_seed(chunk_size)
    q_raw = torch.randn(n, h, D, generator=g, dtype=torch.float64)
    k_raw = torch.randn(n, hkv, D, generator=g, dtype=torch.float64)
    v = torch.randn(n, hkv, D, generator=g, dtype=torch.float64)
    pos = dca_positions(torch.arange(n), cfg)
    names = ("q_intra", "q_succ", "q_inter", "q_succ_critical", "q_inter_critical")
    q = torch.stack([_rope(q_raw, pos[nm]) for nm in names], dim=1)  # [n, 5, H, D], SGLang's cat order
    k = _rope(k_raw, pos["k"])
    out, lse = dca_attention_ref(q, k, v, torch.arange(n), C, D**-0.5)

    # expected: logit(p, j) = <RoPE(q_raw[p], d), k_raw[j]> with d the DCA distance written out by hand
    p_idx = torch.arange(n)[:, None]
    j_idx = torch.arange(n)[None, :]
    st_ = _stage(p_idx, j_idx, C)
    dist = torch.where(
        st_ == 0,
        p_idx - j_idx,
        torch.where(st_ == 1, torch.clamp(p_idx % C + C, max=cs) - j_idx % C, min(2 * C - 1, cs) - j_idx % C),
    )
    causal = j_idx <= p_idx
    assert int(dist[causal].max()) <= cs and int(dist[causal].min()) >= 0
    logits = torch.empty(n, h, n, dtype=torch.float64)
    for jj in range(n):
        qr = _rope(q_raw, dist[:, jj])  # rotate each query by its distance to key jj
        logits[:, :, jj] = torch.einsum("thd,thd->th", qr, k_raw[jj].repeat_interleave(h // hkv, 0)[None].expand(n, h, D))
    logits = (logits * D**-0.5).masked_fill(~causal[:, None, :], -math.inf)
    want_lse = torch.logsumexp(logits, -1)
    want_out = torch.einsum("thj,jhd->thd", torch.softmax(logits, -1), v.repeat_interleave(h // hkv, 1))
    torch.testing.assert_close(lse.double(), want_lse, **TOL)
    torch.testing.assert_close(out.double(), want_out, **TOL)


# ---------------------------------------------------------------------------------------------------------------
# merge_lse_ref on its own
# ---------------------------------------------------------------------------------------------------------------


@given(seed=st.integers(0, 2**31 - 1), parts=st.integers(1, 4), base2=st.booleans())
def test_merge_random_key_partition_equals_full_softmax(seed, parts, base2):
    g = torch.Generator().manual_seed(seed)
    T, H, S = 5, 3, 17
    q = torch.randn(T, H, D, generator=g, dtype=torch.float64)
    k = torch.randn(S, H, D, generator=g, dtype=torch.float64)
    v = torch.randn(S, H, D, generator=g, dtype=torch.float64)
    owner = torch.randint(0, parts, (T, S), generator=g)  # which part each (row, key) belongs to; parts may be empty
    full = _attend(q, k, v, torch.ones(T, S, dtype=torch.bool), 0.7)
    outs, lses = [], []
    for i in range(parts):
        o, l = _attend(q, k, v, owner == i, 0.7)
        outs.append(o)
        lses.append(l / LN2 if base2 else l)
    perm = torch.randperm(parts, generator=g).tolist()  # order of parts must not matter
    out, lse = merge_lse_ref([outs[i] for i in perm], [lses[i] for i in perm], base2=base2)
    assert out.dtype == torch.float32 and lse.dtype == torch.float32
    torch.testing.assert_close(out.double(), full[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse.double() * (LN2 if base2 else 1.0), full[1], atol=1e-5, rtol=1e-5)
