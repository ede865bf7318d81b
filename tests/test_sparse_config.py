"""Sparse prefill configuration: the bundled model's sparse variant, and what SGLang hands the backend."""

from __future__ import annotations

import json

import pytest

from sgl_qwen1m.config import ConfigError, DCAConfig, sparse_budgets_from_hf
from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR, export_sparse_variant


def test_export_sparse_variant_writes_budgets_and_threshold(tmp_path):
    out = export_sparse_variant(BUNDLED_MODEL_DIR, tmp_path / "m", vertical=64, slash=128, threshold=2048)
    cfg = json.loads((out / "config.json").read_text())
    budgets = json.loads((out / "sparse_attention_config.json").read_text())
    assert cfg["dual_chunk_attention_config"]["sparse_attention_threshold"] == 2048
    assert len(budgets) == cfg["num_hidden_layers"]
    assert budgets[0]["0"] == ["vertical_and_slash", 64, 128, None]
    with pytest.raises(ValueError, match="vertical must be >= 0, got -1"):
        export_sparse_variant(BUNDLED_MODEL_DIR, tmp_path / "x", vertical=-1, slash=1, threshold=1)


def test_sglang_model_config_turns_sparse_on_for_the_variant(tmp_path):
    """Real SGLang (CPU): ModelConfig loads the budgets file beside config.json; our parser accepts what it built."""
    pytest.importorskip("sglang")
    from sglang.srt.configs.model_config import ModelConfig

    out = export_sparse_variant(BUNDLED_MODEL_DIR, tmp_path / "m", vertical=64, slash=128, threshold=2048)
    mc = ModelConfig(str(out))
    cfg = DCAConfig.from_hf_config(mc.hf_config)
    assert cfg.sparse_attention_enabled and cfg.sparse_attention_threshold == 2048
    budgets = sparse_budgets_from_hf(mc.hf_config, cfg)
    assert budgets.num_layers == 3 and budgets.num_heads == 2 and budgets.heads[2][1].slash == 128
    dense = ModelConfig(str(BUNDLED_MODEL_DIR))
    assert sparse_budgets_from_hf(dense.hf_config, DCAConfig.from_hf_config(dense.hf_config)) is None


def test_enabled_without_budgets_is_a_clear_error():
    raw = {"num_hidden_layers": 1, "num_attention_heads": 2,
           "dual_chunk_attention_config": {"chunk_size": 1024, "local_size": 128, "sparse_attention_enabled": True}}
    with pytest.raises(ConfigError, match="no sparse_attention_config.json"):
        sparse_budgets_from_hf(raw, DCAConfig.from_hf_config(raw))


@pytest.mark.parametrize(
    "shape, layers, heads, mean_vertical, mean_slash",
    # Means from the research notes (shared/research/qwen1m-method.md section 1.7), an independent read of the same
    # public budgets: 7B-1M from Qwen's file, 14B-1M from MInference's Qwen2.5_14B_Instruct_1M.json.
    [("qwen2.5-14b-1m-shape", 48, 40, 2357, 6055)],
)
def test_shipped_budget_files_parse_for_their_model(shape, layers, heads, mean_vertical, mean_slash):
    from pathlib import Path

    from sgl_qwen1m.config import SparseBudgets

    d = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / shape
    cfg = json.loads((d / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"]) == (layers, heads)
    budgets = SparseBudgets.from_json(d / "sparse_attention_config.json", num_layers=layers, num_heads=heads)
    heads_all = [b for layer in budgets.heads for b in layer]
    assert len(heads_all) == layers * heads
    assert sum(b.vertical for b in heads_all) / len(heads_all) == pytest.approx(mean_vertical, abs=0.5)
    assert sum(b.slash for b in heads_all) / len(heads_all) == pytest.approx(mean_slash, abs=0.5)
