"""Sparse kernel work (``python -m sgl_qwen1m sparse-work``): the count rule against serving's plan objects and a
kernel walk, the dense limit, the proxies, the bundled tiny model through the CLI, and bad inputs."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from sgl_qwen1m import cli
from sgl_qwen1m.config import VERTICAL_SLASH, DCAConfig, HeadBudget, SparseBudgets
from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR, has_weights
from sgl_qwen1m.ops.sparse.plan import BLOCK, PAD
from sgl_qwen1m.ops.sparse.prompt_ref import piece_scores, prompt_pieces
from sgl_qwen1m.ops.sparse.reference import pattern_mask_ref
from sgl_qwen1m.ops.sparse.reuse import piece_pattern
from sgl_qwen1m.refine.recall import make_budget
from sgl_qwen1m.refine.work import (PROXIES, AttnShape, dense_pairs, pattern_work, piece_computed, proxy_inputs,
                                    proxy_work)

SHAPES = Path(__file__).resolve().parent.parent / "benchmarks" / "models"
CFG = DCAConfig(chunk_size=640, local_size=128)  # chunk_len 512
L, H, HKV, D = 1700, 4, 2, 32
VERT, SLASH = [30, 200, 7, 2000], [100, 300, 900, 40]  # 30 -> 130 columns (serving's quirk)


def _inputs(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random ``q5 [L, 5, H, D]`` / ``k [L, HKV, D]`` with some column and distance structure."""
    g = torch.Generator().manual_seed(seed)
    q5 = torch.randn(L, 5, H, D, generator=g)
    k = torch.randn(L, HKV, D, generator=g)
    k[torch.randperm(L, generator=g)[:40]] *= 3.0  # a few loud columns
    return q5, k


def _budgets(vertical: list[int], slash: list[int], layers: int = 1) -> SparseBudgets:
    heads = tuple(HeadBudget(VERTICAL_SLASH, v, s) for v, s in zip(vertical, slash))
    return SparseBudgets(heads=(heads,) * layers)


@pytest.mark.parametrize("prefill_chunk", [None, 384])
def test_count_equals_serving_computed_keys(prefill_chunk):
    """pattern_work == computed_keys * 64 of the batches serving plans (SparsePrefill.build_pattern, batch-wide NB)."""
    pytest.importorskip("triton")  # sgl_qwen1m.ops.sparse.prefill imports the Triton kernels (not run here)
    from sgl_qwen1m.ops.dca.plan import DCAShape, RequestSpan, plan_extend
    from sgl_qwen1m.ops.sparse.prefill import SparsePrefill
    from sgl_qwen1m.ops.sparse.reference import computed_keys, select_vertical_slash

    q5, k = _inputs()
    budget = make_budget(VERT, SLASH, torch.device("cpu"))
    got, dense = pattern_work(q5, k, CFG.chunk_len, D**-0.5, 1.0, budget, 64, prefill_chunk)
    assert dense == dense_pairs(L) == sum(p + 1 for p in range(L))

    shape = DCAShape(H, HKV, D, torch.float32, torch.float32, D**-0.5)
    sp = SparsePrefill(shape, CFG, _budgets(VERT, SLASH), torch.device("cpu"), threshold=0, last_q=64)
    want = torch.zeros(H, dtype=torch.int64)
    step = prefill_chunk or L
    for s in range(0, L, step):  # one engine batch per prefill chunk, the prompt's earlier tokens cached
        spans = [RequestSpan(s, min(step, L - s))]
        state = sp.plan_extend(plan_extend(spans, CFG), spans, torch.zeros(1, L, dtype=torch.int32),
                               torch.tensor([0]), None)
        pp = state.plan
        vert = torch.zeros(pp.num_pieces, H, pp.max_len)
        sl = torch.zeros_like(vert)
        for i, pc in enumerate(pp.pieces):
            v, s_ = piece_scores(q5, k, (pc.q_pos0, pc.q_end), CFG.chunk_len, D**-0.5, 1.0, 64)
            vert[i, :, : pc.q_end], sl[i, :, : pc.q_end] = v, s_
        v_idx, s_idx = select_vertical_slash(vert, sl, state.q_end, sp.budgets[0])
        pat = sp.build_pattern(state, v_idx, s_idx)
        want += computed_keys(pp, pat.dcnt, pat.vcnt) * BLOCK
    assert torch.equal(got, want)
    assert bool((got > 0).all()) and int(got[0]) < dense / 2  # head 0 (130 columns, 100 diagonals) is sparse


def _kernel_walk(v_idx: torch.Tensor, cov: torch.Tensor, piece: tuple[int, int], c0: int) -> tuple[list, list]:
    """Per head: pairs ``_vs_attn_kernel`` computes (its loops, written out) and, per query row block, the keys it
    visits. Diagonal loop: every chosen block diagonal ``d <= rb`` is one 64-key tile; column loops: every chosen
    column below ``max(64 (rb - band + 1), c0)`` (``band``: leading run of chosen diagonals 0, 1, ...)."""
    a, b = piece
    counts, visits = [], []
    for h in range(cov.shape[0]):
        chosen = [d for d in range(cov.shape[1]) if cov[h, d]]
        band = 0
        while band < cov.shape[1] and cov[h, band]:
            band += 1
        cols = [int(c) for c in v_idx[h] if int(c) != PAD]
        n, seen = 0, {}
        for rb in range(a // BLOCK, (b - 1) // BLOCK + 1):
            tiles = [d for d in chosen if d <= rb]
            cut = max(BLOCK * (rb - band + 1), c0)
            loaded = [c for c in cols if c < cut]
            n += BLOCK * (BLOCK * len(tiles) + len(loaded))
            seen[rb] = {(rb - d) * BLOCK + j for d in tiles for j in range(BLOCK)} | set(loaded)
        counts.append(n)
        visits.append(seen)
    return counts, visits


@pytest.mark.parametrize("piece,chunk_len", [((0, 900), None), ((1024, 1700), 512), ((1300, 1700), 512)])
def test_count_is_the_kernel_walk_and_covers_the_pattern_mask(piece, chunk_len):
    """The count equals the kernel's loops walked by hand; every causal key of pattern_mask_ref is visited (the
    kernel computes a superset of the pattern: whole tiles and masked covered columns)."""
    q5, k = _inputs(seed=piece[0])
    budget = make_budget(VERT, SLASH, torch.device("cpu"))
    vert, sl = piece_scores(q5, k, piece, chunk_len, D**-0.5, 1.0, 64)
    got = piece_computed(vert, sl, piece, budget, chunk_len)
    v_idx, cov = piece_pattern(vert, sl, piece[1], budget)
    c0 = (piece[0] // chunk_len) * chunk_len if chunk_len else 0
    counts, visits = _kernel_walk(v_idx, cov, piece, c0)
    assert got.tolist() == counts
    rows = torch.arange(*piece)
    mask = pattern_mask_ref(cov, v_idx, rows, piece[1]) & (torch.arange(piece[1])[None, :] <= rows[:, None])[:, None]
    for h in range(H):
        for i, r in enumerate(rows.tolist()):
            keys = set(torch.nonzero(mask[i, h]).flatten().tolist())
            assert keys <= visits[h][r // BLOCK], (h, r)
        assert counts[h] >= int(mask[:, h].sum())


def test_budgets_over_the_length_give_the_dense_tile_count():
    """Every key and diagonal chosen: whole diagonal tiles (masked upper halves included) plus, in DCA chunk
    ``c0 > 0``, every column before ``c0`` loaded again: ``64 * sum_rb (64 (rb + 1) + c0)`` pairs, >= dense."""
    q5, k = _inputs(seed=3)
    budget = make_budget([L] * H, [L] * H, torch.device("cpu"))
    got, dense = pattern_work(q5, k, CFG.chunk_len, D**-0.5, 1.0, budget, 64, prefill_chunk=384)
    want = 0
    for a, b in prompt_pieces(L, CFG.chunk_len, 384):
        c0 = (a // CFG.chunk_len) * CFG.chunk_len
        want += sum(BLOCK * (BLOCK * (rb + 1) + c0) for rb in range(a // BLOCK, (b - 1) // BLOCK + 1))
    assert got.tolist() == [want] * H and want > dense
    # without DCA (one piece from 0, L = 64 n): 64 (n + 1) / (64 n + 1) of dense
    n = 20
    got0, dense0 = pattern_work(q5[: n * BLOCK], k[: n * BLOCK], None, D**-0.5, 1.0, budget, 64)
    assert got0.tolist() == [BLOCK * BLOCK * n * (n + 1) // 2] * H and dense0 == dense_pairs(n * BLOCK)


SMALL = AttnShape("small", num_layers=2, num_heads=4, num_kv_heads=2, head_dim=128, theta=1e4,
                  dca=DCAConfig(chunk_size=2048, local_size=256), train_len=2048)


@pytest.mark.parametrize("kind", PROXIES)
def test_proxy_work_equals_pattern_work_on_the_materialised_proxy(kind):
    length, pc = 1300, 512
    shape = AttnShape("tiny", 2, 4, 2, 128, 1e4, DCAConfig(chunk_size=640, local_size=128), 640)
    budgets = SparseBudgets(heads=(_budgets(VERT, SLASH).heads[0], _budgets(SLASH, VERT).heads[0]))
    got = proxy_work(kind, shape, length, budgets, prefill_chunk=pc)
    for layer in range(2):
        inp = proxy_inputs(kind, shape, length, layer)
        assert inp.q5.shape[2] == (1 if kind == "local" else 4)  # local: one head stands for all
        done, dense = pattern_work(inp.q5, inp.k, inp.chunk_len, inp.sm_scale, inp.logit_scale,
                                   make_budget(*([VERT, SLASH] if layer == 0 else [SLASH, VERT]), torch.device("cpu")),
                                   shape.last_q, pc)
        assert torch.equal(got[layer], done.double() / dense)


def test_local_proxy_computes_less_than_uniform_at_small_budgets():
    budgets = _budgets([64, 130, 300, 64], [256, 512, 256, 1024], layers=2)
    local = proxy_work("local", SMALL, 4096, budgets)
    uniform = proxy_work("uniform", SMALL, 4096, budgets)
    assert local.shape == uniform.shape == (2, 4)
    assert torch.equal(local[0], local[1])  # identical layers, identical budgets
    assert bool((local > 0).all()) and bool((local < 0.7).all())
    # noise scatters 256+ diagonals over the 64 block diagonals: every tile runs, and in DCA chunk 1 the columns
    # before c0 are loaded again, so uniform reaches (and may pass) the dense count; distance decay keeps a band
    assert bool((uniform > 0.9).all()) and bool((uniform < 1.1).all())
    assert bool((local < uniform).all()) and float(local.mean()) < 0.5 * float(uniform.mean())


def test_local_proxy_uses_the_bench_vector_and_the_cli_names_match():
    """The proxy rotates the very vector the bench sets into checkpoints (one definition, model/local_vector.py);
    the CLI's proxy names (kept without importing torch at parse time) match the module's."""
    from sgl_qwen1m.bench.local_weights import local_bias_vector
    from sgl_qwen1m.refine.work import local_vector
    from sgl_qwen1m.refine.work_cli import PROXY_NAMES

    assert PROXY_NAMES == PROXIES
    for d in (64, 128):
        assert torch.equal(local_vector(d), local_bias_vector(d))
    with pytest.raises(ValueError, match="skip_high_pairs=16 must be in"):
        local_vector(32)


needs_weights = pytest.mark.skipif(not has_weights(), reason="bundled tiny model weights absent")


def _calib_and_budgets(tmp_path, layers: int = 3) -> tuple[str, str]:
    from sgl_qwen1m.model.tasks import TaskBuilder

    prompt = TaskBuilder().make("passkey", 2048, random.Random(3)).prompt_ids
    calib = tmp_path / "calib.json"
    calib.write_text(json.dumps(list(prompt)))
    bud = tmp_path / "budgets.json"
    bud.write_text(json.dumps(_budgets([64, 130], [128, 256], layers).to_list()))
    return str(calib), str(bud)


@needs_weights
def test_tiny_model_through_the_cli(tmp_path, capsys):
    calib, bud = _calib_and_budgets(tmp_path)
    out = tmp_path / "work.json"
    argv = ["sparse-work", "--model", str(BUNDLED_MODEL_DIR), "--budgets", bud, "--calib", calib,
            "--num-seqs", "2", "--lengths", "1024,2048", "--proxy", "local,uniform", "--device", "cpu",
            "--out", str(out)]
    assert cli.main(argv) == 0
    text = capsys.readouterr().out
    assert "tiny-dca" in text and "wrote" in text
    doc = json.loads(out.read_text())
    assert {"command", "gpu", "versions", "date", "rows"} <= set(doc) and "sparse-work" in doc["command"]
    rows = doc["rows"]
    assert [(r["prompt_tokens"], r["weights"]) for r in rows] == [
        (n, w) for n in (1024, 2048) for w in ("real", "local", "uniform")]
    names = {"real": "qwen1m-sparse", "local": "qwen1m-sparse-local", "uniform": "qwen1m-sparse-uniform"}
    for r in rows:
        assert r["metric"] == "computed_fraction" and r["backend"] == names[r["weights"]]
        assert r["model"] == "tiny-dca" and r["length_multiple"] == r["prompt_tokens"] / 1024
        assert 0 < r["min"] <= r["value"] <= r["max"] and len(r["per_layer"]) == 3
        assert r["value"] == pytest.approx(sum(r["per_layer"]) / 3, abs=1e-3)
    # 16-32 row blocks: noise lights nearly every block diagonal (> 1 possible: see the dense-limit test); the
    # trained model's pattern lies between the two proxies
    for n in (1024, 2048):
        real, local, uniform = (r["value"] for r in rows if r["prompt_tokens"] == n)
        assert local < real < uniform and uniform > 0.9
    assert all(r["max"] < 1 for r in rows if r["prompt_tokens"] == 2048 and r["weights"] != "uniform")
    assert rows[0]["sequences"] == 2 and rows[3]["sequences"] == 1  # two 1024-token windows of the 2048 prompt


def test_proxy_shape_rows_are_labelled_with_that_model(tmp_path, capsys):
    d = str(SHAPES / "qwen2.5-7b-1m-shape")
    out = tmp_path / "w.json"
    assert cli.main(["sparse-work", "--proxy-shape", d, "--lengths", "256", "--proxy", "local", "--device", "cpu",
                     "--backend-name", "qwen1m-sparse-refined", "--out", str(out)]) == 0
    assert "one DCA chunk" in capsys.readouterr().out
    (row,) = json.loads(out.read_text())["rows"]
    assert row["model"] == "qwen2.5-7b-1m-shape" and row["backend"] == "qwen1m-sparse-refined-local"
    assert len(row["per_layer"]) == 28 and row["length_multiple"] == pytest.approx(256 / 262144, abs=1e-4)


@pytest.mark.parametrize("extra,message", [
    (["--budgets", "{tmp}/nope.json"], "nope.json does not exist"),
    ([], "sparse_attention_config.json does not exist (pass --budgets FILE)"),
    (["--budgets", "{bud2}"], "has 2 layers, the model has num_hidden_layers=3"),
    (["--budgets", "{bud}", "--lengths", "32"], "--lengths 32 is shorter than one 64-token sparse tile"),
    (["--budgets", "{bud}", "--calib", "{tmp}/none*.json"], "matches no file"),
    (["--budgets", "{bud}", "--lengths", "4096"], "needs at least 4096"),
])
def test_bad_inputs_are_clear_errors(tmp_path, capsys, extra, message):
    calib, bud = _calib_and_budgets(tmp_path)
    (tmp_path / "two").mkdir()
    _, bud2 = _calib_and_budgets(tmp_path / "two", layers=2)
    fill = {"tmp": str(tmp_path), "bud": bud, "bud2": bud2}
    argv = ["sparse-work", "--model", str(BUNDLED_MODEL_DIR), "--calib", calib, "--lengths", "1024", "--proxy",
            "none", "--device", "cpu"]
    argv += [x.format(**fill) for x in extra]  # a repeated option: the later one wins
    if not has_weights() and message in ("matches no file", "needs at least 4096"):
        pytest.skip("bundled tiny model weights absent")
    assert cli.main(argv) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv,message", [
    (["--lengths", "1024"], "nothing to measure"),
    (["--model", "/nonexistent/dir", "--lengths", "1024"], "/nonexistent/dir/config.json does not exist"),
    (["--proxy-shape", str(SHAPES / "qwen2.5-7b-shape"), "--lengths", "1024"], "(pass --proxy-budgets FILE)"),
])
def test_missing_inputs_are_clear_errors(capsys, argv, message):
    assert cli.main(["sparse-work", *argv]) == 1
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--lengths", "0"], ["--lengths", "1024", "--proxy", "dummy"]])
def test_bad_values_are_usage_errors(argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(["sparse-work", "--proxy-shape", str(SHAPES / "qwen2.5-7b-1m-shape"), *argv])
    assert exc.value.code == 2
