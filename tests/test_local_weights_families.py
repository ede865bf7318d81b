"""``--weights local`` recipes per model family: Qwen3's embedding/projection/norm recipe gives Qwen2's q/k."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from sgl_qwen1m.bench import local_weights as lw
from sgl_qwen1m.model.torch_qwen2 import apply_rope, rope_cos_sin

ROOT = Path(__file__).resolve().parents[1]
EPS = 1e-6
BASE = 1e7

TINY = {
    "model_type": "qwen3_moe",
    "hidden_size": 64,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "num_hidden_layers": 2,
    "vocab_size": 50,
    "intermediate_size": 128,
    "moe_intermediate_size": 32,
    "num_experts": 4,
    "num_experts_per_tok": 2,
    "attention_bias": False,
    "rms_norm_eps": EPS,
}


def _rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Qwen3 / SGLang RMSNorm: ``x * rsqrt(mean(x**2) + eps) * w`` over the last dim (fp32 statistics)."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS)).to(x.dtype) * w.to(x.dtype)


def _qwen3_layer_scores(
    named: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, pos: torch.Tensor, layer: int, dtype: torch.dtype,
    ln_weight: torch.Tensor | None = None, residual_noise: float = 0.0,
) -> torch.Tensor:
    """Scores ``[heads, T]`` of the last query against every key in one Qwen3 attention layer, as Qwen3 computes them.

    The residual stream is the embedding row plus ``residual_noise`` (what earlier dummy layers add); ``ln_weight``
    replaces the recipe's ``input_layernorm.weight`` when given.
    """
    h_, kv_, d = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    pre = f"model.layers.{layer}"
    emb = named["model.embed_tokens.weight"].to(dtype)
    hid = emb[ids]
    if residual_noise:
        hid = hid + torch.empty_like(hid).uniform_(-residual_noise, residual_noise)
    x = _rms_norm(hid, named[f"{pre}.input_layernorm.weight"] if ln_weight is None else ln_weight)
    q = (x @ named[f"{pre}.self_attn.q_proj.weight"].to(dtype).T).view(-1, h_, d)
    k = (x @ named[f"{pre}.self_attn.k_proj.weight"].to(dtype).T).view(-1, kv_, d)
    q = _rms_norm(q, named[f"{pre}.self_attn.q_norm.weight"])
    k = _rms_norm(k, named[f"{pre}.self_attn.k_norm.weight"])
    cos, sin = rope_cos_sin(pos, d, BASE)
    q, k = apply_rope(q.float(), cos, sin), apply_rope(k.float(), cos, sin)
    k = k.repeat_interleave(h_ // kv_, dim=1)  # GQA: query head i reads kv head i // group
    return torch.einsum("hd,thd->ht", q[-1], k) / math.sqrt(d)


def _qwen2_scores(v: torch.Tensor, pos: torch.Tensor, heads: int) -> torch.Tensor:
    """The qwen2-bias recipe: q = k = ``v`` in every head, the same RoPE."""
    d = v.numel()
    cos, sin = rope_cos_sin(pos, d, BASE)
    r = apply_rope(v.double().expand(len(pos), 1, d), cos, sin)[:, 0]
    return ((r[-1] * r).sum(-1) / math.sqrt(d)).float().expand(heads, -1)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-4), (torch.bfloat16, 1e-3)])
def test_qwen3_recipe_reproduces_the_qwen2_scores(dtype: torch.dtype, tol: float) -> None:
    named = dict(lw.local_attention_tensors(TINY, skip_high_pairs=2))
    v = lw.local_bias_vector(16, skip_high_pairs=2)
    pos = torch.arange(300)
    ids = torch.randint(0, TINY["vocab_size"], (300,))
    ref = _qwen2_scores(v, pos, 4)
    assert float(ref.max()) > 4.0  # not a trivially small score
    for layer in range(TINY["num_hidden_layers"]):
        got = _qwen3_layer_scores(named, TINY, ids, pos, layer, dtype, residual_noise=1e-4)
        torch.testing.assert_close(got, ref, atol=tol, rtol=tol)
        # the sign of input_layernorm's column 0 cancels: q and k share it
        ln = named[f"model.layers.{layer}.input_layernorm.weight"]
        torch.testing.assert_close(
            _qwen3_layer_scores(named, TINY, ids, pos, layer, dtype, ln_weight=-ln), ref, atol=tol, rtol=tol
        )


def test_dummy_input_layernorm_would_let_eps_shrink_the_scores() -> None:
    """Why the recipe overwrites ``input_layernorm``: at SGLang's dummy scale (|w| ~ 5e-4) eps dominates q_norm."""
    named = dict(lw.local_attention_tensors(TINY, skip_high_pairs=2))
    pos = torch.arange(64)
    ids = torch.randint(0, TINY["vocab_size"], (64,))
    ref = _qwen2_scores(lw.local_bias_vector(16, skip_high_pairs=2), pos, 4)
    dummy_ln = torch.full((64,), -5e-4)  # one value of either sign, as SGLang's seeded dummy init gives
    got = _qwen3_layer_scores(named, TINY, ids, pos, 0, torch.float32, ln_weight=dummy_ln)
    assert float(got.abs().max()) < 0.2 * float(ref.abs().max())


def test_qwen3_scores_decay_with_distance() -> None:
    cfg = dict(TINY, hidden_size=64, num_attention_heads=2, num_key_value_heads=1, head_dim=128, num_hidden_layers=1)
    named = dict(lw.local_attention_tensors(cfg))  # default amplitude / zeroed pairs, head_dim 128 as the real model
    pos = torch.tensor([0, 4096 - 64, 4096])  # distances 4096, 64, 0 from the last query
    ids = torch.randint(0, cfg["vocab_size"], (3,))
    s = _qwen3_layer_scores(named, cfg, ids, pos, 0, torch.bfloat16)
    d4096, d64, d0 = s[0].tolist()
    assert d0 > d64 > d4096, (d0, d64, d4096)
    torch.testing.assert_close(s, _qwen2_scores(lw.local_bias_vector(128), pos, 2), atol=0.1, rtol=0.02)


def test_structured_embedding_columns_and_rows() -> None:
    e = lw.structured_embedding(vocab=300, hidden=200, constant=0.25, period=64)
    assert e.shape == (300, 200) and e.dtype == torch.bfloat16
    assert e.untyped_storage().nbytes() == (64 * 299 + 200) * 2  # a view, not a [vocab, hidden] buffer
    m = e.contiguous()
    const = torch.arange(200) % 64 == 0
    assert bool((m[:, const] == 0.25).all())
    assert float(m[:, ~const].abs().max()) <= 1.0 and float(m[:, ~const].std()) > 0.5
    assert len({tuple(r.tolist()) for r in m}) == 300  # every token has its own row
    assert torch.equal(m, lw.structured_embedding(vocab=300, hidden=200).contiguous())  # seeded


def test_dispatch_by_model_type() -> None:
    q2 = dict(TINY, model_type="qwen2", num_attention_heads=4, head_dim=128, hidden_size=512)
    for mt in ("qwen2", "qwen2_moe"):
        named = lw.local_attention_tensors(dict(q2, model_type=mt))
        assert [n for n, _ in named] == [
            f"model.layers.{i}.self_attn.{p}_proj.bias" for i in range(2) for p in ("q", "k")
        ]
        assert lw.local_recipe(dict(q2, model_type=mt))["recipe"] == "qwen2-bias"
    assert lw.local_recipe(TINY)["recipe"] == "qwen3-embed-proj-norm"
    assert lw.local_recipe(dict(TINY, model_type="qwen3"))["embed_period"] == lw.EMBED_PERIOD
    for bad in ("llama", None):
        with pytest.raises(ValueError, match=r"model_type=.*supported: qwen2, qwen2_moe, qwen3, qwen3_moe"):
            lw.local_attention_tensors(dict(TINY, model_type=bad))


@pytest.mark.parametrize(
    "shape_dir", ["qwen3-30b-a3b-instruct-2507-1m-shape", "qwen3-30b-a3b-2507-1m-l4-shape"]
)
def test_real_qwen3_moe_config_names_and_shapes(shape_dir: str) -> None:
    cfg = json.loads((ROOT / "benchmarks" / "models" / shape_dir / "config.json").read_text())
    layers, hidden, d = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["head_dim"]
    heads, kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    named = lw.local_attention_tensors(cfg)
    shapes = {n: tuple(t.shape) for n, t in named}
    assert len(shapes) == len(named) == 1 + 5 * layers
    assert shapes["model.embed_tokens.weight"] == (cfg["vocab_size"], hidden)
    for i in range(layers):
        pre = f"model.layers.{i}"
        assert shapes[f"{pre}.input_layernorm.weight"] == (hidden,)
        assert shapes[f"{pre}.self_attn.q_proj.weight"] == (heads * d, hidden)
        assert shapes[f"{pre}.self_attn.k_proj.weight"] == (kv * d, hidden)
        assert shapes[f"{pre}.self_attn.q_norm.weight"] == shapes[f"{pre}.self_attn.k_norm.weight"] == (d,)
    assert all(t.device.type == "cpu" and t.dtype == torch.bfloat16 for _, t in named)
    # little host memory: one strided embedding storage, layers share their tensors
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for _, t in named}
    assert sum(storages.values()) < 64 << 20, sum(storages.values())
    emb = named[0][1]
    assert bool((emb[:, 0] == lw.EMBED_CONSTANT).all())
    # GPU copies per update call stay <= 1 GiB, except the embedding on its own
    batches = list(lw.update_batches(named))
    assert sum(len(b) for b in batches) == len(named)
    for b in batches:
        size = sum(t.numel() * t.element_size() for _, t in b)
        assert size <= 1 << 30 or len(b) == 1 or b[0][0] == "model.embed_tokens.weight" and size <= 1 << 31


def test_update_batches_split_by_materialized_bytes() -> None:
    t = torch.zeros(256)  # 1 KiB
    big = torch.zeros(1).expand(4096)  # 16 KiB once materialized
    named = [("a", t), ("b", t), ("c", big), ("d", t)]
    assert [[n for n, _ in b] for b in lw.update_batches(named, max_bytes=2048)] == [["a", "b"], ["c"], ["d"]]
    assert list(lw.update_batches([], max_bytes=1)) == []
