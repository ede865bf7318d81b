"""Qwen3-2507 1M shapes: the committed config-only directories parse through DCAConfig and through SGLang 0.5.17's
real ``prepare_server_args`` with ``--attention-backend qwen1m``; inline per-layer budgets (a list or an object keyed
by layer, inside ``dual_chunk_attention_config``) become ``SparseBudgets``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgl_qwen1m.config import DCA_CONFIG_KEYS, ConfigError, DCAConfig, sparse_budgets_from_hf

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
QWEN3_DIRS = {
    "qwen3-30b-a3b-instruct-2507-1m-shape": (48, 32, 2048),
    "qwen3-30b-a3b-thinking-2507-1m-shape": (48, 32, 2048),
    "qwen3-235b-a22b-instruct-2507-1m-shape": (94, 64, 4096),
    "qwen3-30b-a3b-2507-1m-l4-shape": (4, 32, 2048),
}


@pytest.mark.parametrize("name", sorted(QWEN3_DIRS))
def test_shape_dir_is_qwen3_moe_with_1m_dca(name):
    cfg = json.loads((MODELS / name / "config.json").read_text())
    layers, heads, hidden = QWEN3_DIRS[name]
    assert cfg["architectures"] == ["Qwen3MoeForCausalLM"] and cfg["model_type"] == "qwen3_moe"
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["hidden_size"]) == (layers, heads, hidden)
    assert (cfg["num_key_value_heads"], cfg["head_dim"], cfg["num_experts"], cfg["num_experts_per_tok"]) == (4, 128, 128, 8)
    assert cfg["vocab_size"] == 151936 and cfg["max_position_embeddings"] == 1010000
    assert set(cfg["dual_chunk_attention_config"]) <= set(DCA_CONFIG_KEYS)
    dca = DCAConfig.from_hf_config(cfg)
    assert dca.chunk_len == 253952 and dca.original_max_position_embeddings == 262144
    assert not dca.sparse_attention_enabled  # no budgets shipped in these directories


def _budgets(layers: int, heads: int) -> list[dict]:
    return [{str(h): ["vertical_and_slash", 1000 + l, 6096, 0.9] for h in range(heads)} for l in range(layers)]


@pytest.mark.parametrize("keyed", [False, True])
def test_inline_budgets_in_dca_config(keyed):
    raw = _budgets(3, 4)
    inline = {str(i): layer for i, layer in enumerate(raw)} if keyed else raw
    hf = {"num_hidden_layers": 3, "num_attention_heads": 4,
          "dual_chunk_attention_config": {"chunk_size": 64, "local_size": 8, "sparse_attention_config": inline,
                                          "sparse_attention_threshold": 100}}
    cfg = DCAConfig.from_hf_config(hf)
    assert cfg.sparse_attention_enabled and cfg.sparse_attention_threshold == 100
    b = sparse_budgets_from_hf(hf, cfg)
    assert (b.num_layers, b.num_heads) == (3, 4) and b.heads[2][3].vertical == 1002
    bad = dict(hf, dual_chunk_attention_config=dict(hf["dual_chunk_attention_config"], sparse_attention_config={"0": raw[0], "2": raw[1], "3": raw[2]}))
    with pytest.raises(ConfigError, match="keyed by layer"):
        sparse_budgets_from_hf(bad, DCAConfig.from_hf_config(bad))


@pytest.fixture(scope="module")
def server_args():
    pytest.importorskip("sglang.srt.server_args")
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        load_plugins()
        yield lambda *argv: prepare_server_args(list(argv))


@pytest.mark.parametrize("name", sorted(QWEN3_DIRS))
def test_shape_dir_through_sglang_prepare_server_args(server_args, name):
    args = server_args("--model-path", str(MODELS / name), "--attention-backend", "qwen1m", "--load-format", "dummy",
                       "--skip-tokenizer-init", "--device", "cuda")
    assert args.attention_backend == "qwen1m"


# The DCA block one public third-party source quotes for Qwen3-30B-A3B-Instruct-2507's config_1m.json (Hugging Face
# revision fcc1528; unverified here: no stored copy of the file exists): other chunk sizes than our shape directories,
# sparse_attention_enabled true and no budgets inline. SGLang and vLLM read budgets only from a
# sparse_attention_config.json beside config.json (get_sparse_attention_config), so such a file needs that sidecar.
QUOTED_CONFIG_1M_DCA = {"chunk_size": 131072, "local_size": 4096, "original_max_position_embeddings": 131072,
                        "sparse_attention_enabled": True}


def _quoted_config_1m(tmp_path: Path, sidecar: bool) -> Path:
    src = MODELS / "qwen3-30b-a3b-instruct-2507-1m-shape"
    cfg = json.loads((src / "config.json").read_text())
    cfg["dual_chunk_attention_config"] = dict(QUOTED_CONFIG_1M_DCA)
    d = tmp_path / ("with-sidecar" if sidecar else "no-sidecar")
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    if sidecar:
        (d / "sparse_attention_config.json").write_text(json.dumps(_budgets(48, 32)))
    return d


def test_quoted_config_1m_block_parses():
    dca = DCAConfig.from_hf_config({"dual_chunk_attention_config": QUOTED_CONFIG_1M_DCA})
    assert dca.sparse_attention_enabled and dca.chunk_len == 126976 and dca.chunk_len % 64 == 0
    with pytest.raises(ConfigError, match="no sparse_attention_config.json was found beside config.json"):
        sparse_budgets_from_hf({"num_hidden_layers": 48, "num_attention_heads": 32,
                                "dual_chunk_attention_config": QUOTED_CONFIG_1M_DCA}, dca)


def test_quoted_config_1m_through_sglang_prepare_server_args(server_args, tmp_path):
    argv = ("--attention-backend", "qwen1m", "--load-format", "dummy", "--skip-tokenizer-init", "--device", "cuda",
            "--kv-cache-dtype", "fp8_e4m3", "--context-length", "1010000")
    args = server_args("--model-path", str(_quoted_config_1m(tmp_path, sidecar=True)), *argv)
    assert args.attention_backend == "qwen1m"
    with pytest.raises(ValueError, match="sparse_attention_enabled is true but no sparse_attention_config.json"):
        server_args("--model-path", str(_quoted_config_1m(tmp_path, sidecar=False)), *argv)
