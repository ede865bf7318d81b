"""The fused DCA RoPE replacement against every model family SGLang wires Dual Chunk Attention into.

CPU: the installed SGLang's call sites of ``self.rotary_emb(...)`` (read with ``ast``) bind to the replacement's
signature; ``DualChunkRotaryEmbedding.forward`` has a known signature; the fallback path honours
``fused_set_kv_buffer_arg``; the Triton kernel's KV-pool write runs in Triton's interpreter (bf16-class and FP8
buffers); SGLang still gives an FP8 pool's write to the backend. GPU (skips without CUDA): per family, SGLang's real
module with the family's shape and exact call, against the fp32 oracle.
"""

from __future__ import annotations

import ast
import functools
import inspect
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sgl_qwen1m.ops.dca.plan import DCARopeCaches
from sgl_qwen1m.ops.dca.reference import dca_rope_ref

rope_variant = pytest.importorskip("sglang.srt.layers.rotary_embedding.rope_variant")
DCR = rope_variant.DualChunkRotaryEmbedding

from sgl_qwen1m.adapter.rope import fused_forward, forward_signature_known, install_fused_dca_rope  # noqa: E402
from triton_interp import run_in_triton_interpreter

# Model files of SGLang 0.5.17 whose attention builds its RoPE with get_rope(..., dual_chunk_attention_config=...).
DCA_FAMILIES = {"qwen2", "qwen2_moe", "qwen3_moe", "glm4"}


def _models_dir() -> Path:
    import sglang

    return Path(sglang.__file__).parent / "srt" / "models"


def _tree(family: str) -> ast.Module:
    return ast.parse((_models_dir() / f"{family}.py").read_text())


def _wires_dca(tree: ast.Module) -> bool:
    return any(
        isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", None)) == "get_rope"
        and any(kw.arg == "dual_chunk_attention_config" for kw in n.keywords)
        for n in ast.walk(tree)
    )


def _rotary_calls(tree: ast.Module) -> list[ast.Call]:
    return [
        n for n in ast.walk(tree)
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "rotary_emb"
        and isinstance(n.func.value, ast.Name) and n.func.value.id == "self"
    ]


def test_dca_wired_families_are_the_known_ones():
    """A family SGLang newly wires DCA into must be added here (and to the GPU tests)."""
    wired = {p.stem for p in _models_dir().glob("*.py") if "dual_chunk" in p.read_text() and _wires_dca(ast.parse(p.read_text()))}
    assert wired == DCA_FAMILIES, f"SGLang's DCA-wired model files changed: {sorted(wired)}"


def test_dca_forward_signature_is_known():
    assert forward_signature_known(DCR), inspect.signature(DCR.forward)
    # SGLang's own forward cannot take the fused KV write qwen3_moe asks for: the replacement must handle it.
    assert "fused_set_kv_buffer_arg" not in inspect.signature(DCR.forward).parameters


@pytest.mark.parametrize("family", sorted(DCA_FAMILIES))
def test_call_sites_bind_to_replacement(family):
    """Every ``self.rotary_emb(...)`` call in the family's model file binds to ``fused_forward(module, caches, ...)``."""
    calls = _rotary_calls(_tree(family))
    assert calls, f"{family}.py: no self.rotary_emb(...) call found"
    sig = inspect.signature(fused_forward)
    kws = set()
    for c in calls:
        assert not any(isinstance(a, ast.Starred) for a in c.args), f"{family}.py:{c.lineno}: *args call"
        assert all(kw.arg is not None for kw in c.keywords), f"{family}.py:{c.lineno}: **kwargs call"
        sig.bind(None, None, *[None] * len(c.args), **{kw.arg: None for kw in c.keywords})
        kws |= {kw.arg for kw in c.keywords}
    if family == "qwen3_moe":
        assert "fused_set_kv_buffer_arg" in kws


def _cpu_module(head=128, rotary=128, chunk=64, local=8, max_pos=400, neox=True) -> torch.nn.Module:
    """SGLang's real DualChunkRotaryEmbedding built on the CPU (its __init__ insists on a CUDA device)."""
    m = DCR.__new__(DCR)
    rope_variant.MultiPlatformOp.__init__(m)
    m.head_size, m.rotary_dim, m.max_position_embeddings, m.base = head, rotary, max_pos, 1e4
    m.is_neox_style, m.chunk_size, m.local_size, m.dtype, m.device = neox, chunk, local, torch.float32, torch.device("cpu")
    for name, buf in zip(("q", "qc", "k", "qc_no_clamp", "q_inter"), m._compute_cos_sin_cache()):
        m.register_buffer(f"cos_sin_{name}_cache", buf, persistent=False)
    return m


def _caches(m) -> DCARopeCaches:
    return DCARopeCaches(q=m.cos_sin_q_cache, qc=m.cos_sin_qc_cache, k=m.cos_sin_k_cache,
                         qc_no_clamp=m.cos_sin_qc_no_clamp_cache, q_inter=m.cos_sin_q_inter_cache,
                         chunk_len=m.chunk_size - m.local_size)


def _rows(buf: torch.Tensor, loc: torch.Tensor) -> torch.Tensor:
    """Rows of a pool as float32 (FP8 pools through their bytes: CPU index kernels skip float8)."""
    if buf.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return buf.view(torch.uint8)[loc].view(buf.dtype).float()
    return buf[loc].float()


@pytest.mark.parametrize("pool_dtype", [torch.float32, torch.float8_e4m3fn])
def test_fallback_path_honours_fused_kv_write(pool_dtype):
    """qwen3_moe's call on the fallback path (CPU tensors): SGLang's rotation, then K and V stored at cache_loc
    (an FP8 buffer gets the scale-1.0 cast, byte for byte what ``tensor.to(fp8)`` gives)."""
    m = _cpu_module()
    with pytest.raises(TypeError):  # what every qwen3_moe forward hit before this replacement
        m(torch.arange(3), torch.randn(3, 256), torch.randn(3, 128), fused_set_kv_buffer_arg=None)
    assert install_fused_dca_rope(torch.nn.Sequential(m)) == 1
    t, h, hkv, d = 9, 2, 1, 128
    pos = torch.randint(0, 400, (t,))
    qkv = torch.randn(t, (h + 2 * hkv) * d)
    q, k, v = qkv[:, : h * d], qkv[:, h * d : (h + hkv) * d], qkv[:, (h + hkv) * d :]
    arg = SimpleNamespace(value=v, k_buffer=torch.zeros(32, hkv * d).to(pool_dtype),
                          v_buffer=torch.zeros(32, hkv * d).to(pool_dtype), cache_loc=torch.randperm(32)[:t])
    q5, ko = m(pos, q, k, fused_set_kv_buffer_arg=arg)
    rq, rk = dca_rope_ref(pos, q, k, _caches(m), d)
    torch.testing.assert_close(q5, rq, atol=1e-5, rtol=0)
    torch.testing.assert_close(ko, rk, atol=1e-5, rtol=0)
    torch.testing.assert_close(_rows(arg.k_buffer, arg.cache_loc), ko.to(pool_dtype).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(_rows(arg.v_buffer, arg.cache_loc), v.to(pool_dtype).float())
    rest = torch.ones(32, dtype=torch.bool)
    rest[arg.cache_loc] = False
    assert not _rows(arg.k_buffer, rest).any() and not _rows(arg.v_buffer, rest).any()
    q5b, kob = m(pos, q, k)  # qwen2 / qwen2_moe / glm4 call
    torch.testing.assert_close(q5b, q5)
    torch.testing.assert_close(kob, ko)


def test_partial_rotary_and_gptj_keep_sglang_forward():
    """glm4's DCA RoPE (GPT-J style, partial rotary) is not replaced: SGLang's forward stays."""
    m = _cpu_module(rotary=64, neox=False)
    assert install_fused_dca_rope(torch.nn.Sequential(m)) == 0
    assert "forward" not in vars(m)


def test_unknown_signature_keeps_sglang_forward(monkeypatch):
    def forward(self, positions, query, key, offsets=None, something_new=None):
        return query, key

    monkeypatch.setattr(DCR, "forward", forward)
    m = _cpu_module()
    assert install_fused_dca_rope(torch.nn.Sequential(m)) == 0
    assert "forward" not in vars(m)


def test_fused_qk_norm_rope_bypass_is_refused():
    attn = torch.nn.Module()
    attn.rotary_emb = _cpu_module()
    attn.use_fused_qk_norm_rope = True
    with pytest.raises(ValueError, match="enable-fused-qk-norm-rope"):
        install_fused_dca_rope(attn)


_INTERPRET_KV = r"""
import torch
from types import SimpleNamespace
from sgl_qwen1m.ops.dca.plan import DCARopeCaches
from sgl_qwen1m.ops.dca.rope import dca_rope
from sgl_qwen1m.ops.dca.reference import dca_rope_ref
from sgl_qwen1m.config import DCAConfig
caches = DCARopeCaches.build(128, 200, 1e4, DCAConfig(chunk_size=64, local_size=8))
fp8 = torch.float8_e4m3fn
for t, h, hkv, dt in ((1, 2, 1, torch.float32), (6, 32, 4, torch.float32), (6, 8, 2, fp8)):
    pos = torch.randint(0, 200, (t,))
    qkv = torch.randn(t, (h + 2 * hkv) * 128).to(dt).float()  # fp8 cases: values exactly representable in e4m3
    q, k, v = qkv[:, : h * 128], qkv[:, h * 128 : (h + hkv) * 128], qkv[:, (h + hkv) * 128 :]
    arg = SimpleNamespace(value=v, k_buffer=torch.zeros(16, hkv * 128).to(dt), v_buffer=torch.zeros(16, hkv * 128).to(dt),
                          cache_loc=torch.randperm(16)[:t])
    q5, ko = dca_rope(pos, q, k, caches, 128, kv_write=arg)
    rq, rk = dca_rope_ref(pos, q, k, caches, 128)
    assert torch.allclose(q5, rq, atol=1e-5) and torch.allclose(ko, rk, atol=1e-5), (t, h, hkv)
    kb, vb = arg.k_buffer.float(), arg.v_buffer.float()
    if dt == fp8:
        # Triton 3.6's interpreter rounds fp32 -> fp8 wrongly when rounding carries into the exponent (0.4927 ->
        # 0.25, 500 -> 256; GPUs use cvt.rn.satfinite), so here: V exactly representable (the cast is exact),
        # K checked within e4m3's half ulp where correct rounding does not carry. The full cast is a GPU test.
        want = rk.to(fp8).float()
        carry = (want.abs() > rk.abs()) & (torch.frexp(want)[0].abs() == 0.5)
        got = kb[arg.cache_loc]
        assert torch.allclose(got[~carry], rk[~carry], rtol=2 ** -4 + 1e-3, atol=2 ** -9), (t, h, hkv)
        assert torch.equal(vb[arg.cache_loc], v), (t, h, hkv)
    else:
        assert torch.allclose(kb[arg.cache_loc], rk, atol=1e-5), (t, h, hkv)
        assert torch.equal(vb[arg.cache_loc], v), (t, h, hkv)
    assert int((kb.abs().sum(1) > 0).sum()) == t
print("ok")
"""


def test_dca_rope_kv_write_in_triton_interpreter():
    run_in_triton_interpreter(_INTERPRET_KV)


def test_sglang_gives_fp8_pool_writes_to_the_backend():
    """On CUDA, SGLang passes ``fused_set_kv_buffer_arg`` only for a bf16 pool, so with ``--kv-cache-dtype fp8_*``
    qwen3_moe calls attention with ``save_kv_cache=True`` and ``qwen1m``'s ``set_kv_buffer`` quantises with the
    layer's k/v scales. Fails when an upstream change lets the fused write reach an FP8 pool (the fused write has
    no scale: re-check ``ops/dca/rope.py`` then)."""
    import sglang

    src = (Path(sglang.__file__).parent / "srt" / "models" / "utils.py").read_text()
    fn = next(n for n in ast.walk(ast.parse(src)) if isinstance(n, ast.FunctionDef)
              and n.name == "enable_fused_set_kv_buffer")
    body = ast.get_source_segment(src, fn)
    assert "_is_cuda" in body and "pool.dtype == torch.bfloat16" in body, body


# ------------------------------------------------------------------------------------------------------ GPU

# family, query heads, KV heads, qk-norm before RoPE, passes fused_set_kv_buffer_arg
GPU_FAMILIES = [
    ("qwen2-7b-1m", 28, 4, False, False),
    ("qwen2-14b-1m", 40, 8, False, False),
    ("qwen2_moe-57b-a14b", 28, 4, False, False),
    ("qwen3_moe-30b-a3b", 32, 4, True, True),
    ("qwen3_moe-235b-a22b", 64, 4, True, True),
]


def _rms_norm_heads(x: torch.Tensor, w: torch.Tensor, d: int, eps: float = 1e-6) -> torch.Tensor:
    """Qwen3's per-head q/k RMSNorm (as SGLang's ``apply_qk_norm``), fp32 inside, bf16 out, contiguous."""
    xf = x.float().reshape(x.shape[0], -1, d)
    y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps) * w.float()
    return y.to(x.dtype).reshape(x.shape[0], -1)


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.float() - ref.float()).norm() / ref.float().norm()).item()


@functools.lru_cache(maxsize=1)
def _gpu_module():
    """One bf16 module at the shipped 1M settings (rope_theta 1e7 for Qwen2.5-1M and Qwen3-2507), shared by the cases."""
    return DCR(128, 128, 1010000, 1e7, True, torch.bfloat16, chunk_size=262144, local_size=8192)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("family,h,hkv,qk_norm,kv_arg", GPU_FAMILIES, ids=[f[0] for f in GPU_FAMILIES])
@pytest.mark.parametrize("t", [1, 257, 4096])
def test_family_rope_matches_oracle(family, h, hkv, qk_norm, kv_arg, t):
    """SGLang's real module at the 1M config (chunk 262144, local 8192, 1,010,000 positions), the family's call."""
    d, n_slots = 128, 8192
    m = _gpu_module()
    assert install_fused_dca_rope(torch.nn.Sequential(m)) == 1
    g = torch.Generator(device="cuda").manual_seed(t + h)
    pos = torch.randint(0, 1010000, (t,), device="cuda", generator=g)
    qkv = torch.randn(t, (h + 2 * hkv) * d, device="cuda", dtype=torch.bfloat16, generator=g)
    q, k, v = qkv.split([h * d, hkv * d, hkv * d], dim=-1)
    if qk_norm:
        wq = 1 + 0.1 * torch.randn(d, device="cuda", generator=g)
        wk = 1 + 0.1 * torch.randn(d, device="cuda", generator=g)
        q, k = _rms_norm_heads(q, wq, d), _rms_norm_heads(k, wk, d)
    ref_q, ref_k = dca_rope_ref(pos, q, k, _caches(m), d)
    sgl_q, sgl_k = type(m).forward(m, pos, q.clone(), k.clone())
    if kv_arg:
        kb = torch.zeros(n_slots, hkv * d, device="cuda", dtype=torch.bfloat16)
        vb = torch.zeros_like(kb)
        loc = torch.randperm(n_slots, device="cuda", generator=g)[:t]
        try:
            from sglang.kernels.ops.attention.rope import FusedSetKVBufferArg as Arg
        except ImportError:
            Arg = SimpleNamespace
        arg = Arg(value=v, k_buffer=kb, v_buffer=vb, cache_loc=loc)
        out_q, out_k = m(pos, q, k, fused_set_kv_buffer_arg=None)  # qwen3_moe's call when the pool is not bf16
        q2, k2 = m(pos, q, k, fused_set_kv_buffer_arg=arg)
        assert torch.equal(q2, out_q) and torch.equal(k2, out_k)
        assert _rel(kb[loc], ref_k) <= 4e-3 and torch.equal(vb[loc], v)
        assert int((kb.abs().sum(1) > 0).sum()) == t and int((vb.abs().sum(1) > 0).sum()) == t
    else:
        out_q, out_k = m(pos, q, k)
    errs = {"q_vs_oracle": _rel(out_q, ref_q), "k_vs_oracle": _rel(out_k, ref_k),
            "q_vs_sglang": _rel(out_q, sgl_q), "k_vs_sglang": _rel(out_k, sgl_k)}
    print(f"{family} t={t} " + " ".join(f"{k_}={e:.2e}" for k_, e in errs.items()))
    assert out_q.shape == (t, 5 * h * d) and out_k.shape == (t, hkv * d)
    assert errs["q_vs_oracle"] <= 4e-3 and errs["k_vs_oracle"] <= 4e-3
    assert errs["q_vs_sglang"] <= 1e-2 and errs["k_vs_sglang"] <= 1e-2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_kv_write_into_fp8_pool():
    """Should SGLang ever hand the fused write an FP8 pool (it does not in 0.5.17): the kernel's scale-1.0 cast
    (cvt.rn.satfinite) gives V byte for byte as ``tensor.to(fp8)``, and K within e4m3's rounding of the oracle."""
    d, n_slots, t, h, hkv = 128, 4096, 300, 32, 4
    m = _gpu_module()
    assert install_fused_dca_rope(torch.nn.Sequential(m)) == 1
    g = torch.Generator(device="cuda").manual_seed(5)
    pos = torch.randint(0, 1010000, (t,), device="cuda", generator=g)
    q, k, v = (torch.randn(t, (h + 2 * hkv) * d, device="cuda", dtype=torch.bfloat16, generator=g) * 3).split(
        [h * d, hkv * d, hkv * d], dim=-1)
    k = k.clone()
    k[0, :4] = torch.tensor([500.0, -1000.0, 0.4927, 447.9])  # saturation and a binade carry
    kb = torch.zeros(n_slots, hkv * d, device="cuda", dtype=torch.float8_e4m3fn)
    vb = torch.zeros_like(kb)
    loc = torch.randperm(n_slots, device="cuda", generator=g)[:t]
    arg = SimpleNamespace(value=v, k_buffer=kb, v_buffer=vb, cache_loc=loc)
    m(pos, q, k, fused_set_kv_buffer_arg=arg)
    _, ref_k = dca_rope_ref(pos, q, k, _caches(m), d)
    got_k = _rows(kb, loc)
    assert torch.isfinite(got_k).all() and float(got_k.abs().max()) <= 448.0
    assert _rel(got_k, ref_k.clamp(-448, 448)) <= 0.05
    assert torch.equal(vb.view(torch.uint8)[loc], v.to(torch.float8_e4m3fn).view(torch.uint8))
