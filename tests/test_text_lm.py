"""The real-text LM recipe on CPU: data builder (dedup, hash split, manifest, tokenizer), a few training steps,
the written model directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from sgl_qwen1m.cli import main
from sgl_qwen1m.model.text_data import build_dataset, collect_files, heldout_documents, read_tokens, split_of
from sgl_qwen1m.model.text_lm import lm_config
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2
from sgl_qwen1m.model.vocab import EOS

PKG = Path(__file__).resolve().parents[1] / "sgl_qwen1m"


def test_split_is_a_stable_function_of_the_content_hash():
    assert split_of("00000000" + "f" * 56, 2.0) == "heldout"  # 0 % 10000 < 200
    assert split_of("000000c8" + "0" * 56, 2.0) == "train"  # 200
    assert split_of("000000c7" + "0" * 56, 2.0) == "heldout"  # 199


def test_collect_deduplicates_by_content(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    body = "x = 1\n" * 20
    (tmp_path / "a" / "m.py").write_text(body)
    (tmp_path / "b" / "copy.py").write_text(body)
    (tmp_path / "b" / "doc.md").write_text("# title\n" * 20)
    (tmp_path / "b" / "data.json").write_text("{}" * 100)  # not collected
    (tmp_path / "b" / "tiny.py").write_text("x")  # under min_bytes
    got = collect_files([tmp_path / "a", tmp_path / "b"])
    assert sorted(e.path for e in got) == ["doc.md", "m.py"]
    with pytest.raises(FileNotFoundError):
        collect_files([tmp_path / "nope"])


def test_build_train_and_load_the_model_dir(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(PKG / "ops", src / "ops")
    shutil.copytree(PKG / "model", src / "model", ignore=shutil.ignore_patterns("__pycache__"))
    data, out = tmp_path / "data", tmp_path / "lm"
    m = build_dataset([src], data, vocab_size=400, heldout_pct=15.0)
    c = m["counts"]
    assert c["train_files"] + c["heldout_files"] == c["files"] == len(m["files"]) and c["heldout_files"] > 0
    train_sha = {f["sha256"] for f in m["files"] if f["split"] == "train"}
    assert not train_sha & {f["sha256"] for f in m["files"] if f["split"] == "heldout"}
    assert len(read_tokens(data / "train.bin")) == c["train_tokens"]
    docs = heldout_documents(data)
    assert len(docs) == c["heldout_files"] and all(0 not in d for d in docs)
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(data / "tokenizer.json"))
    assert tok.token_to_id(EOS) == 0 and tok.decode(tok.encode("def f(x):\n    return x").ids) == "def f(x):\n    return x"

    args = ["train-lm", "--data", str(data), "--out", str(out), "--preset", "smoke", "--steps", "10", "--batch", "2",
            "--micro-batch", "1", "--eval-windows", "2", "--log-every", "1", "--device", "cpu", "--lr", "1e-2"]
    assert main(args) == 0
    log = json.loads((out / "training_log.json").read_text())
    losses = [e["loss"] for e in log["log"]]
    assert len(losses) == 10 and sum(losses[-3:]) / 3 < losses[0] - 0.3, losses
    assert log["heldout_perplexity"] > 1 and log["data_counts"] == c
    model = TinyQwen2.from_pretrained(out)
    cfg = json.loads((out / "config.json").read_text())
    assert model.dca is not None and cfg["dual_chunk_attention_config"]["chunk_size"] == 512 == cfg["train_seq_len"]
    assert cfg["vocab_size"] == 400 and (out / "tokenizer.json").read_bytes() == (data / "tokenizer.json").read_bytes()
    assert model.generate([1, 2, 3], 4)  # decodes


def test_lm_config_shape_and_rules():
    cfg = lm_config(16384, 2048, 8, 8, 2, 2816)
    assert (cfg["head_dim"], cfg["hidden_size"], cfg["num_key_value_heads"]) == (128, 1024, 2)
    assert cfg["dual_chunk_attention_config"] == {"chunk_size": 2048, "local_size": 256,
                                                  "original_max_position_embeddings": 2048}
    from sgl_qwen1m.sizing import ModelShape

    shape = ModelShape.from_config(cfg)  # the arithmetic in text_lm's docstring: ~90.2M in layers, ~107M in all
    assert abs(shape.layers * shape.layer_linear_params - 90.2e6) < 0.1e6 and abs(shape.num_params - 107e6) < 0.5e6
    with pytest.raises(ValueError, match="multiple of 512"):
        lm_config(512, 1000, 1, 2, 1, 256)
