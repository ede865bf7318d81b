"""Pattern reuse across prefill chunks (issue 16, item 4): ``reestimate_every`` in the torch selection path.

* ``reestimate_every=1`` is today's path, bit for bit (masks, attention, recall);
* with ``k > 1`` a reused piece's mask is the estimating piece's selection (same absolute columns, same diagonal
  offsets) laid over the longer key range: checked against planted scores whose selection is known, and end to end
  on planted queries/keys;
* a new DCA chunk always re-estimates;
* the CPU experiment's pieces, prompts, fast attention and results file.
"""

from __future__ import annotations

import json

import pytest
import torch

from sgl_qwen1m.config import LOCAL_DIAGONALS, SINK_COLUMNS, runs_sparse
from sgl_qwen1m.model.capture import LayerInputs
from sgl_qwen1m.model.spec import has_weights
from sgl_qwen1m.ops.dca.reference import dca_attention_ref
from sgl_qwen1m.ops.sparse import prompt_ref
from sgl_qwen1m.ops.sparse.plan import BLOCK
from sgl_qwen1m.ops.sparse.prompt_ref import (attention_variants, piece_mask, piece_scores, prompt_pieces,
                                              sparse_attention_prompt_ref)
from sgl_qwen1m.ops.sparse.reference import block_pattern, pattern_mask_ref, select_vertical_slash
from sgl_qwen1m.ops.sparse.reuse import estimation_anchors, estimation_work, piece_pattern
from sgl_qwen1m.refine.recall import RowSampling, evaluate, make_budget, prepare
from sgl_qwen1m.refine.reuse_prefill import fast_sparse_prompt, serving_pieces

CPU = torch.device("cpu")


def _inputs(length: int, h: int = 2, hkv: int = 1, d: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q5 = torch.randn(length, 5, h, d, generator=g) * 1.5
    return q5, torch.randn(length, hkv, d, generator=g), torch.randn(length, hkv, d, generator=g)


def _today_prompt_ref(q5, k, v, chunk_len, sm_scale, logit_scale, budget, last_q, prefill_chunk, block=256):
    """The loop of ``sparse_attention_prompt_ref`` before reuse existed, composed from the oracles."""
    qa = attention_variants(q5, chunk_len)
    outs, lses = [], []
    for a, b in prompt_pieces(k.shape[0], chunk_len, prefill_chunk):
        vert, sl = piece_scores(q5, k, (a, b), chunk_len, sm_scale, logit_scale, last_q)
        v_, s_ = vert[:, :b].clone()[None], sl[:, :b].clone()[None]
        v_idx, s_idx = select_vertical_slash(v_, s_, torch.tensor([b]), budget)
        cov, _ = block_pattern(s_idx, torch.zeros(1, dtype=torch.bool), -(-b // BLOCK))
        for s in range(a, b, block):
            rows = torch.arange(s, min(s + block, b))
            mask = pattern_mask_ref(cov[0], v_idx[0], rows, b)
            o, lse = dca_attention_ref(qa[rows], k[:b], v[:b], rows, chunk_len, sm_scale, logit_scale, block=block,
                                       key_mask=mask)
            outs.append(o)
            lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


# ---------------------------------------------------------------- k == 1 is today's behaviour


@pytest.mark.parametrize("prefill_chunk", [None, 128, 320])
def test_every_1_is_todays_path_bit_for_bit(prefill_chunk):
    q5, k, v = _inputs(1100)
    budget = make_budget([40, 70], [120, 200], CPU)
    args = (q5, k, v, 448, 0.25, 1.1, budget)
    want = _today_prompt_ref(*args, last_q=64, prefill_chunk=prefill_chunk)
    for got in (sparse_attention_prompt_ref(*args, last_q=64, prefill_chunk=prefill_chunk),
                sparse_attention_prompt_ref(*args, last_q=64, prefill_chunk=prefill_chunk, reestimate_every=1)):
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_piece_mask_keys_default_and_piece_pattern_agree():
    q5, k, _ = _inputs(900)
    budget = make_budget([35, 60], [110, 150], CPU)
    vert, sl = piece_scores(q5, k, (448, 700), 448, 0.25, 1.0, 64)
    rows = torch.arange(448, 700)
    m0 = piece_mask(vert, sl, 700, budget, rows)
    assert torch.equal(m0, piece_mask(vert, sl, 700, budget, rows, keys=700))
    v_idx, cov = piece_pattern(vert, sl, 700, budget)
    assert torch.equal(m0, pattern_mask_ref(cov, v_idx, rows, 700))
    with pytest.raises(ValueError, match="only extends forwards"):
        piece_pattern(vert, sl, 700, budget, keys=600)


def test_recall_evaluate_every_1_is_unchanged():
    q5, k, v = _inputs(1000, seed=3)
    seq = prepare(LayerInputs(0, q5, k, v, 448, 0.25, 1.0), RowSampling(tail=8, random=24), prefill_chunk=192)
    budget = make_budget([40, 40], [110, 110], CPU)
    a, b = evaluate([seq], budget), evaluate([seq], budget, reestimate_every=1)
    assert torch.equal(a.recall, b.recall) and torch.equal(a.keys, b.keys)
    c = evaluate([seq], budget, reestimate_every=3)  # estimating pieces keep their own pattern
    anchors = estimation_anchors([(p.q_pos0, p.q_end) for p in seq.pieces], 448, 3)
    at = 0
    for i, pc in enumerate(seq.pieces):
        n = pc.rows.shape[0]
        if anchors[i] == i:
            assert torch.equal(a.recall[at : at + n], c.recall[at : at + n])
        at += n


# ---------------------------------------------------------------- which piece estimates


def test_anchors_count_pieces_within_each_dca_chunk():
    pieces = prompt_pieces(1400, 448, 128)  # DCA chunks [0,448) [448,896) [896,1344) [1344,1400)
    starts = [a for a, _ in pieces]
    assert starts == [0, 128, 256, 384, 448, 512, 640, 768, 896, 1024, 1152, 1280, 1344]
    assert estimation_anchors(pieces, 448, 1) == list(range(13))
    assert estimation_anchors(pieces, 448, 2) == [0, 0, 2, 2, 4, 4, 6, 6, 8, 8, 10, 10, 12]
    assert estimation_anchors(pieces, 448, 3) == [0, 0, 0, 3, 4, 4, 4, 7, 8, 8, 8, 11, 12]
    assert estimation_anchors(pieces, 448, 8) == [0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12]
    assert estimation_anchors(pieces, None, 8) == [0] * 8 + [8] * 5  # without DCA: one group
    w = estimation_work(pieces, estimation_anchors(pieces, 448, 8), 64)
    assert (w["passes"], w["passes_all"]) == (4, 13)
    assert w["pairs"] == 64 * (128 + 512 + 1024) + 56 * 1400
    with pytest.raises(ValueError, match=">= 1"):
        estimation_anchors(pieces, 448, 0)


def test_a_new_dca_chunk_always_reestimates(monkeypatch):
    calls = []
    real = prompt_ref.piece_scores

    def spy(q5, k, piece, *a, **kw):
        calls.append(piece)
        return real(q5, k, piece, *a, **kw)

    monkeypatch.setattr(prompt_ref, "piece_scores", spy)
    q5, k, v = _inputs(1400)
    budget = make_budget([40, 40], [110, 110], CPU)
    want = {2: [0, 256, 448, 640, 896, 1152, 1344], 5: [0, 448, 896, 1344], 100: [0, 448, 896, 1344]}
    for every, starts in want.items():  # pieces start at 0 128 256 384 | 448 512 640 768 | 896 ... | 1344
        calls.clear()
        sparse_attention_prompt_ref(q5, k, v, 448, 0.25, 1.0, budget, last_q=64, prefill_chunk=128,
                                    reestimate_every=every)
        assert [a for a, _ in calls] == starts  # the first piece of every DCA chunk always estimates


# ---------------------------------------------------------------- what "extended" means


def test_reused_mask_is_the_estimated_selection_extended_planted_scores():
    """Planted scores: the selection is known (sinks + 3 columns, local diagonals + 2 offsets); the mask of a later
    piece reusing it must be exactly those columns and those offsets' 64x64 tiles over the longer key range."""
    h, est_end, q_end = 2, 640, 1024
    g = torch.Generator().manual_seed(0)
    vert, sl = torch.rand(h, est_end, generator=g) * 0.1, torch.rand(h, est_end, generator=g) * 0.1
    cols, offs = [100, 333, 600], [300, 577]
    vert[:, cols] = 5.0
    sl[:, offs] = 5.0
    budget = make_budget([SINK_COLUMNS + 3] * h, [LOCAL_DIAGONALS + 2] * h, CPU)
    rows = torch.arange(768, q_end)
    mask = piece_mask(vert, sl, est_end, budget, rows, keys=q_end)
    assert mask.shape == (rows.numel(), h, q_end)
    col_set = set(range(SINK_COLUMNS)) | set(cols)
    diag = set()
    for o in list(range(LOCAL_DIAGONALS)) + offs:
        diag |= {o // BLOCK, o // BLOCK + 1} if o % BLOCK else {o // BLOCK}
    want = torch.zeros(rows.numel(), q_end, dtype=torch.bool)
    for i, r in enumerate(rows.tolist()):
        for c in range(q_end):
            want[i, c] = c in col_set or (r // BLOCK - c // BLOCK) in diag
    for hh in range(h):
        assert torch.equal(mask[:, hh], want)
    # new keys [est_end, q_end) get no column: only diagonals reach them (here: local tiles 0-2 and offsets' tiles)
    assert diag == {0, 1, 2, 4, 5, 9, 10}
    r, c = 1000, 700  # distance 300 -> tile 15 - 10 = 5: on offset 300's tiles
    assert mask[r - 768, 0, c] and not mask[r - 768, 0, 1000 - 6 * BLOCK]


def test_reuse_end_to_end_on_planted_columns():
    """Queries of every piece attend hard to planted far columns; with reuse a column planted after the estimate
    is lost (no new columns), the old ones are kept; without reuse the new one is selected."""
    length, chunk, d = 1024, 1024, 16  # one DCA chunk; pieces of 256 -> k=4: only piece 0 estimates
    g = torch.Generator().manual_seed(1)
    q5 = torch.randn(length, 5, 1, d, generator=g) * 0.05
    k = torch.randn(length, 1, d, generator=g) * 0.05
    v = torch.randn(length, 1, d, generator=g)
    q5[:, :, 0, 0] += 8.0
    old, new = [60, 130], [400]  # 400 is a key only the pieces from 256 on can see
    k[old + new, 0, 0] += 1.0
    budget = make_budget([SINK_COLUMNS + 3], [LOCAL_DIAGONALS], CPU)
    pieces = prompt_pieces(length, chunk, 256)
    anchors = estimation_anchors(pieces, chunk, 4)
    assert anchors == [0, 0, 0, 0]
    vert, sl = piece_scores(q5, k, pieces[0], chunk, 1.0, 1.0, 64)
    rows = torch.arange(768, 1024)
    reused = piece_mask(vert, sl, pieces[0][1], budget, rows, keys=1024)
    own_v, own_s = piece_scores(q5, k, pieces[3], chunk, 1.0, 1.0, 64)
    own = piece_mask(own_v, own_s, 1024, budget, rows)
    assert bool(reused[:, 0, old].all()) and not bool(reused[:, 0, 400].any())
    assert bool(own[:, 0, old + new].all())
    out_r, lse_r = sparse_attention_prompt_ref(q5, k, v, chunk, 1.0, 1.0, budget, last_q=64, prefill_chunk=256,
                                               reestimate_every=4)
    out_1, lse_1 = sparse_attention_prompt_ref(q5, k, v, chunk, 1.0, 1.0, budget, last_q=64, prefill_chunk=256)
    assert torch.equal(lse_r[:256], lse_1[:256])  # the estimating piece is unchanged
    # from row 576 on, key 400 is 3+ key blocks back: outside the forced local tiles 0-2, so reuse loses it
    assert torch.equal(lse_r[256:576] > lse_1[256:576] - 1e-3, torch.ones(320, 1, dtype=torch.bool))
    assert bool((lse_r[576:] < lse_1[576:] - 0.2).all())  # it carried about a third of the mass


# ---------------------------------------------------------------- the experiment's pieces, prompts, attention


def test_serving_pieces_follow_runs_sparse():
    got = serving_pieces(4056, 896, 1024, 2048)
    assert [(a, b) for a, b, _ in got] == prompt_pieces(4056, 896, 1024)
    assert [s for *_, s in got] == [False] * 4 + [True] * 4  # cuts 896 1024 1792 2048 2688 3072 3584
    for a, b, s in got:
        start = a // 1024 * 1024
        end = min(start + 1024, 4056)
        assert s == runs_sparse(end, end - start, 2048)
    assert [s for *_, s in serving_pieces(2049, 896, 2048, 2048)] == [False, False, False, False]  # 1-token tail


@pytest.mark.parametrize("chunk_len,every", [(448, 1), (448, 3), (None, 2)])
def test_fast_sparse_prompt_matches_the_oracle(chunk_len, every):
    q5, k, v = _inputs(1300, h=4, hkv=2, d=32, seed=5)
    budget = make_budget([40, 100, 30, 60], [100, 64, 200, 300], CPU)
    pieces = prompt_pieces(1300, chunk_len, 192)[2:]
    want = sparse_attention_prompt_ref(q5, k, v, chunk_len, 0.3, 1.1, budget, last_q=64, pieces=pieces,
                                       reestimate_every=every)
    got = fast_sparse_prompt(q5, k, v, chunk_len, 0.3, 1.1, budget, 64, pieces, every)
    torch.testing.assert_close(got[0], want[0], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=2e-5, rtol=1e-5)


def test_passkey_prompts_are_the_harness_prompts():
    from sgl_qwen1m.evals.harness import RESERVE, make_samples
    from sgl_qwen1m.model.tasks import TaskBuilder
    from sgl_qwen1m.refine import reuse

    builder = TaskBuilder()
    assert reuse.RESERVE == RESERVE
    want = [s for _, s in make_samples(["passkey"], [4.0], 3, 1024, seed=0, builder=builder)]
    assert reuse.passkey_samples(builder, 4.0, 1024, 3, seed=0) == want


@pytest.mark.skipif(not has_weights(), reason="bundled tiny model weights absent")
def test_experiment_writes_a_valid_results_file(tmp_path):
    from sgl_qwen1m.bench.results import validate
    from sgl_qwen1m.refine.reuse import main

    out = tmp_path / "reuse.json"
    argv = ["run", "--out", str(out), "--multiples", "2.5", "--chunks", "256", "--every", "1,2,8", "--samples", "1",
            "--recall-seqs", "1", "--tail-rows", "4", "--random-rows", "8", "--oracle-check", "1"]
    assert main(argv) == 0
    doc = json.loads(out.read_text())
    assert validate(doc) == [] and doc["gpu"] == "cpu"
    by = {(r["metric"], r["reestimate_every"]): r for r in doc["rows"]}
    assert {m for m, _ in by} == {"recall", "recall_min", "accuracy", "estimation_ratio"}
    assert by[("estimation_ratio", 1)]["value"] == 1.0 and by[("estimation_ratio", 8)]["value"] < 1.0
    assert all(0.0 <= by[("recall", k)]["value"] <= 1.0 + 1e-6 for k in (1, 2, 8))
    assert by[("recall", 1)]["head_mean_min"] <= by[("recall", 1)]["value"] + 1e-12
    assert by[("accuracy", 1)]["same_output_share"] == 1.0
    assert all(c["outputs_equal"] == c["prompts"] for c in doc["oracle_check"])
    pytest.importorskip("matplotlib")
    from sgl_qwen1m.refine.reuse_plot import plot

    assert plot(str(out)).is_file()


def test_cli_rejects_a_baseline_other_than_1():
    from sgl_qwen1m.refine.reuse import main

    with pytest.raises(SystemExit):
        main(["run", "--out", "x.json", "--every", "2,4"])


def test_the_refine_runs_calibration_prompt_is_regenerated_by_its_seed(tmp_path):
    """The pattern-reuse refine run calibrated on passkey prompt 15 of ``passkey_samples(..., 16x, 16, seed=0)``
    (benchmarks/README.md says how to write it); its uint16 bytes hash to the file the run read."""
    import hashlib

    import numpy as np

    from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR, read_config, train_length
    from sgl_qwen1m.model.tasks import TaskBuilder
    from sgl_qwen1m.refine.calib import load_calibration
    from sgl_qwen1m.refine.reuse import passkey_samples

    ids = list(passkey_samples(TaskBuilder(), 16.0, train_length(read_config(BUNDLED_MODEL_DIR)), 16, seed=0)[15]
               .prompt_ids)
    raw = np.asarray(ids, dtype=np.uint16).tobytes()
    assert len(ids) == 16344
    assert hashlib.sha256(raw).hexdigest() == "01bc113e982b8e3fd9ca2dc2041752c0ea4f79b4bd78884d2eef3eeeb07977e1"
    (tmp_path / "calib.bin").write_bytes(raw)
    assert load_calibration(str(tmp_path / "calib.bin"), 16344, 1, BUNDLED_MODEL_DIR) == [ids]
