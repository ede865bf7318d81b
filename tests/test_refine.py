"""Sparsity refinement (``python -m sgl_qwen1m refine``): planted structure, the bundled tiny model, monotonicity."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl_qwen1m.config import SparseBudgets
from sgl_qwen1m.model.capture import LayerInputs
from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR, export_sparse_variant, has_weights, train_length
from sgl_qwen1m.model.tasks import TaskBuilder
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2
from sgl_qwen1m.refine.calib import load_calibration
from sgl_qwen1m.refine.recall import RowSampling, evaluate, make_budget, prepare
from sgl_qwen1m.refine.search import SearchConfig, grow, refine_layer
from sgl_qwen1m.refine.tool import refine_model, uniform_budgets, write_outputs

L, CHUNK, D = 2048, 1024, 64
OFFSETS = (600, 1300)  # the slash head's two diagonal bands (distance query - key)


def planted_layer(seed: int = 0) -> LayerInputs:
    """Three heads: 0 attends 60 planted far columns (vertical); 1 two diagonal bands at distances ``OFFSETS``
    (slash: ``q_p . k_c`` is a Dirichlet kernel in ``p - c - off``, main lobe ~ +-64 tokens); 2 the sink columns
    only (served by any budget). Heads 1 and 2 also put some mass on the sinks; planted logits ~ 10, others ~ 0."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.arange(L).float()
    q = torch.randn(L, 3, D, generator=g) * 0.05
    k = torch.randn(L, 3, D, generator=g) * 0.05
    cols = 64 + torch.randperm(L - 400, generator=g)[:60]
    q[:, 0, 0] += 10.0
    k[cols, 0, 0] += 1.0
    n_f = D // 2 - 1  # frequencies 2 pi i / (2L): one lobe per offset inside the sequence
    theta = 2 * math.pi * torch.arange(n_f).float() / (2 * L)
    for off in OFFSETS:
        q[:, 1, 0 : 2 * n_f : 2] += (11.0 / n_f) * torch.cos((pos[:, None] - off) * theta)
        q[:, 1, 1 : 2 * n_f : 2] += (11.0 / n_f) * torch.sin((pos[:, None] - off) * theta)
    k[:, 1, 0 : 2 * n_f : 2] += torch.cos(pos[:, None] * theta)
    k[:, 1, 1 : 2 * n_f : 2] += torch.sin(pos[:, None] * theta)
    q[:, 1:, D - 1] += 8.0
    k[:30, 1:, D - 1] += 1.0
    q[:, 2, D - 1] += 2.0
    v = torch.randn(L, 3, D, generator=g)
    q5 = q[:, None].expand(L, 5, 3, D).contiguous()  # positions are built in: every variant is the same
    return LayerInputs(0, q5, k, v, CHUNK, 1.0, 1.0)


def test_grow_is_multiplicative_with_a_floor_and_a_cap():
    cfg = SearchConfig(growth=1.5, min_step=64)
    assert [grow(x, cfg, 4096) for x in (30, 100, 1000, 4000, 4096)] == [94, 164, 1500, 4096, 4096]


def test_refinement_raises_exactly_the_planted_heads_on_the_right_axis():
    seq = prepare(planted_layer(), RowSampling(tail=8, random=24))
    cfg = SearchConfig(target=0.95)
    res = refine_layer(0, [seq], [40, 40, 40], [100, 100, 100], cfg, cap=L, log=lambda *_: None)
    vert, slash, sink = res
    assert vert.recall_before < 0.8 and slash.recall_before < 0.8 and sink.recall_before >= 0.95
    assert vert.vertical_after > 40 and vert.slash_after == 100, vert.steps
    assert slash.slash_after > 100 and slash.vertical_after == 40, slash.steps
    assert (sink.vertical_after, sink.slash_after, sink.steps) == (40, 100, [])
    assert all(r.recall_after >= 0.95 for r in res)
    # the measured cost follows the budgets
    assert vert.keys_after > vert.keys_before and sink.keys_after == sink.keys_before


def test_recall_statistic_choices():
    seq = prepare(planted_layer(), RowSampling(tail=4, random=4))
    m = evaluate([seq], make_budget([40, 40, 40], [100, 100, 100], torch.device("cpu")))
    assert m.recall.shape == (16, 3) and bool((m.recall <= 1).all())
    assert bool((m.stat("min") <= m.stat("p50")).all()) and bool((m.stat("p50") <= m.recall.max(0).values).all())
    with pytest.raises(ValueError, match="unknown recall statistic"):
        m.stat("median")


@settings(max_examples=12)
@given(seed=st.integers(0, 10_000), v1=st.integers(30, 200), dv=st.integers(0, 200), s1=st.integers(100, 200),
       ds=st.integers(0, 200))
def test_recall_never_falls_when_budgets_grow(seed, v1, dv, s1, ds):
    g = torch.Generator().manual_seed(seed)
    n, h, d = 320, 2, 16
    q5 = (torch.randn(n, 1, h, d, generator=g) * 1.5).expand(n, 5, h, d).contiguous()
    inp = LayerInputs(0, q5, torch.randn(n, 1, d, generator=g), torch.randn(n, 1, d, generator=g), 192, 0.25, 1.0)
    seq = prepare(inp, RowSampling(tail=8, random=16, seed=seed))
    dev = torch.device("cpu")
    small = evaluate([seq], make_budget([v1] * h, [s1] * h, dev))
    big = evaluate([seq], make_budget([v1 + dv] * h, [s1 + ds] * h, dev))
    assert bool((big.recall >= small.recall - 1e-5).all())
    assert bool((big.keys >= small.keys).all())


# ---------------------------------------------------------------- the bundled tiny model

needs_weights = pytest.mark.skipif(not has_weights(), reason="bundled tiny model weights absent")


@needs_weights
def test_tiny_model_refinement_writes_a_servable_budget_file(tmp_path):
    train_len = train_length(json.loads((BUNDLED_MODEL_DIR / "config.json").read_text()))
    length = 2 * train_len
    builder = TaskBuilder()
    calib = builder.make("passkey", length, random.Random(3))
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(list(calib.prompt_ids)))
    seqs = load_calibration(str(path), length, 1, BUNDLED_MODEL_DIR)
    assert seqs == [list(calib.prompt_ids)]
    model = TinyQwen2.from_pretrained(BUNDLED_MODEL_DIR)
    start = uniform_budgets(3, 2, 64, 128)
    cfg = SearchConfig(target=0.95)
    refined, report = refine_model(model, seqs, start, cfg, RowSampling(tail=8, random=32), log=lambda *_: None)
    heads = report["heads"]
    assert len(heads) == 6 and all(h["recall_after"] >= 0.95 for h in heads)
    assert report["summary"]["heads_below_target_after"] == 0
    assert any(h["vertical_after"] + h["slash_after"] < length // 2 for h in heads)  # still sparse, not dense
    assert report["summary"]["budget_keys_per_query_after"] >= report["summary"]["budget_keys_per_query_before"]
    out, rp = write_outputs(refined, report, tmp_path / "sparse_attention_config.json")
    back = SparseBudgets.from_json(out, 3, 2)
    assert back == refined and json.loads(rp.read_text())["summary"]["target"] == 0.95
    for h in heads:  # the file holds the refined budgets, the score is the refined recall
        b = back.heads[h["layer"]][h["head"]]
        assert (b.vertical, b.slash) == (h["vertical_after"], h["slash_after"])
        assert b.score == pytest.approx(h["recall_after"], abs=1e-4)

    # a model directory serving those budgets (export-sparse-variant --budgets); the CPU reference runs it sparse
    sparse_dir = export_sparse_variant(BUNDLED_MODEL_DIR, tmp_path / "tiny-refined", 0, 0, train_len, budgets_file=out)
    assert SparseBudgets.from_json(sparse_dir / "sparse_attention_config.json", 3, 2) == refined
    sparse = TinyQwen2.from_pretrained(sparse_dir, use_sparse=True)
    assert sparse.sparse is not None and sparse.sparse_threshold == train_len
    prompts = [builder.make("passkey", length - 40, random.Random(f"agree/{i}")) for i in range(2)]
    for s in prompts:
        want = model.generate(s.prompt_ids, s.max_new_tokens)
        got = sparse.generate(s.prompt_ids, s.max_new_tokens)
        assert got == want, (builder.decode(got), builder.decode(want))


def test_calibration_windows_from_a_token_stream_and_clear_errors(tmp_path):
    import numpy as np

    (tmp_path / "a.bin").write_bytes(np.arange(12, dtype=np.uint16).tobytes())
    assert load_calibration(str(tmp_path / "a.bin"), 5, 2) == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]
    (tmp_path / "b.json").write_text(json.dumps([[1, 2], [3, 4]]))
    assert load_calibration(str(tmp_path / "b.json"), 5, 3) == [[1, 2, 0, 3, 4]]  # runs joined by EOS (0)
    with pytest.raises(ValueError, match="needs at least 50"):
        load_calibration(str(tmp_path / "b.json"), 50)
    with pytest.raises(FileNotFoundError, match="matches no file"):
        load_calibration(str(tmp_path / "*.txt"), 5)


def test_score_maps_log_bins_and_the_refine_maps_file(tmp_path):
    import gzip

    from sgl_qwen1m.cli import main
    from sgl_qwen1m.refine.maps import log_bin_edges, log_binned

    assert log_bin_edges(1) == [0, 1] and log_bin_edges(5) == [0, 1, 2, 4, 5] and log_bin_edges(8)[-2:] == [4, 8]
    x = torch.arange(10.0).repeat(2, 1)
    b = log_binned(x, log_bin_edges(10))  # bins [0], [1], [2,3], [4..7], [8,9] of 0..9 (sum 45)
    assert torch.allclose(b[0], torch.tensor([0, 1, 5, 22, 17]) / 45.0)
    with pytest.raises(ValueError, match="length must be >= 1"):
        log_bin_edges(0)

    train_len = train_length(json.loads((BUNDLED_MODEL_DIR / "config.json").read_text()))
    length = 2 * train_len
    calib = TaskBuilder().make("passkey", length, random.Random(3))
    path = tmp_path / "calib.json"
    path.write_text(json.dumps(list(calib.prompt_ids)))
    maps_path = tmp_path / "maps.json.gz"
    assert main(["refine", "--calib", str(path), "--length", str(length), "--out", str(tmp_path / "b.json"),
                 "--layers", "0,2", "--random-rows", "16", "--device", "cpu", "--maps", str(maps_path)]) == 0
    doc = json.loads(gzip.decompress(maps_path.read_bytes()))
    assert doc["prompt_tokens"] == length and doc["bin_edges"] == log_bin_edges(length)
    assert [m["layer"] for m in doc["layers"]] == [0, 2]
    for m in doc["layers"]:
        for kind in ("vertical", "slash"):
            assert len(m[kind]) == 2 and all(len(r) == len(doc["bin_edges"]) - 1 for r in m[kind])
            assert all(abs(sum(r) - 1) < 2e-3 and min(r) >= 0 for r in m[kind])
