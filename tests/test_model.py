"""The bundled model's tokenizer, config and pure-torch Qwen2 (plain RoPE and DCA), and the training smoke run."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from sgl_qwen1m.ops.dca.plan import dca_positions, yarn_logit_scale
from sgl_qwen1m.config import DCAConfig
from sgl_qwen1m.model.spec import (
    BUNDLED_MODEL_DIR,
    export_rope_variant,
    make_config,
    read_config,
    train_length,
    write_model_dir,
)
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2, apply_rope, rope_cos_sin
from sgl_qwen1m.model.vocab import EOS, EOS_ID, FILLER_SENTENCES, KEY_NOUNS, TASK_WORDS, build_tokenizer


def tiny_config(seq_len: int = 64, local: int = 8, layers: int = 2, orig: int | None = None) -> dict:
    cfg = make_config(seq_len=seq_len, num_layers=layers, intermediate_size=64, rope_theta=500.0, local_size=local)
    if orig is not None:
        cfg["dual_chunk_attention_config"]["original_max_position_embeddings"] = orig
    return cfg


def random_model(cfg: dict, use_dca: bool | None = None, seed: int = 0) -> TinyQwen2:
    torch.manual_seed(seed)
    m = TinyQwen2(cfg, use_dca=use_dca)
    with torch.no_grad():  # larger than the init so attention is far from uniform and RoPE matters
        for p in m.parameters():
            p.normal_(0, 0.2) if p.dim() >= 2 else p.normal_(1.0, 0.1)
    return m.eval()


# ------------------------------------------------------------------------------------------- tokenizer / config


def test_bundled_dir_has_config_and_tokenizer() -> None:
    cfg = read_config(BUNDLED_MODEL_DIR)
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and cfg["model_type"] == "qwen2"
    assert cfg["head_dim"] == 128 and cfg["hidden_size"] == 128 * cfg["num_attention_heads"]
    dca = DCAConfig.from_hf_config(cfg)
    assert dca is not None and dca.chunk_size == 1024 and dca.local_size < dca.chunk_size  # trained at 1,024 tokens
    assert train_length(cfg) == 1024 and cfg["max_position_embeddings"] >= 16 * 1024
    assert cfg["tie_word_embeddings"] and cfg["eos_token_id"] == EOS_ID
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        assert (BUNDLED_MODEL_DIR / name).is_file(), name


def test_bundled_weights_fit_3mb() -> None:
    n = TinyQwen2(read_config(BUNDLED_MODEL_DIR)).num_params()
    assert 2 * n <= 3_000_000, f"{n} parameters = {2 * n} bytes in bf16"


def test_bundled_tokenizer_file_is_current() -> None:
    """The committed tokenizer.json is exactly what build_tokenizer() produces."""
    saved = json.loads((BUNDLED_MODEL_DIR / "tokenizer.json").read_text())
    assert saved == json.loads(build_tokenizer().to_str())


def test_tokenizer_words_are_single_tokens_and_round_trip() -> None:
    tok = build_tokenizer()
    words = {w.strip(".,") for s in FILLER_SENTENCES for w in s.split()} | set(TASK_WORDS) | set(KEY_NOUNS)
    for w in sorted(words):
        assert len(tok.encode(" " + w).ids) == 1, w
    text = " the pass key is 71432. var apple = 12345, 678. what is it?"
    ids = tok.encode(text).ids
    assert tok.decode(ids) == text
    assert tok.encode(" 71432").tokens == ["Ġ", "7", "1", "4", "3", "2"]
    assert tok.token_to_id(EOS) == EOS_ID


def test_auto_tokenizer_loads_bundled_dir() -> None:
    transformers = pytest.importorskip("transformers")
    at = transformers.AutoTokenizer.from_pretrained(str(BUNDLED_MODEL_DIR))
    assert at.is_fast and at.eos_token_id == EOS_ID
    text = " there is an important pass key hidden inside a lot of irrelevant text. the pass key is 90210."
    assert at(text)["input_ids"] == build_tokenizer().encode(text).ids
    assert at.decode(at(text)["input_ids"]) == text


def test_export_rope_variant(tmp_path: Path) -> None:
    out = export_rope_variant(BUNDLED_MODEL_DIR, tmp_path / "rope")
    cfg = read_config(out)
    assert "dual_chunk_attention_config" not in cfg and train_length(cfg) == 1024
    assert (out / "tokenizer.json").is_file()


# ------------------------------------------------------------------------------------------- torch model


def test_dca_equals_plain_rope_up_to_chunk_size() -> None:
    """Within chunk_size DCA distances equal RoPE distances: the ref DCA path == the SDPA training forward."""
    cfg = tiny_config(seq_len=64, local=8)  # chunk_len 56: positions 56..63 use the successive branch
    dca = random_model(cfg)
    ids = torch.randint(0, 700, (64,))
    plain = dca(ids[None])[0, -1]
    for impl in ("ref", "auto"):
        got, _ = dca.prefill(ids.tolist(), impl=impl)
        torch.testing.assert_close(got, plain, atol=2e-4, rtol=2e-4)


def _naive_layer0_attention(m: TinyQwen2, ids: torch.Tensor) -> torch.Tensor:
    """Independent DCA formulation for layer 0: logit(p, j) = rope(q_p, d(p, j)) . k_j with the remapped distance."""
    a, dca = m.model.layers[0].self_attn, m.dca
    c, cs = dca.chunk_len, dca.chunk_size
    hs = m.model.layers[0].input_layernorm(m.model.embed_tokens(ids))
    q, k, v = a.q_proj(hs).view(-1, a.h, a.d), a.k_proj(hs).view(-1, a.hkv, a.d), a.v_proj(hs).view(-1, a.hkv, a.d)
    n = ids.shape[0]
    out = torch.zeros(n, a.h, a.d)
    for p in range(n):
        d = []
        for j in range(p + 1):
            stage = min(p // c - j // c, 2)
            qpos = [p % c, min(p % c + c, cs), min(2 * c - 1, cs)][stage]
            d.append(qpos - j % c)
        dist = torch.tensor(d)
        cos, sin = rope_cos_sin(dist, a.d, m.theta)
        qr = apply_rope(q[p].expand(p + 1, -1, -1), cos, sin)  # [p+1, H, D]
        logits = (qr * k[: p + 1].repeat_interleave(a.h // a.hkv, 1)).sum(-1) * m.sm_scale  # [p+1, H]
        logits = logits * float(yarn_logit_scale(torch.tensor([n]), dca)[0])
        w = logits.softmax(0)
        out[p] = (w[..., None] * v[: p + 1].repeat_interleave(a.h // a.hkv, 1)).sum(0)
    return out


def test_dca_attention_matches_independent_distance_formulation() -> None:
    cfg = tiny_config(seq_len=32, local=8)  # chunk_len 24; 80 tokens = 3.3 chunks: intra, succ and inter
    m = random_model(cfg)
    ids = torch.randint(0, 700, (80,))
    a = m.model.layers[0].self_attn
    with torch.no_grad():
        hs = m.model.layers[0].input_layernorm(m.model.embed_tokens(ids))
        q = a.q_proj(hs).view(80, a.h, a.d)
        k_raw, v = a.k_proj(hs).view(80, a.hkv, a.d), a.v_proj(hs).view(80, a.hkv, a.d)
        kpos = dca_positions(torch.arange(80), m.dca)["k"]
        k = apply_rope(k_raw, *rope_cos_sin(kpos, a.d, m.theta))
        got = m._attend(q, k_raw, k, v, torch.arange(80), scale_len=80, impl="ref")
        want = _naive_layer0_attention(m, ids)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_dca_forward_far_past_chunk_is_finite_and_differs_from_rope() -> None:
    cfg = tiny_config(seq_len=64, local=8)
    ids = torch.randint(0, 700, (3 * 64,)).tolist()
    dca_logits, cache = random_model(cfg).prefill(ids)  # blocked DCA path
    ref_logits, _ = random_model(cfg).prefill(ids, impl="ref")
    rope_logits, _ = random_model(cfg, use_dca=False).prefill(ids)
    assert torch.isfinite(dca_logits).all() and len(cache) == 2 and cache[0][0].shape == (192, 1, 128)
    torch.testing.assert_close(dca_logits, ref_logits, atol=2e-4, rtol=2e-4)
    assert not torch.allclose(dca_logits, rope_logits, atol=1e-3)


def test_training_forward_with_dca_matches_reference_and_has_gradients() -> None:
    """The differentiable blocked DCA (training augmentation) equals the fp32 reference path."""
    cfg = tiny_config(seq_len=32, local=8)  # 100 tokens = 4+ chunks of 24
    m = random_model(cfg)
    ids = torch.randint(0, 700, (2, 100))
    logits = m(ids, dca=m.dca)
    for b in range(2):
        ref, _ = m.prefill(ids[b].tolist(), impl="ref")
        torch.testing.assert_close(logits[b, -1].detach(), ref, atol=2e-4, rtol=2e-4)
    logits[:, -1].sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_dca_augmentation_draws_shorter_chunks() -> None:
    from sgl_qwen1m.model.train import _dca_augmentation

    rng = random.Random(0)
    cfgs = [_dca_augmentation(rng, 4096, 0.5) for _ in range(200)]
    used = [c for c in cfgs if c is not None]
    assert 60 < len(used) < 140
    assert all(256 <= c.chunk_size <= 4096 / 1.5 and c.local_size == c.chunk_size // 8 for c in used)
    assert _dca_augmentation(rng, 4096, 0.0) is None


@pytest.mark.parametrize("use_dca", [True, False])
def test_kv_cache_decode_equals_full_prefill(use_dca: bool) -> None:
    cfg = tiny_config(seq_len=32, local=8, orig=0)  # YaRN off, so prefill and decode use the same logit scale
    m = random_model(cfg, use_dca=use_dca)
    ids = torch.randint(0, 700, (90,)).tolist()
    full, _ = m.prefill(ids)
    part, cache = m.prefill(ids[:-3])
    for t in ids[-3:]:
        part = m.decode(t, cache)
    torch.testing.assert_close(part, full, atol=2e-4, rtol=2e-4)


def test_generate_stops_at_eos() -> None:
    m = random_model(tiny_config())
    with torch.no_grad():
        m.model.embed_tokens.weight[EOS_ID] *= 50  # make EOS the argmax
    assert m.generate([5, 6, 7], max_new_tokens=5)[-1] == EOS_ID


def test_save_load_round_trip_matches_transformers(tmp_path: Path) -> None:
    """Weights use HF names; transformers' Qwen2ForCausalLM computes the same logits as the torch model."""
    cfg = tiny_config()
    write_model_dir(tmp_path, cfg)
    m = random_model(cfg)
    m.save_weights(tmp_path)
    loaded = TinyQwen2.from_pretrained(tmp_path)
    ids = torch.randint(0, 700, (1, 40))
    ours = loaded(ids)
    transformers = pytest.importorskip("transformers")
    hf = transformers.Qwen2ForCausalLM.from_pretrained(str(tmp_path), dtype=torch.float32).eval()
    with torch.no_grad():
        theirs = hf(ids).logits
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


def test_training_smoke_reduces_loss(tmp_path: Path) -> None:
    from sgl_qwen1m.cli import main

    main(
        [
            "train",
            "--out",
            str(tmp_path),
            "--steps",
            "40",
            "--seq-len",
            "160",
            "--device",
            "cpu",
            "--tokens-per-step",
            "1280",
            "--tasks",
            "passkey,niah_single",
            "--layers",
            "2",
            "--intermediate",
            "64",
            "--log-every",
            "10",
            "--eval-samples",
            "1",
            "--lr",
            "3e-3",
        ]
    )
    # training flushes subnormal floats for speed, but must give the process its default back (hypothesis and any
    # later float code rely on subnormals)
    assert (torch.tensor([1e-40], dtype=torch.float32) * 1.0).item() != 0.0
    meta = json.loads((tmp_path / "training_args.json").read_text())
    losses = [e["loss"] for e in meta["log"]]
    assert losses[-1] < 0.8 * losses[0], losses
    assert (tmp_path / "model.safetensors").is_file() and meta["final"]
    TinyQwen2.from_pretrained(tmp_path)
