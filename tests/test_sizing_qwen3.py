"""The memory planner on Qwen3-MoE shapes and FP8 KV, against the issue's arithmetic done by hand."""

from __future__ import annotations

from pathlib import Path

import pytest

from sgl_qwen1m.api import MODELS, plan_memory_for, resolve_model
from sgl_qwen1m.sizing import QWEN3_30B_A3B, QWEN3_235B_A22B, QWEN25_7B, QWEN25_14B, ModelShape

MODELS_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "models"


def test_qwen3_30b_a3b_weights_by_hand():
    # per layer: attention 2048*(4096 + 2*512) + 4096*2048 = 18,874,368; router 2048*128 = 262,144;
    # 128 experts * 3*2048*768 = 603,979,776; norms 2*2048 + qk-norm 2*128 = 4,352 -> 623,120,640 x 48 layers
    # = 29,909,790,720 (the card: 29.9B non-embedding); embedding + LM head 2*151,936*2048 = 622,329,856; final norm 2048
    assert QWEN3_30B_A3B.num_params == 29_909_790_720 + 622_329_856 + 2048 == 30_532_122_624  # card: 30.5B
    assert QWEN3_30B_A3B.weight_bytes() == 61_064_245_248  # ~61 GB in bf16
    # FLOPs use only the 8 active experts: 2 * 48 * (18,874,368 + 262,144 + 8*3*2048*768) = 5.46 GFLOP/token
    assert QWEN3_30B_A3B.linear_flops_per_token == 2 * 48 * (18_874_368 + 262_144 + 37_748_736)


def test_qwen3_235b_weights_by_hand():
    # attention 4096*(8192 + 1024) + 8192*4096 = 71,303,168; router 524,288; experts 128*3*4096*1536 = 2,415,919,104
    per_layer = 71_303_168 + 524_288 + 2_415_919_104 + 2 * 4096 + 2 * 128
    assert QWEN3_235B_A22B.num_params == 94 * per_layer + 2 * 151_936 * 4096 + 4096  # 235.1B
    assert round(QWEN3_235B_A22B.weight_bytes() / 1e9) == 470


@pytest.mark.parametrize("shape,bf16", [
    (QWEN3_30B_A3B, 48 * 4 * 128 * 2 * 2),   # 98,304 B: ~98 GB at 1M in bf16, ~49 GB in FP8
    (QWEN25_14B, 48 * 8 * 128 * 2 * 2),      # 196,608 B: ~197 GB at 1M in bf16, ~98 GB in FP8
    (QWEN25_7B, 28 * 4 * 128 * 2 * 2),       # 57,344 B: ~28.7 GB FP8 at 1M
    (QWEN3_235B_A22B, 94 * 4 * 128 * 2 * 2), # 192,512 B
])
def test_kv_bytes_per_token_bf16_and_fp8(shape, bf16):
    assert shape.kv_bytes_per_token(2) == bf16 and shape.kv_bytes_per_token(1) == bf16 // 2


def test_issue_totals_at_1m():
    assert round(QWEN3_30B_A3B.kv_bytes_per_token(2) * 1_000_000 / 1e9) == 98
    assert round(QWEN3_30B_A3B.kv_bytes_per_token(1) * 1_000_000 / 1e9) == 49
    assert round(QWEN25_14B.kv_bytes_per_token(1) * 1_000_000 / 1e9) == 98
    assert round(QWEN25_14B.weight_bytes() / 1e9, 1) == 29.5
    assert round((QWEN25_7B.weight_bytes() + QWEN25_7B.kv_bytes_per_token(1) * 1_000_000) / 1e9) == 44


def test_shape_dirs_match_the_named_models():
    for d, name in (("qwen3-30b-a3b-instruct-2507-1m-shape", "qwen3-30b-a3b-2507"),
                    ("qwen3-30b-a3b-thinking-2507-1m-shape", "qwen3-30b-a3b-2507"),
                    ("qwen3-235b-a22b-instruct-2507-1m-shape", "qwen3-235b-a22b-2507")):
        assert ModelShape.from_dir(MODELS_DIR / d) == MODELS[name].shape
        assert resolve_model(MODELS_DIR / d).max_position_embeddings == 1_010_000
    assert resolve_model("Qwen/Qwen3-30B-A3B-Instruct-2507") is MODELS["qwen3-30b-a3b-2507"]


def test_one_h200_qwen3_30b_a3b():
    """bf16 KV: 1M does not fit one H200 (56.9 GiB weights + 91.9 GiB KV); FP8 KV would (arithmetic only)."""
    assert not plan_memory_for(1_000_000, "qwen3-30b-a3b-2507", gpu_gib="h200").fits
    assert plan_memory_for(1_000_000, "qwen3-30b-a3b-2507", gpu_gib="h200", kv_dtype="fp8").fits
    assert plan_memory_for(700_000, "qwen3-30b-a3b-2507", gpu_gib="h200").fits
