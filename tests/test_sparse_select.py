"""Selection kernels (radix top-k, block pattern + loop bounds) against their torch references.

On CPU they run in Triton's interpreter (conftest sets TRITON_INTERPRET=1); on a GPU, compiled.
"""

from __future__ import annotations

import os

import pytest
import torch

from sgl_qwen1m.config import LOCAL_DIAGONALS, SINK_COLUMNS
from sgl_qwen1m.ops.sparse.plan import BLOCK, PAD, LayerBudget
from sgl_qwen1m.ops.sparse.reference import block_pattern, loop_bounds, select_vertical_slash

pytest.importorskip("triton")

GPU = torch.cuda.is_available()
if not GPU and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("needs a CUDA GPU or TRITON_INTERPRET=1 (set by conftest on CPU)", allow_module_level=True)
DEV = torch.device("cuda" if GPU else "cpu")


def _budget(vertical: list[int], slash: list[int]) -> LayerBudget:
    return LayerBudget(torch.tensor(vertical, device=DEV), torch.tensor(slash, device=DEV), max(vertical), max(slash))


def _scores(p: int, h: int, length: int, q_end: list[int], seed: int, levels: int = 0) -> torch.Tensor:
    """``[2, P, H, L]`` softmax-like scores (zero past each piece's ``q_end``); ``levels`` > 0 quantises them so
    that many entries tie."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(2, p, h, length, generator=g) ** 4 * 3.0
    if levels:
        x = torch.floor(x * levels / 3.0) / levels
    for i, e in enumerate(q_end):
        x[:, i, :, e:] = 0.0
    return x.to(DEV).contiguous()


# (pieces' q_end, L, vertical budgets, slash budgets): budgets over q_end, under the forced counts, one head at 1
SHAPES = {
    "one-piece": ([5000], 5000, [130, 1000, 57, 4096], [800, 3000, 100, 7]),
    "pieces-of-unequal-length": ([4100, 600, 8300], 8300, [64, 700, 12, 1], [2000, 250, 90, 5000]),
    "budget-over-keys": ([200, 90], 200, [130, 300, 1, 50], [300, 150, 40, 3]),
}


@pytest.mark.parametrize("name", list(SHAPES))
def test_radix_select_equals_torch_topk(name):
    from sgl_qwen1m.ops.sparse.select import select_vs

    q_end, length, vb, sb = SHAPES[name]
    p, h = len(q_end), len(vb)
    scores = _scores(p, h, length, q_end, seed=len(name))
    # a strided column, as SparseState keeps it
    qe = torch.tensor([[e, 3, 5, 7] for e in q_end], device=DEV)[:, 0]
    dense = torch.zeros(p, dtype=torch.bool, device=DEV)
    bud = _budget(vb, sb)
    got_v, got_s = select_vs(scores, qe, dense, bud, sink=SINK_COLUMNS, local=LOCAL_DIAGONALS)
    want_v, want_s = select_vertical_slash(scores[0].clone(), scores[1].clone(), qe, bud)
    assert got_v.shape == want_v.shape and got_s.shape == want_s.shape
    assert torch.equal(got_v, want_v)
    assert torch.equal(got_s, want_s)


# (q_end per piece, vertical budgets, slash budgets); the long row is cut into several slices (programs)
TIES = {
    "short-rows": ([3000, 1500], [200, 17, 600], [300, 120, 2999]),
    "rows-over-several-slices": ([20000, 9000], [2000, 4100], [9000, 300]),
}


@pytest.mark.parametrize("name", list(TIES))
def test_radix_select_ties_take_the_earliest_and_dense_pieces_take_no_columns(name):
    from sgl_qwen1m.ops.sparse.select import select_vs

    q_end, vb, sb = TIES[name]
    length = max(q_end)
    scores = _scores(2, len(vb), length, q_end, seed=3, levels=6)  # six score values: ties everywhere
    qe = torch.tensor(q_end, device=DEV)
    dense = torch.tensor([False, True], device=DEV)
    v_idx, s_idx = select_vs(scores, qe, dense, _budget(vb, sb), sink=SINK_COLUMNS, local=LOCAL_DIAGONALS)
    assert bool((v_idx[1] == PAD).all()), "a dense piece gets no extra columns"
    for kind, idx, buds, forced in ((0, v_idx, vb, SINK_COLUMNS), (1, s_idx, sb, LOCAL_DIAGONALS)):
        for i, e in enumerate(q_end):
            if kind == 0 and i == 1:
                continue
            for hh, b in enumerate(buds):
                row = idx[i, hh].cpu()
                chosen = row[row != PAD].long()
                assert len(chosen) == min(b, e)
                assert bool((row[len(chosen):] == PAD).all()) and bool((chosen.diff() > 0).all())
                x = scores[kind, i, hh, :e].cpu().clone()
                x[:forced] = float("inf")
                mask = torch.zeros(e, dtype=torch.bool)
                mask[chosen] = True
                if mask.all():
                    continue
                thr = x[mask].min()
                assert bool((x[~mask] <= thr).all()), "every chosen score >= every left-out score"
                at_thr = torch.nonzero(x == thr).flatten()
                taken = mask[at_thr]
                assert bool(taken[: int(taken.sum())].all()), "ties at the threshold take the earliest indices"


@pytest.mark.parametrize("chunk_len", [None, 256, 1024])
def test_pattern_bounds_equals_block_pattern_and_loop_bounds(chunk_len):
    from sgl_qwen1m.ops.sparse.select import pattern_bounds

    g = torch.Generator().manual_seed(7 if chunk_len is None else chunk_len)
    p, h = 3, 5
    q_pos0 = [1200, 0, 2300]
    q_len = [900, 700, 450]
    q_end = [a + b for a, b in zip(q_pos0, q_len)]
    length = max(q_end)
    nb = -(-length // BLOCK)
    first_block = [a // BLOCK for a in q_pos0]
    max_blocks = max((e - 1) // BLOCK - f + 1 for e, f in zip(q_end, first_block))
    cl = chunk_len if chunk_len is not None else None
    c0 = [(a // cl) * cl if cl else 0 for a in q_pos0]

    def sorted_pad(k: int, hi: list[int]) -> torch.Tensor:
        out = torch.full((p, h, k), PAD, dtype=torch.int32)
        for i in range(p):
            for hh in range(h):
                n = int(torch.randint(1, min(k, hi[i]) + 1, (1,), generator=g))
                out[i, hh, :n] = torch.randperm(hi[i], generator=g)[:n].sort().values.to(torch.int32)
        return out.to(DEV)

    s_idx = sorted_pad(400, q_end)
    v_idx = sorted_pad(150, q_end)
    dense = torch.tensor([False, False, True], device=DEV)
    v_idx[2] = PAD  # dense pieces carry no columns (select_vs guarantees it)
    meta = torch.tensor([[e, f, c, int(d)] for e, f, c, d in zip(q_end, first_block, c0, dense.tolist())],
                        dtype=torch.int64, device=DEV)
    cov, diag, dcnt, vcnt = pattern_bounds(s_idx, v_idx, meta, num_key_blocks=nb, max_blocks=max_blocks, chunk_len=cl)
    want_cov, want_diag = block_pattern(s_idx, dense, nb)
    fb = torch.tensor(first_block, device=DEV)
    c0t = torch.tensor(c0, device=DEV)
    want_d, want_v = loop_bounds(want_diag, v_idx, fb, c0t, cl, max_blocks)
    assert torch.equal(cov, want_cov)
    assert torch.equal(diag, want_diag)
    assert torch.equal(dcnt, want_d)
    assert torch.equal(vcnt, want_v)


def test_intra_columns_stop_where_the_leading_band_covers_them():
    """Block diagonals 0..3 cover every column from 64 * (rb - 3) on, so the intra column range ends there (the
    kernel would load those columns only to mask them); a column under a non-leading diagonal stays in the range."""
    diag = torch.full((1, 1, 20), PAD, dtype=torch.int32)
    diag[0, 0, :5] = torch.tensor([0, 1, 2, 3, 10], dtype=torch.int32)
    cols = [5, 70, 400, 640, 1000, 1100]  # 400: key block 6 = rb 16 - diagonal 10 (covered, not leading)
    v_idx = torch.full((1, 1, 8), PAD, dtype=torch.int32)
    v_idx[0, 0, : len(cols)] = torch.tensor(cols, dtype=torch.int32)
    first_block = torch.tensor([16])
    dcnt, vcnt = loop_bounds(diag, v_idx, first_block, torch.tensor([0]), None, 4)
    # row block 16: cut at 64 * 13 = 832 -> columns 5, 70, 400, 640; row block 19: cut at 64 * 16 = 1024 -> + 1000
    assert vcnt[0, 0, :, 2].tolist() == [4, 4, 4, 5]
    assert dcnt[0, 0, :, 0].tolist() == [5, 5, 5, 5]
    # the cut never goes below the start of the row's DCA chunk (1024 here): earlier columns are the succ range's
    _, vcnt = loop_bounds(diag, v_idx, first_block, torch.tensor([1024]), 1024, 4)
    assert vcnt[0, 0, :, 1].tolist() == [5, 5, 5, 5]
    assert vcnt[0, 0, :, 2].tolist() == [5, 5, 5, 5]
