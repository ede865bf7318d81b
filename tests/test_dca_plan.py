"""DCA positions, stage assignment, extend/decode plans and kv-index gathering, against brute force."""

from __future__ import annotations

import itertools

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sgl_qwen1m.ops.dca.plan import (
    NUM_Q_VARIANTS,
    DCAPlan,
    RequestSpan,
    Segment,
    Stage,
    dca_positions,
    decode_stage_valid,
    plan_decode,
    plan_extend,
    stage_of,
)
from sgl_qwen1m.ops.dca.indices import gather_kv_indices, segment_tensors
from sgl_qwen1m.config import DCAConfig

CPU = torch.device("cpu")
QWEN_1M = DCAConfig(262144, 8192, 262144)
VARIANT_OF_STAGE = ("q_intra", "q_succ", "q_inter")

# ---------------------------------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def dca_cfgs(draw, min_chunk: int = 4, max_chunk: int = 40) -> DCAConfig:
    chunk = draw(st.integers(min_chunk, max_chunk))
    local = draw(st.integers(0, chunk - 1))
    return DCAConfig(chunk, local)


def _lengths(c: int):
    """A sequence length in [0, 6c): biased towards chunk boundaries (k*c - 1, k*c, k*c + 1) for k = 0..5."""
    near = st.builds(lambda k, d: max(0, k * c + d), st.integers(0, 5), st.integers(-1, 1))
    return st.one_of(near, st.integers(0, 6 * c - 1))


@st.composite
def spans_for(draw, c: int, max_reqs: int = 4) -> list[RequestSpan]:
    n = draw(st.integers(1, max_reqs))
    spans = []
    for _ in range(n):
        seq = draw(_lengths(c))
        kind = draw(st.sampled_from(["prefill", "extend", "decode", "empty", "any"]))
        if kind == "prefill":
            ext = seq
        elif kind == "decode":
            ext = min(1, seq)
        elif kind == "empty":
            ext = 0
        else:
            ext = draw(st.integers(0, seq))
        spans.append(RequestSpan(seq - ext, ext))
    return spans


@st.composite
def cfg_and_spans(draw, allow_none: bool = True):
    cfg = draw(st.one_of(st.none(), dca_cfgs()) if allow_none else dca_cfgs())
    c = cfg.chunk_len if cfg is not None else draw(st.integers(1, 40))
    return cfg, draw(spans_for(c))


# ---------------------------------------------------------------------------------------------------------------
# brute force helpers
# ---------------------------------------------------------------------------------------------------------------

_M = 1 << 12  # > any position used here


def _encode(r, p, j, stage):
    return ((r * _M + p) * _M + j) * 4 + stage


def _brute_stage(p: torch.Tensor, j: torch.Tensor, c) -> torch.Tensor:
    """Stage from the definition: same chunk -> 0, previous chunk -> 1, any earlier chunk -> 2."""
    if c is None:
        return torch.zeros(torch.broadcast_shapes(p.shape, j.shape), dtype=torch.long)
    cp, cj = p // c, j // c
    return torch.where(cp == cj, 0, torch.where(cp == cj + 1, 1, 2))


def _brute_triples(spans, c) -> torch.Tensor:
    codes = []
    for r, sp in enumerate(spans):
        p = torch.arange(sp.prefix_len, sp.seq_len)[:, None]
        j = torch.arange(sp.seq_len)[None, :]
        mask = j <= p
        stage = _brute_stage(p, j, c)
        P, J = torch.broadcast_tensors(p, j)
        codes.append(_encode(r, P[mask], J[mask], stage[mask]))
    return torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long)


def _row_maps(spans):
    """For every token-major row of the batch: (request, absolute position)."""
    req = [r for r, sp in enumerate(spans) for _ in range(sp.extend_len)]
    pos = [p for sp in spans for p in range(sp.prefix_len, sp.seq_len)]
    return torch.tensor(req, dtype=torch.long), torch.tensor(pos, dtype=torch.long)


def _expand_segments(plan: DCAPlan, spans) -> torch.Tensor:
    """(req, q position, key position, stage) of every pair a kernel would compute for this plan.

    Intra segments are causal with bottom-right alignment (query i of q_len sees keys kk <= i + kv_len - q_len),
    cross segments are non-causal: the semantics of FlashInfer/FA varlen calls.
    """
    row_req, row_pos = _row_maps(spans)
    codes = []
    for seg in plan.intra + plan.cross:
        assert seg.q_len >= 1 and seg.kv_len >= 1, seg
        assert 0 <= seg.q_start and seg.q_start + seg.q_len <= plan.num_tokens, seg
        rows = torch.arange(seg.q_start, seg.q_start + seg.q_len)
        assert bool((row_req[rows] == seg.req).all()), f"segment rows leave request {seg.req}: {seg}"
        p = row_pos[rows][:, None]
        assert seg.kv_start >= 0 and seg.kv_start + seg.kv_len <= spans[seg.req].seq_len, seg
        j = torch.arange(seg.kv_start, seg.kv_start + seg.kv_len)[None, :]
        i = torch.arange(seg.q_len)[:, None]
        kk = torch.arange(seg.kv_len)[None, :]
        if seg.stage == Stage.INTRA:
            assert seg.kv_len >= seg.q_len, f"bottom-right causal alignment needs kv_len >= q_len: {seg}"
            mask = kk <= i + (seg.kv_len - seg.q_len)
        else:
            mask = torch.ones(seg.q_len, seg.kv_len, dtype=torch.bool)
        P, J = torch.broadcast_tensors(p, j)
        codes.append(_encode(seg.req, P[mask], J[mask], int(seg.stage)))
    return torch.cat(codes) if codes else torch.zeros(0, dtype=torch.long)


# ---------------------------------------------------------------------------------------------------------------
# positions
# ---------------------------------------------------------------------------------------------------------------


def _sglang_positions(p: int, chunk_size: int, local_size: int) -> dict[str, int]:
    """SGLang DualChunkRotaryEmbedding, written out for one position with Python ints."""
    cl = chunk_size - local_size
    return {
        "k": p % cl,
        "q_intra": p % cl,
        "q_succ": min(p % cl + cl, chunk_size),
        "q_inter": min(2 * cl - 1, chunk_size),
        "q_succ_critical": p % cl + cl,
        "q_inter_critical": p % cl + chunk_size,
    }


@given(cfg=dca_cfgs(1, 64), positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=32))
def test_positions_match_sglang_formulas(cfg, positions):
    got = dca_positions(torch.tensor(positions, dtype=torch.int32), cfg)
    assert set(got) == set(_sglang_positions(0, cfg.chunk_size, cfg.local_size))
    for name, t in got.items():
        assert t.dtype == torch.int64 and t.shape == (len(positions),)
        want = [_sglang_positions(p, cfg.chunk_size, cfg.local_size)[name] for p in positions]
        assert t.tolist() == want, name


def test_positions_qwen_1m_landmarks():
    C, cs, ls = 253952, 262144, 8192
    ps = torch.tensor([0, C - 1, C, C + ls, C + ls + 1, 2 * C - 1, 2 * C, 1_009_999])
    pos = dca_positions(ps, QWEN_1M)
    assert pos["k"].tolist() == [0, C - 1, 0, ls, ls + 1, C - 1, 0, 1_009_999 - 3 * C]
    assert pos["q_succ"].tolist() == [C, cs, C, cs, cs, cs, C, cs]
    assert pos["q_inter"].tolist() == [cs] * 8  # min(2C - 1, cs) = cs
    # unclamped critical variants reach ~516K: (C - 1) + cs
    assert int(pos["q_inter_critical"].max()) == C - 1 + cs == 516095
    assert int(pos["q_succ_critical"][1]) == 2 * C - 1
    # attention-time positions never exceed the trained range
    for name in ("k", "q_intra", "q_succ", "q_inter"):
        assert int(pos[name].max()) <= cs


def test_positions_qwen_1m_distance_extremes():
    C, cs, ls = 253952, 262144, 8192
    pos = dca_positions(torch.tensor([0, C + ls, C + ls + 1]), QWEN_1M)
    # query at C+ls vs key 0: successive, exact distance ls + C = cs
    assert int(pos["q_succ"][1] - pos["k"][0]) == cs == (C + ls) - 0
    # one token later the distance is clamped to cs (true distance cs + 1)
    assert int(pos["q_succ"][2] - pos["k"][0]) == cs


@given(p=st.integers(0, 300), j=st.integers(0, 300), c=st.integers(1, 50))
def test_stage_of_scalar_brute_force(p, j, c):
    if j > p:
        p, j = j, p
    cp, cj = p // c, j // c
    want = 0 if cp == cj else 1 if cp == cj + 1 else 2
    assert int(stage_of(torch.tensor(p), torch.tensor(j), c)) == want


def _seen_distances(L: int, cfg: DCAConfig):
    p = torch.arange(L)[:, None]
    j = torch.arange(L)[None, :]
    pos = dca_positions(torch.arange(L), cfg)
    stage = stage_of(p, j, cfg.chunk_len)
    qvar = torch.stack([pos[v] for v in VARIANT_OF_STAGE], dim=1)  # [L, 3]
    qpos = torch.gather(qvar, 1, stage.clamp(min=0))  # [L, L]: position of p's variant chosen for (p, j)
    seen = qpos - pos["k"][None, :]
    P, J = torch.broadcast_tensors(p, j)
    return P, J, stage, seen, j <= p


@given(cfg=dca_cfgs(1, 40), data=st.data())
def test_relative_distance_never_exceeds_trained_range(cfg, data):
    C, cs, ls = cfg.chunk_len, cfg.chunk_size, cfg.local_size
    L = data.draw(st.integers(1, 6 * C + 2))
    P, J, stage, seen, causal = _seen_distances(L, cfg)
    P, J, stage, seen = P[causal], J[causal], stage[causal], seen[causal]
    true = P - J
    assert torch.equal(stage, _brute_stage(P, J, C))
    assert bool((seen >= 0).all()) and bool((seen <= cs).all())
    assert bool((seen <= true).all()), "DCA may only shrink distances"
    # intra: exact and < C; cross stages never see distance 0 (no key looks like the query's own position)
    assert torch.equal(seen[stage == 0], true[stage == 0])
    assert bool((seen[stage == 0] < C).all())
    assert bool((seen[stage > 0] >= 1).all())
    # exact iff intra, or successive with p % C <= local_size (derived from q_succ = min(p%C + C, cs));
    # inter is never exact: q_inter = min(2C-1, cs) < 2C <= p - chunk_start(j).
    exact_rule = (stage == 0) | ((stage == 1) & (P % C <= ls))
    assert torch.equal(seen == true, exact_rule)
    # clamped successive pairs see cs - j % C; inter pairs see min(2C - 1, cs) - j % C
    succ_clamped = (stage == 1) & (P % C > ls)
    assert torch.equal(seen[succ_clamped], cs - J[succ_clamped] % C)
    assert torch.equal(seen[stage == 2], min(2 * C - 1, cs) - J[stage == 2] % C)


@given(cfg=dca_cfgs(1, 40), data=st.data())
def test_short_sequences_are_plain_causal(cfg, data):
    L = data.draw(st.integers(1, cfg.chunk_len))
    P, J, stage, seen, causal = _seen_distances(L, cfg)
    assert bool((stage[causal] == 0).all())
    assert torch.equal(seen[causal], (P - J)[causal])
    plan = plan_extend([RequestSpan(0, L), RequestSpan(L - 1, 1)], cfg)
    assert plan.is_plain and len(plan.intra) == 2


def test_max_distance_is_attained_exactly_at_chunk_size():
    cfg = DCAConfig(12, 3)  # C = 9
    _, _, _, seen, causal = _seen_distances(40, cfg)
    assert int(seen[causal].max()) == 12


# ---------------------------------------------------------------------------------------------------------------
# plan_extend
# ---------------------------------------------------------------------------------------------------------------


def test_plan_extend_hand_example():
    cfg = DCAConfig(8, 3)  # C = 5
    plan = plan_extend([RequestSpan(3, 20), RequestSpan(0, 0), RequestSpan(12, 1)], cfg)
    I, S, X = Stage.INTRA, Stage.SUCC, Stage.INTER
    assert plan.num_tokens == 21
    assert plan.intra == (
        Segment(0, I, 0, 2, 0, 5),  # positions 3,4 in chunk 0
        Segment(0, I, 2, 5, 5, 5),  # 5..9
        Segment(0, I, 7, 5, 10, 5),  # 10..14
        Segment(0, I, 12, 5, 15, 5),  # 15..19
        Segment(0, I, 17, 3, 20, 3),  # 20..22
        Segment(2, I, 20, 1, 10, 3),  # decode token at position 12
    )
    assert plan.cross == (
        Segment(0, S, 2, 5, 0, 5),
        Segment(0, S, 7, 5, 5, 5),
        Segment(0, S, 12, 5, 10, 5),
        Segment(0, S, 17, 3, 15, 5),
        Segment(2, S, 20, 1, 5, 5),
        Segment(0, X, 7, 5, 0, 5),
        Segment(0, X, 12, 5, 0, 10),
        Segment(0, X, 17, 3, 0, 15),
        Segment(2, X, 20, 1, 0, 5),
    )
    assert plan.num_succ == 5 and not plan.is_plain


@given(cs=cfg_and_spans())
def test_plan_extend_equals_brute_force(cs):
    cfg, spans = cs
    c = cfg.chunk_len if cfg is not None else None
    plan = plan_extend(spans, cfg)
    got = _expand_segments(plan, spans)
    want = _brute_triples(spans, c)
    assert got.numel() == torch.unique(got).numel(), "a (query, key) pair is computed twice"
    assert torch.equal(torch.sort(got).values, torch.sort(want).values)


def _causal_flops(spans) -> int:
    return sum(p + 1 for sp in spans for p in range(sp.prefix_len, sp.seq_len))


@given(cs=cfg_and_spans())
def test_plan_extend_structure(cs):
    cfg, spans = cs
    c = cfg.chunk_len if cfg is not None else None
    plan = plan_extend(spans, cfg)
    row_req, row_pos = _row_maps(spans)
    T = sum(sp.extend_len for sp in spans)
    assert plan.num_tokens == T

    # intra: token order, contiguous, cover every row exactly once
    row = 0
    for seg in plan.intra:
        assert seg.stage == Stage.INTRA and seg.q_start == row
        row += seg.q_len
        p = row_pos[seg.q_start : seg.q_start + seg.q_len]
        if c is not None:
            chunk = int(p[0]) // c
            assert bool((p // c == chunk).all()), "segment straddles a DCA chunk boundary"
            assert seg.kv_start == chunk * c and seg.kv_start + seg.kv_len == int(p[-1]) + 1
        else:
            assert seg.kv_start == 0 and seg.kv_len == spans[seg.req].seq_len
    assert row == T

    # one intra segment per (request, DCA chunk touched by new tokens): no needless splits
    chunks = {(int(r), int(p) // c if c else 0) for r, p in zip(row_req, row_pos)}
    assert len(plan.intra) == len(chunks)

    # cross: successive first, then inter; num_succ right; rows match an intra segment's rows
    stages = [s.stage for s in plan.cross]
    assert stages == [Stage.SUCC] * plan.num_succ + [Stage.INTER] * (len(stages) - plan.num_succ)
    intra_rows = {(s.req, s.q_start, s.q_len) for s in plan.intra}
    for seg in plan.cross:
        assert (seg.req, seg.q_start, seg.q_len) in intra_rows
        chunk = int(row_pos[seg.q_start]) // c
        if seg.stage == Stage.SUCC:
            assert (seg.kv_start, seg.kv_len) == ((chunk - 1) * c, c)
        else:
            assert (seg.kv_start, seg.kv_len) == (0, (chunk - 1) * c)

    assert plan.is_plain == (c is None or all(int(p) < c for p in row_pos))
    if c is None:
        assert not plan.cross and plan.num_succ == 0
        assert len(plan.intra) == sum(1 for sp in spans if sp.extend_len > 0)

    # FLOPs: exactly those of causal attention
    flops = sum(s.q_len * s.kv_len - s.q_len * (s.q_len - 1) // 2 for s in plan.intra)
    flops += sum(s.q_len * s.kv_len for s in plan.cross)
    assert flops == _causal_flops(spans)


@given(spans=st.lists(st.builds(RequestSpan, st.integers(0, 300), st.integers(0, 300)), min_size=1, max_size=5))
def test_plan_extend_without_config_is_one_causal_segment_per_request(spans):
    plan = plan_extend(spans, None)
    want, row = [], 0
    for r, sp in enumerate(spans):
        if sp.extend_len:
            want.append(Segment(r, Stage.INTRA, row, sp.extend_len, 0, sp.seq_len))
        row += sp.extend_len
    assert plan == DCAPlan(num_tokens=row, intra=tuple(want), cross=(), num_succ=0)
    assert plan.is_plain


def test_plan_extend_empty_batch_and_zero_extends():
    cfg = DCAConfig(8, 3)
    assert plan_extend([], cfg) == DCAPlan(0, (), (), 0)
    assert plan_extend([RequestSpan(17, 0), RequestSpan(0, 0)], cfg) == DCAPlan(0, (), (), 0)


@pytest.mark.parametrize("span", [RequestSpan(-1, 3), RequestSpan(3, -1)])
def test_plan_extend_rejects_negative_lengths(span):
    with pytest.raises(ValueError, match="request 1"):
        plan_extend([RequestSpan(0, 1), span], DCAConfig(8, 3))


def test_chunked_prefill_pieces_union_equals_whole_prefill():
    """Splitting one prompt into chunked-prefill pieces yields exactly the pairs of the whole prefill."""
    cfg = DCAConfig(11, 4)  # C = 7
    L = 50
    whole = _expand_segments(plan_extend([RequestSpan(0, L)], cfg), [RequestSpan(0, L)])
    for cuts in ([13], [7, 14, 21], [1, 2, 30, 49], list(range(1, L))):
        bounds = [0] + cuts + [L]
        parts = []
        for a, b in zip(bounds, bounds[1:]):
            sp = [RequestSpan(a, b - a)]
            parts.append(_expand_segments(plan_extend(sp, cfg), sp))
        assert torch.equal(torch.sort(torch.cat(parts)).values, torch.sort(whole).values)


# ---------------------------------------------------------------------------------------------------------------
# plan_decode
# ---------------------------------------------------------------------------------------------------------------


@st.composite
def decode_batches(draw):
    cfg = draw(st.one_of(st.none(), dca_cfgs()))
    c = cfg.chunk_len if cfg is not None else 10
    seq_lens = draw(st.lists(st.one_of(st.integers(1, 6 * c), st.builds(lambda k, d: max(1, k * c + d), st.integers(0, 5), st.integers(-1, 1))), min_size=1, max_size=6))
    return cfg, seq_lens


@given(batch=decode_batches())
def test_plan_decode_fixed_shape_and_agrees_with_extend(batch):
    cfg, seq_lens = batch
    B = len(seq_lens)
    segs = plan_decode(seq_lens, cfg)
    assert len(segs) == 3 * B
    valid = decode_stage_valid(torch.tensor(seq_lens), cfg)
    assert valid.dtype == torch.bool and valid.shape == (B, 3)

    # the same batch as a 1-token extend per request: same rows (q_start = i), same real segments
    ext = plan_extend([RequestSpan(n - 1, 1) for n in seq_lens], cfg)
    real = {(int(s.stage), s.req): s for s in ext.intra + ext.cross}
    for s_idx in range(3):
        for i in range(B):
            seg = segs[3 * i + s_idx]  # request-major
            assert (int(seg.stage), seg.req, seg.q_start, seg.q_len) == (s_idx, i, i, 1)
            assert bool(valid[i, s_idx]) == ((s_idx, i) in real)
            if valid[i, s_idx]:
                assert seg == real[(s_idx, i)]
            else:
                assert (seg.kv_start, seg.kv_len) == (0, 1), "placeholder must read one valid key"
    assert bool(valid[:, 0].all()), "every decode token has intra keys (at least itself)"
    if cfg is None:
        assert not bool(valid[:, 1:].any())
    else:
        chunk = [(n - 1) // cfg.chunk_len for n in seq_lens]
        assert valid.tolist() == [[ch >= s for s in range(3)] for ch in chunk]


def test_plan_decode_hand_example():
    cfg = DCAConfig(8, 3)  # C = 5
    segs = plan_decode([1, 5, 6, 11, 16], cfg)
    I, S, X = Stage.INTRA, Stage.SUCC, Stage.INTER
    assert segs == (
        Segment(0, I, 0, 1, 0, 1), Segment(0, S, 0, 1, 0, 1), Segment(0, X, 0, 1, 0, 1),
        Segment(1, I, 1, 1, 0, 5), Segment(1, S, 1, 1, 0, 1), Segment(1, X, 1, 1, 0, 1),
        Segment(2, I, 2, 1, 5, 1), Segment(2, S, 2, 1, 0, 5), Segment(2, X, 2, 1, 0, 1),
        Segment(3, I, 3, 1, 10, 1), Segment(3, S, 3, 1, 5, 5), Segment(3, X, 3, 1, 0, 5),
        Segment(4, I, 4, 1, 15, 1), Segment(4, S, 4, 1, 10, 5), Segment(4, X, 4, 1, 0, 10),
    )  # fmt: skip
    assert decode_stage_valid(torch.tensor([1, 5, 6, 11, 16]), cfg).tolist() == [
        [True, False, False],
        [True, False, False],
        [True, True, False],
        [True, True, True],
        [True, True, True],
    ]


def test_plan_decode_rejects_empty_sequence():
    with pytest.raises(ValueError, match="request 1"):
        plan_decode([3, 0], DCAConfig(8, 3))


# ---------------------------------------------------------------------------------------------------------------
# indices
# ---------------------------------------------------------------------------------------------------------------


def _random_table(spans, gen, dtype=torch.int32):
    """A req_to_token pool with more rows than requests, unique slots, and a random row per request."""
    R, max_ctx = len(spans) + 3, max([sp.seq_len for sp in spans] + [1]) + 2
    table = torch.randperm(R * max_ctx, generator=gen).view(R, max_ctx).to(dtype)
    pool_idx = torch.randperm(R, generator=gen)[: len(spans)]
    return table, pool_idx


def _expected_kv(segs, table, pool_idx):
    parts = [table[pool_idx[s.req], s.kv_start : s.kv_start + s.kv_len] for s in segs]
    return torch.cat(parts).to(torch.int32) if parts else torch.zeros(0, dtype=torch.int32)


@given(cs=cfg_and_spans(), seed=st.integers(0, 2**31 - 1), table_dtype=st.sampled_from([torch.int32, torch.int64]))
def test_segment_tensors_and_gather(cs, seed, table_dtype):
    cfg, spans = cs
    gen = torch.Generator().manual_seed(seed)
    table, pool_idx = _random_table(spans, gen, table_dtype)
    plan = plan_extend(spans, cfg)
    row_req, row_pos = _row_maps(spans)
    for segs in (plan.intra, plan.cross, plan.intra + plan.cross):
        st_ = segment_tensors(segs, CPU, with_q_rows=True)
        q_lens = [s.q_len for s in segs]
        kv_lens = [s.kv_len for s in segs]
        assert st_.qo_indptr.dtype == st_.kv_indptr.dtype == torch.int32
        assert st_.qo_indptr.tolist() == [0] + list(itertools.accumulate(q_lens))
        assert st_.kv_indptr.tolist() == [0] + list(itertools.accumulate(kv_lens))
        assert (st_.num_q, st_.num_kv) == (sum(q_lens), sum(kv_lens))
        assert st_.kv_lens.tolist() == kv_lens
        assert st_.seg_req.tolist() == [s.req for s in segs]
        assert st_.seg_kv_start.tolist() == [s.kv_start for s in segs]

        # q rows: token * 5 + stage, row by row
        want_rows = [(s.q_start + i) * NUM_Q_VARIANTS + int(s.stage) for s in segs for i in range(s.q_len)]
        assert st_.q_rows.dtype == torch.int64 and st_.q_rows.tolist() == want_rows

        kv = gather_kv_indices(st_, table, pool_idx)
        assert kv.dtype == torch.int32 and kv.shape == (st_.num_kv,)
        assert torch.equal(kv, _expected_kv(segs, table, pool_idx))

    # the intra call reads the batch's q rows in order with variant 0
    st_intra = segment_tensors(plan.intra, CPU, with_q_rows=True)
    assert torch.equal(st_intra.q_rows, torch.arange(plan.num_tokens) * NUM_Q_VARIANTS)
    # every cross row reads variant == its stage, of a token whose position is in a later chunk than its keys
    st_cross = segment_tensors(plan.cross, CPU, with_q_rows=True)
    stages_per_row = torch.tensor([int(s.stage) for s in plan.cross for _ in range(s.q_len)], dtype=torch.long)
    assert torch.equal(st_cross.q_rows % NUM_Q_VARIANTS, stages_per_row)


def test_segment_tensors_without_q_rows():
    plan = plan_extend([RequestSpan(0, 30)], DCAConfig(8, 3))
    st_ = segment_tensors(plan.cross, CPU, with_q_rows=False)
    assert st_.q_rows is None and st_.num_kv == sum(s.kv_len for s in plan.cross)


def test_gather_into_out_buffer_fills_prefix_and_returns_view(gen):
    spans = [RequestSpan(3, 20), RequestSpan(0, 7), RequestSpan(12, 1)]
    plan = plan_extend(spans, DCAConfig(8, 3))
    table, pool_idx = _random_table(spans, gen)
    segs = plan.intra + plan.cross
    st_ = segment_tensors(segs, CPU, with_q_rows=False)
    out = torch.full((st_.num_kv + 9,), -7, dtype=torch.int32)
    res = gather_kv_indices(st_, table, pool_idx, out=out)
    assert torch.equal(res, _expected_kv(segs, table, pool_idx))
    assert res.shape == (st_.num_kv,) and res.dtype == torch.int32
    assert res.data_ptr() == out.data_ptr(), "must be a view of the caller's buffer"
    assert torch.equal(out[: st_.num_kv], res)
    assert bool((out[st_.num_kv :] == -7).all()), "tail of the buffer must be untouched"
    res[0] = 123456
    assert int(out[0]) == 123456


def test_gather_decode_plan_with_placeholders(gen):
    cfg = DCAConfig(8, 3)
    seq_lens = [1, 5, 6, 11, 16]
    spans = [RequestSpan(n - 1, 1) for n in seq_lens]
    table, pool_idx = _random_table(spans, gen)
    segs = plan_decode(seq_lens, cfg)
    st_ = segment_tensors(segs, CPU, with_q_rows=True)
    out = torch.zeros(64, dtype=torch.int32)
    res = gather_kv_indices(st_, table, pool_idx, out=out)
    assert torch.equal(res, _expected_kv(segs, table, pool_idx))
    B = len(seq_lens)
    assert st_.q_rows.tolist() == [i * NUM_Q_VARIANTS + s for i in range(B) for s in range(3)]


def test_gather_empty_segment_list():
    st_ = segment_tensors([], CPU, with_q_rows=True)
    assert st_.qo_indptr.tolist() == [0] and st_.kv_indptr.tolist() == [0] and st_.num_kv == 0
    assert st_.q_rows.numel() == 0
    res = gather_kv_indices(st_, torch.zeros(2, 4, dtype=torch.int32), torch.tensor([1]))
    assert res.shape == (0,) and res.dtype == torch.int32
