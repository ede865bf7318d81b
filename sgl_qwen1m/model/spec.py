"""The bundled tiny DCA model: its ``config.json``, where it lives, and the plain-RoPE variant for baselines.

The model is a Qwen2ForCausalLM (so SGLang's ``models/qwen2.py`` serves it unchanged) with head_dim 128, the
head size of Qwen2.5-7B/14B-Instruct-1M, so it runs on the same attention kernels. ``chunk_size`` and
``original_max_position_embeddings`` equal the training length; ``max_position_embeddings`` is large so SGLang
accepts prompts far past it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Optional, Union

from sgl_qwen1m.model.vocab import EOS_ID, VOCAB_SIZE, save_tokenizer

__all__ = [
    "BUNDLED_MODEL_DIR",
    "WEIGHTS_FILE",
    "SPARSE_FILE",
    "TOKENIZER_FILES",
    "make_config",
    "write_model_dir",
    "read_config",
    "train_length",
    "has_weights",
    "require_weights",
    "export_rope_variant",
]

BUNDLED_MODEL_DIR = Path(__file__).resolve().parent.parent / "data" / "tiny-dca"
WEIGHTS_FILE = "model.safetensors"
SPARSE_FILE = "sparse_attention_config.json"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
TRAIN_HINT = (  # the recipe of the committed weights (sgl_qwen1m/data/tiny-dca/README.md)
    "python -m sgl_qwen1m train --out sgl_qwen1m/data/tiny-dca --seq-len 1024 --rope-theta 2500 "
    "--steps 2000 --tasks copy,passkey --dca-aug 0.5 --seed 0 --device cuda --eval-multiples 1,8"
)


def make_config(
    seq_len: int = 4096,
    num_layers: int = 3,
    num_heads: int = 2,
    num_kv_heads: int = 1,
    intermediate_size: int = 288,
    rope_theta: float = 10000.0,
    local_size: Optional[int] = None,
    max_position_embeddings: int = 131072,
) -> dict[str, Any]:
    """HF ``config.json`` contents of a tiny Qwen2 with DCA whose chunk equals the training length ``seq_len``.

    ``local_size`` defaults to ``seq_len // 8`` (512 for 4096), so ``chunk_len = 7/8 * seq_len``.
    """
    head_dim = 128
    return {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "attention_dropout": 0.0,
        "bos_token_id": None,
        "eos_token_id": EOS_ID,
        "pad_token_id": EOS_ID,
        "hidden_act": "silu",
        "hidden_size": num_heads * head_dim,
        "head_dim": head_dim,
        "initializer_range": 0.02,
        "intermediate_size": intermediate_size,
        "max_position_embeddings": max_position_embeddings,
        "max_window_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_hidden_layers": num_layers,
        "num_key_value_heads": num_kv_heads,
        "rms_norm_eps": 1e-6,
        "rope_theta": float(rope_theta),
        "rope_scaling": None,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
        "torch_dtype": "bfloat16",
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
        "dual_chunk_attention_config": {
            "chunk_size": seq_len,
            "local_size": local_size if local_size is not None else seq_len // 8,
            "original_max_position_embeddings": seq_len,
        },
    }


def write_model_dir(out_dir: Union[str, Path], config: dict[str, Any]) -> Path:
    """Write ``config.json``, ``generation_config.json`` and the tokenizer files (not weights) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    gen = {"eos_token_id": config["eos_token_id"], "pad_token_id": config["pad_token_id"], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    save_tokenizer(out, model_max_length=config["max_position_embeddings"])
    return out


def read_config(model_dir: Union[str, Path]) -> dict[str, Any]:
    with open(Path(model_dir) / "config.json") as f:
        return json.load(f)


def train_length(config: dict[str, Any]) -> int:
    """The length the model was trained at: DCA's ``original_max_position_embeddings`` (or ``chunk_size``)."""
    dca = config.get("dual_chunk_attention_config") or {}
    n = dca.get("original_max_position_embeddings") or dca.get("chunk_size") or config.get("train_seq_len")
    if not n:
        raise ValueError("config.json has no dual_chunk_attention_config and no train_seq_len: training length unknown")
    return int(n)


def has_weights(model_dir: Union[str, Path] = BUNDLED_MODEL_DIR) -> bool:
    return (Path(model_dir) / WEIGHTS_FILE).is_file()


def require_weights(model_dir: Union[str, Path] = BUNDLED_MODEL_DIR) -> Path:
    """``model_dir`` if it holds trained weights; otherwise SystemExit telling how to train them."""
    path = Path(model_dir)
    if not has_weights(path):
        raise SystemExit(
            f"No trained weights: {path / WEIGHTS_FILE} does not exist.\n"
            f"Train the bundled model on a GPU (a few minutes on one H100) with:\n  {TRAIN_HINT}\n"
            "or point --model at a directory that holds config.json, the tokenizer and model.safetensors."
        )
    return path


def export_rope_variant(model_dir: Union[str, Path], out_dir: Union[str, Path]) -> Path:
    """Copy ``model_dir`` to ``out_dir`` with ``dual_chunk_attention_config`` removed (plain RoPE baseline).

    The training length is kept as ``train_seq_len`` so harnesses can still express lengths as multiples of it.
    SGLang serves the copy with any stock backend, e.g. ``--attention-backend flashinfer``.
    """
    src, out = Path(model_dir), Path(out_dir)
    if src.resolve() == out.resolve():
        raise ValueError("export_rope_variant: out_dir must differ from model_dir")
    out.mkdir(parents=True, exist_ok=True)
    config = read_config(src)
    config["train_seq_len"] = train_length(config)
    config.pop("dual_chunk_attention_config", None)
    for name in (*TOKENIZER_FILES, "generation_config.json", WEIGHTS_FILE):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def export_sparse_variant(
    model_dir: Union[str, Path],
    out_dir: Union[str, Path],
    vertical: int,
    slash: int,
    threshold: int,
    budgets_file: Union[str, Path, None] = None,
) -> Path:
    """Copy ``model_dir`` with a ``sparse_attention_config.json`` giving every head ``(vertical, slash)`` budgets and
    ``sparse_attention_threshold = threshold``: the bundled model's sparse-prefill variant (SGLang loads the budgets
    file beside ``config.json`` and turns sparse prefill on). ``budgets_file``: copy these per-head budgets instead
    (e.g. ``python -m sgl_qwen1m refine``'s output; checked against the model's layers and heads)."""
    src, out = Path(model_dir), Path(out_dir)
    if src.resolve() == out.resolve():
        raise ValueError("export_sparse_variant: out_dir must differ from model_dir")
    for name, value in (("vertical", vertical), ("slash", slash), ("threshold", threshold)):
        if value < 0:
            raise ValueError(f"export_sparse_variant: {name} must be >= 0, got {value}")
    config = read_config(src)
    if "dual_chunk_attention_config" not in config:
        raise ValueError(f"{src}/config.json has no dual_chunk_attention_config; sparse prefill needs DCA")
    out.mkdir(parents=True, exist_ok=True)
    dca = dict(config["dual_chunk_attention_config"], sparse_attention_threshold=threshold)
    dca.pop("sparse_attention_enabled", None)
    config["dual_chunk_attention_config"] = dca
    heads = int(config["num_attention_heads"])
    budgets = [{str(h): ["vertical_and_slash", vertical, slash, None] for h in range(heads)}
               for _ in range(int(config["num_hidden_layers"]))]
    if budgets_file is not None:
        from sgl_qwen1m.config import SparseBudgets

        budgets = SparseBudgets.from_json(budgets_file, int(config["num_hidden_layers"]), heads).to_list()
    for name in (*TOKENIZER_FILES, "generation_config.json", WEIGHTS_FILE):
        if (src / name).is_file():
            shutil.copyfile(src / name, out / name)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "sparse_attention_config.json").write_text(json.dumps(budgets) + "\n")
    return out
