"""The one YaRN function, ``sgl_qwen1m.ops.dca.plan.yarn_logit_scale``: logit multiplier ``s**2`` with
``s = max(1, 0.1 ln(L / L_train) + 1)`` per request (float32 tensor in, float32 tensor out)."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sgl_qwen1m.config import DCAConfig
from sgl_qwen1m.ops.dca.plan import yarn_logit_scale

QWEN_1M = {"chunk_size": 262144, "local_size": 8192, "original_max_position_embeddings": 262144}


def _mult(seq_len: int, cfg: DCAConfig) -> float:
    """``yarn_logit_scale`` of one length, as a Python float."""
    return float(yarn_logit_scale(torch.tensor([seq_len]), cfg)[0])


def _want(seq_len: int, orig: int) -> float:
    """The float64 formula: ``s**2``, 1 when YaRN is off (``orig <= 0``) or ``seq_len <= orig``."""
    if orig <= 0 or seq_len <= orig:
        return 1.0
    return max(1.0, 0.1 * math.log(seq_len / orig) + 1.0) ** 2


_YARN_TABLE = [  # L, s = sqrt(1/t), logit multiplier s**2   (qwen1m-method.md §1.3)
    (262_144, 1.0, 1.0),
    (524_288, 1.069, 1.143),
    (1_010_000, 1.135, 1.288),
    (1_048_576, 1.139, 1.297),
]


@pytest.mark.parametrize("L,s,mult", _YARN_TABLE)
def test_yarn_research_table(L, s, mult):
    cfg = DCAConfig(**QWEN_1M)
    assert _mult(L, cfg) == pytest.approx(mult, abs=6e-4)
    assert math.sqrt(_mult(L, cfg)) == pytest.approx(s, abs=6e-4)
    assert _mult(L, cfg) == pytest.approx(_want(L, 262_144), rel=1e-6)


def test_yarn_exact_values():
    cfg = DCAConfig(**QWEN_1M)
    assert _mult(524_288, cfg) == pytest.approx((1 + 0.1 * math.log(2)) ** 2, rel=1e-6)
    assert _mult(1_048_576, cfg) == pytest.approx((1 + 0.1 * math.log(4)) ** 2, rel=1e-6)
    for L in (0, 1, 4096, 262_143, 262_144):
        assert _mult(L, cfg) == 1.0
    assert _mult(262_145, cfg) > 1.0


def test_yarn_disabled_when_orig_is_zero_or_no_config():
    cfg = DCAConfig(262144, 8192, 0)
    lens = torch.tensor([1, 262_144, 1_048_576, 10**9])
    assert torch.equal(yarn_logit_scale(lens, cfg), torch.ones(4))
    assert torch.equal(yarn_logit_scale(lens, None), torch.ones(4))


@given(a=st.integers(0, 10**8), b=st.integers(0, 10**8), orig=st.integers(1, 10**6))
def test_yarn_monotone_and_at_least_one(a, b, orig):
    cfg = DCAConfig(orig + 1, 0, orig)
    lo, hi = yarn_logit_scale(torch.tensor(sorted((a, b))), cfg).tolist()
    assert 1.0 <= lo <= hi


@given(
    lens=st.lists(st.integers(0, 4 * 10**6), min_size=1, max_size=16),
    orig=st.sampled_from([0, 1, 4096, 32768, 262144]),
)
def test_yarn_logit_scale_matches_the_float64_formula(lens, orig):
    cfg = DCAConfig(max(orig, 1) + 8, 8, orig)
    got = yarn_logit_scale(torch.tensor(lens), cfg)
    assert got.dtype == torch.float32 and got.shape == (len(lens),)
    assert torch.isfinite(got).all()  # seq_len 0 must not produce NaN / -inf
    want = torch.tensor([_want(L, orig) for L in lens], dtype=torch.float64)
    torch.testing.assert_close(got.double(), want, rtol=2e-6, atol=0)


def test_yarn_logit_scale_table_values():
    cfg = DCAConfig(**QWEN_1M)
    got = yarn_logit_scale(torch.tensor([100, 262144, 524288, 1010000, 1048576]), cfg)
    torch.testing.assert_close(got, torch.tensor([1.0, 1.0, 1.143, 1.288, 1.297]), atol=1e-3, rtol=0)
