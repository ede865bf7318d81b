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
