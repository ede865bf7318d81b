"""The shapes FLOP and memory arithmetic needs (:class:`ModelShape`, read from an HF ``config.json``) and the
Qwen2.5 / Qwen3-MoE shapes the planner knows by name. Part of :mod:`sgl_qwen1m.sizing`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

__all__ = ["GIB", "ModelShape", "kv_dtype_label", "QWEN25_7B", "QWEN25_14B", "QWEN3_30B_A3B", "QWEN3_235B_A22B"]

GIB = float(1 << 30)


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Qwen2-style decoder that FLOP and memory arithmetic needs.

    ``num_experts > 0`` makes every layer's MLP a mixture of ``num_experts`` SwiGLU experts of width
    ``moe_intermediate``, ``experts_per_tok`` active per token (Qwen3-MoE; ``intermediate`` is then unused).
    ``qkv_bias`` (Qwen2) and ``qk_norm`` (Qwen3) only change the parameter count by a few thousand per layer.
    """

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    tie_embeddings: bool = False
    num_experts: int = 0
    experts_per_tok: int = 0
    moe_intermediate: int = 0
    qkv_bias: bool = True
    qk_norm: bool = False

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> "ModelShape":
        """Build from an HF ``config.json`` dict (``head_dim`` defaults to ``hidden // heads``)."""
        heads = int(cfg["num_attention_heads"])
        hidden = int(cfg["hidden_size"])
        return cls(
            layers=int(cfg["num_hidden_layers"]),
            hidden=hidden,
            heads=heads,
            kv_heads=int(cfg.get("num_key_value_heads", heads)),
            head_dim=int(cfg.get("head_dim") or hidden // heads),
            intermediate=int(cfg["intermediate_size"]),
            vocab=int(cfg["vocab_size"]),
            tie_embeddings=bool(cfg.get("tie_word_embeddings", False)),
            num_experts=int(cfg.get("num_experts", 0) or 0),
            experts_per_tok=int(cfg.get("num_experts_per_tok", 0) or 0),
            moe_intermediate=int(cfg.get("moe_intermediate_size", 0) or 0),
            qkv_bias=bool(cfg.get("attention_bias", cfg.get("model_type") in (None, "qwen2", "qwen2_moe"))),
            qk_norm=cfg.get("model_type") in ("qwen3", "qwen3_moe"),
        )

    @classmethod
    def from_dir(cls, model_dir: Union[str, Path]) -> "ModelShape":
        """Read ``<model_dir>/config.json``."""
        with open(Path(model_dir) / "config.json") as f:
            return cls.from_config(json.load(f))

    @property
    def _attn_params(self) -> int:
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return self.hidden * (q + 2 * kv) + q * self.hidden

    @property
    def layer_linear_params(self) -> int:
        """Weights one token multiplies in a layer: q/k/v/o and the gated MLP, or the router plus the active
        experts of a MoE layer (biases and norms ignored). FLOPs use this."""
        if self.num_experts:
            return self._attn_params + self.hidden * self.num_experts + 3 * self.hidden * self.moe_intermediate * self.experts_per_tok
        return self._attn_params + 3 * self.hidden * self.intermediate

    @property
    def layer_weight_params(self) -> int:
        """Weights stored per layer: as ``layer_linear_params`` but with every expert (memory uses this)."""
        if self.num_experts:
            return self._attn_params + self.hidden * self.num_experts + 3 * self.hidden * self.moe_intermediate * self.num_experts
        return self.layer_linear_params

    @property
    def mlp_activation_width(self) -> int:
        """Live MLP activation elements per prefill token: gate/up and the activated product (``3 * intermediate``);
        for MoE, per active expert, gate/up, product and the expert's output (``topk * (3 * moe_inter + hidden)``)."""
        if self.num_experts:
            return self.experts_per_tok * (3 * self.moe_intermediate + self.hidden)
        return 3 * self.intermediate

    @property
    def linear_flops_per_token(self) -> float:
        """FLOPs of all linear layers for one prefill token (13.05e9 for Qwen2.5-7B)."""
        return 2.0 * self.layers * self.layer_linear_params

    @property
    def num_params(self) -> int:
        """All parameters: layers, embedding and (untied) LM head; biases and norms approximated."""
        q = self.heads * self.head_dim
        kv = self.kv_heads * self.head_dim
        per_layer = (self.layer_weight_params + (q + 2 * kv) * self.qkv_bias + 2 * self.hidden  # qkv bias + 2 norms
                     + 2 * self.head_dim * self.qk_norm)
        emb = self.vocab * self.hidden
        return self.layers * per_layer + emb * (1 if self.tie_embeddings else 2) + self.hidden

    def weight_bytes(self, dtype_bytes: int = 2) -> int:
        """Weight memory in bytes (15.2e9 for Qwen2.5-7B, 61.1e9 for Qwen3-30B-A3B in bf16)."""
        return self.num_params * dtype_bytes

    def kv_bytes_per_token(self, dtype_bytes: int = 2) -> int:
        """K and V cache bytes per token over all layers (57,344 for Qwen2.5-7B, 98,304 for Qwen3-30B-A3B in bf16;
        half in FP8)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


# Qwen2.5-7B-Instruct(-1M): 28 layers, 28 query heads, 4 KV heads, head_dim 128.
QWEN25_7B = ModelShape(layers=28, hidden=3584, heads=28, kv_heads=4, head_dim=128, intermediate=18944, vocab=152064)
# Qwen2.5-14B-Instruct(-1M): 48 layers, 40 query heads, 8 KV heads, head_dim 128.
QWEN25_14B = ModelShape(layers=48, hidden=5120, heads=40, kv_heads=8, head_dim=128, intermediate=13824, vocab=152064)
# Qwen3-30B-A3B(-Instruct/Thinking-2507): 48 layers, 32:4 heads, head_dim 128, 128 experts of 768, top-8, qk-norm.
QWEN3_30B_A3B = ModelShape(layers=48, hidden=2048, heads=32, kv_heads=4, head_dim=128, intermediate=6144, vocab=151936,
                           num_experts=128, experts_per_tok=8, moe_intermediate=768, qkv_bias=False, qk_norm=True)
# Qwen3-235B-A22B(-Instruct-2507): 94 layers, 64:4 heads, head_dim 128, 128 experts of 1536, top-8, qk-norm.
QWEN3_235B_A22B = ModelShape(layers=94, hidden=4096, heads=64, kv_heads=4, head_dim=128, intermediate=12288,
                             vocab=151936, num_experts=128, experts_per_tok=8, moe_intermediate=1536, qkv_bias=False,
                             qk_norm=True)


def kv_dtype_label(kv_cache_dtype: Union[str, None], model_dir: Union[str, Path]) -> str:
    """The ``kv_dtype`` field of result rows: SGLang's ``--kv-cache-dtype``, with ``auto`` resolved to the model's dtype
    (``bf16`` for ``bfloat16``), as SGLang resolves it."""
    if kv_cache_dtype and kv_cache_dtype != "auto":
        return kv_cache_dtype
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    dtype = str(cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16")
    return {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}.get(dtype, dtype)
