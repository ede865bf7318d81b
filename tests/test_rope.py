"""DCA RoPE: the fp32 oracle against plain RoPE at the DCA positions (CPU), and the Triton kernel against the oracle
and against SGLang's own ``DualChunkRotaryEmbedding`` (GPU; skips without CUDA)."""

from __future__ import annotations

import pytest
import torch

from sgl_qwen1m.ops.dca.plan import DCARopeCaches, dca_positions
from sgl_qwen1m.ops.dca.reference import dca_rope_ref
from sgl_qwen1m.config import DCAConfig
from triton_interp import run_in_triton_interpreter

VARIANTS = ("q_intra", "q_succ", "q_inter", "q_succ_critical", "q_inter_critical")


def _plain_rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Textbook NeoX RoPE in float64: ``x`` ``[T, heads, D]`` rotated by ``pos`` ``[T]``."""
    d = x.shape[-1]
    inv = 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = pos.double()[:, None] * inv[None, :]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]
    x1, x2 = x.double()[..., : d // 2], x.double()[..., d // 2 :]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), -1)


@pytest.mark.parametrize("chunk_size,local_size", [(16, 4), (40, 8), (64, 63)])
def test_rope_ref_is_plain_rope_at_dca_positions(chunk_size, local_size):
    cfg = DCAConfig(chunk_size=chunk_size, local_size=local_size)
    t, h, hkv, d = 3 * chunk_size + 5, 3, 1, 16
    caches = DCARopeCaches.build(d, 4 * chunk_size, 500.0, cfg)
    pos = torch.arange(t)
    q, k = torch.randn(t, h * d), torch.randn(t, hkv * d)
    q5, ko = dca_rope_ref(pos, q, k, caches, d)
    want = dca_positions(pos, cfg)
    q5 = q5.view(t, 5, h, d)
    for v, name in enumerate(VARIANTS):
        torch.testing.assert_close(q5[:, v].double(), _plain_rope(q.view(t, h, d), want[name], 500.0), atol=2e-5, rtol=0)
    torch.testing.assert_close(ko.view(t, hkv, d).double(), _plain_rope(k.view(t, hkv, d), want["k"], 500.0), atol=2e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("t", [1, 63, 64, 65, 4097])
@pytest.mark.parametrize("h,hkv", [(28, 4), (2, 1), (40, 8)])
def test_dca_rope_kernel_matches_oracle(t, h, hkv):
    from sgl_qwen1m.ops.dca.rope import dca_rope

    cfg = DCAConfig(chunk_size=2048, local_size=256)
    d = 128
    caches = DCARopeCaches.build(d, 3 * 2048, 1e7, cfg, dtype=torch.bfloat16, device="cuda")
    pos = torch.randint(0, 3 * 2048, (t,), device="cuda")
    qkv = torch.randn(t, (h + 2 * hkv) * d, device="cuda", dtype=torch.bfloat16)  # strided views, as in Qwen2
    q, k = qkv[:, : h * d], qkv[:, h * d : (h + hkv) * d]
    q5, ko = dca_rope(pos, q, k, caches, d)
    rq, rk = dca_rope_ref(pos, q, k, caches, d)
    for out, ref in ((q5, rq), (ko, rk)):
        err = ((out.float() - ref).norm() / ref.norm()).item()
        print(f"t={t} h={h} hkv={hkv} rel_rms={err:.2e}")
        assert err <= 4e-3


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_rope_matches_sglang_module():
    """The installed fast path computes what SGLang's DualChunkRotaryEmbedding computes (same caches)."""
    rope_variant = pytest.importorskip("sglang.srt.layers.rotary_embedding.rope_variant")
    from sgl_qwen1m.adapter.rope import install_fused_dca_rope

    h, hkv, d = 28, 4, 128
    m = rope_variant.DualChunkRotaryEmbedding(d, d, 20000, 1e7, True, torch.bfloat16, chunk_size=4096, local_size=512)
    model = torch.nn.Sequential(m)
    pos = torch.randint(0, 20000, (300,), device="cuda")
    q = torch.randn(300, h * d, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(300, hkv * d, device="cuda", dtype=torch.bfloat16)
    ref_q, ref_k = m(pos, q.clone(), k.clone())
    assert install_fused_dca_rope(model) == 1
    out_q, out_k = m(pos, q, k)
    for out, ref in ((out_q, ref_q), (out_k, ref_k)):
        assert out.shape == ref.shape
        err = ((out.float() - ref.float()).norm() / ref.float().norm()).item()
        print(f"fused vs SGLang module rel_rms={err:.2e}")
        assert err <= 1e-2


_INTERPRET_CHECK = r"""
import torch
from sgl_qwen1m.ops.dca.plan import DCARopeCaches
from sgl_qwen1m.ops.dca.rope import dca_rope
from sgl_qwen1m.ops.dca.reference import dca_rope_ref
from sgl_qwen1m.config import DCAConfig
caches = DCARopeCaches.build(128, 200, 1e4, DCAConfig(chunk_size=64, local_size=8))
for t, h, hkv in ((1, 2, 1), (5, 28, 4), (17, 3, 1)):
    pos = torch.randint(0, 200, (t,))
    qkv = torch.randn(t, (h + 2 * hkv) * 128)
    q, k = qkv[:, : h * 128], qkv[:, h * 128 : (h + hkv) * 128]
    q5, ko = dca_rope(pos, q, k, caches, 128)
    rq, rk = dca_rope_ref(pos, q, k, caches, 128)
    assert q5.shape == rq.shape and ko.shape == rk.shape
    assert torch.allclose(q5, rq, atol=1e-5) and torch.allclose(ko, rk, atol=1e-5), (t, h, hkv)
print("ok")
"""


def test_dca_rope_kernel_in_triton_interpreter():
    """The Triton kernel itself, run on the CPU by Triton's interpreter, against the fp32 oracle."""
    run_in_triton_interpreter(_INTERPRET_CHECK)
