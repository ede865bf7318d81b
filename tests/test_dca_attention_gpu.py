"""DCAAttention (FlashInfer) against the fp32 oracle (needs CUDA + FlashInfer; skips cleanly otherwise).

A fake SGLang KV pool: random K/V in slots, a ``req_to_token`` table mapping request positions to shuffled
slots. Errors are relative RMS ``||out - ref|| / ||ref||``; bf16 must stay <= 1e-2.

FP8 pools (``kv="e4m3"`` / ``"e5m2"``): K/V stored as ``(x / scale).to(fp8)`` (SGLang's ``set_kv_buffer``) with
non-power-of-two per-tensor scales; the oracle runs on the dequantised values, so the bf16 tolerance applies
unchanged (FlashInfer widens FP8 exactly and applies the scales in fp32), and against the unquantised K/V the error
is bounded by the format's rounding: e4m3 (3 mantissa bits, ~3.6% RMS per element) <= 0.06, e5m2 <= 0.12.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import pytest
import torch

pytestmark = pytest.mark.gpu
if not torch.cuda.is_available():
    pytest.skip("needs a CUDA GPU", allow_module_level=True)
flashinfer = pytest.importorskip("flashinfer")

from sgl_qwen1m.ops.dca.attention import DCAAttention  # noqa: E402
from sgl_qwen1m.ops.dca.plan import DCAShape, RequestSpan, plan_extend, yarn_logit_scale  # noqa: E402
from sgl_qwen1m.ops.dca.reference import dca_attention_ref  # noqa: E402
from sgl_qwen1m.config import DCAConfig  # noqa: E402

DEV = torch.device("cuda")
TOL = 1e-2
_WS = {}


def _workspace() -> torch.Tensor:
    if "ws" not in _WS:
        _WS["ws"] = torch.zeros(512 * 1024 * 1024, dtype=torch.uint8, device=DEV)
    return _WS["ws"]


def rel_rms(out: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative RMS error; printed so that ``pytest -rP`` records every measured value."""
    out, ref = out.float(), ref.float()
    assert torch.isfinite(out).all(), "non-finite output"
    err = ((out - ref).norm() / ref.norm()).item()
    print(f"rel_rms={err:.2e} rows={out.shape[0]}")
    return err


FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
FP8_SCALES = (0.0137, 0.021)
FP8_LOOSE = {"e4m3": 0.06, "e5m2": 0.12}


@dataclass
class Pool:
    k: torch.Tensor  # [N, Hkv, D], bf16 or FP8 as stored
    v: torch.Tensor
    req_to_token: torch.Tensor  # [R, max_len] int32
    lens: list[int]
    k_scale: float = 1.0
    v_scale: float = 1.0
    k_ref: Optional[torch.Tensor] = None  # what the oracle reads: the dequantised pool (FP8) or the pool
    v_ref: Optional[torch.Tensor] = None
    k_orig: Optional[torch.Tensor] = None  # FP8: the pool before quantisation
    v_orig: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        self.k_ref = self.k if self.k_ref is None else self.k_ref
        self.v_ref = self.v if self.v_ref is None else self.v_ref


def quantise(pool: Pool, kv: str) -> Pool:
    if kv == "bf16":
        return pool
    ks, vs = FP8_SCALES
    k8, v8 = (pool.k.float() / ks).to(FP8[kv]), (pool.v.float() / vs).to(FP8[kv])
    return Pool(k8, v8, pool.req_to_token, pool.lens, ks, vs, (k8.float() * ks).to(torch.bfloat16),
                (v8.float() * vs).to(torch.bfloat16), pool.k, pool.v)


def kv_shape(h, hkv, d, kv: str) -> DCAShape:
    return DCAShape(h, hkv, d, torch.bfloat16, FP8.get(kv, torch.bfloat16), d**-0.5)


def make_pool(lens: list[int], hkv: int, d: int, share_prefix: int = 0, seed: int = 0) -> Pool:
    """Random KV; request r's positions map to shuffled slots. ``share_prefix`` tokens are shared (radix hit)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    total = sum(lens) - share_prefix * (len(lens) - 1)
    slots = torch.randperm(total + 7, generator=g)[:total] + 1  # slot 0 left unused, as in SGLang
    r2t = torch.zeros(len(lens), max(lens), dtype=torch.int32)
    off = 0
    for r, n in enumerate(lens):
        if r > 0 and share_prefix:
            r2t[r, :share_prefix] = r2t[0, :share_prefix]
            own = n - share_prefix
            r2t[r, share_prefix:n] = slots[off : off + own].int()
            off += own
        else:
            r2t[r, :n] = slots[off : off + n].int()
            off += n
    n_slots = total + 8
    k = torch.randn(n_slots, hkv, d, generator=g).to(torch.bfloat16)
    v = torch.randn(n_slots, hkv, d, generator=g).to(torch.bfloat16)
    return Pool(k.to(DEV), v.to(DEV), r2t.to(DEV), lens)


def run_case(cfg, spans, h, hkv, d=128, share_prefix=0, orig_lens=None, seed=0, sample_rows=None, kv="bf16",
             unquantised=False):
    lens = [s.seq_len for s in spans]
    pool = quantise(make_pool(lens, hkv, d, share_prefix, seed), kv)
    t = sum(s.extend_len for s in spans)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    q5 = torch.randn(t, 5, h, d, generator=g).to(torch.bfloat16).to(DEV)
    attn = DCAAttention(kv_shape(h, hkv, d, kv), cfg, _workspace())
    orig = torch.tensor(orig_lens or lens, device=DEV)
    scale = yarn_logit_scale(orig, cfg) if cfg is not None and cfg.original_max_position_embeddings else None
    state = attn.plan_extend(plan_extend(spans, cfg), pool.req_to_token, torch.arange(len(spans), device=DEV), scale)
    out = attn.run_extend(state, q5.view(t, -1), (pool.k, pool.v), 0, pool.k_scale, pool.v_scale)
    k_ref, v_ref = (pool.k_orig, pool.v_orig) if unquantised else (pool.k_ref, pool.v_ref)
    row = 0
    worst = 0.0
    for r, s in enumerate(spans):
        rows = torch.arange(row, row + s.extend_len, device=DEV)
        if sample_rows is not None and s.extend_len > sample_rows:
            pick = torch.randperm(s.extend_len, generator=g)[:sample_rows].to(DEV)
            rows = rows[pick]
        slots = pool.req_to_token[r, : s.seq_len].long()
        pos = rows - row + s.prefix_len
        ls = float(scale[r]) if scale is not None else 1.0
        ref, _ = dca_attention_ref(q5[rows], k_ref[slots], v_ref[slots], pos, cfg.chunk_len if cfg else None,
                                   d**-0.5, ls, block=16)
        worst = max(worst, rel_rms(out[rows], ref))
        row += s.extend_len
    return worst


SMALL = DCAConfig(chunk_size=576, local_size=64)  # chunk_len 512: boundaries at 512, 1024, 1536


@pytest.mark.parametrize("boundaries", [0, 1, 2, 3])
@pytest.mark.parametrize("h,hkv", [(4, 4), (28, 4)])
def test_prefill_matches_reference(boundaries, h, hkv):
    n = 512 * boundaries + 300
    assert run_case(SMALL, [RequestSpan(0, n)], h, hkv) <= TOL


def test_mixed_batch_chunked_and_prefix_hit():
    spans = [RequestSpan(0, 77), RequestSpan(700, 900), RequestSpan(1000, 1), RequestSpan(1530, 40), RequestSpan(0, 1800)]
    assert run_case(SMALL, spans, 28, 4, seed=3) <= TOL


def test_shared_prefix_radix_hit():
    spans = [RequestSpan(0, 1100), RequestSpan(1100, 500)]  # second request reuses the first's 1100-token prefix
    assert run_case(SMALL, spans, 28, 4, share_prefix=1100, seed=4) <= TOL


def test_yarn_scale_applied():
    cfg = DCAConfig(chunk_size=576, local_size=64, original_max_position_embeddings=600)
    # a 1,700-token chunk of a 4,000-token prompt: scale from the full prompt length
    assert run_case(cfg, [RequestSpan(300, 1400)], 28, 4, orig_lens=[4000], seed=5) <= TOL


def test_no_dca_config_is_plain_causal():
    assert run_case(None, [RequestSpan(0, 900), RequestSpan(100, 50)], 28, 4, seed=6) <= TOL


def _decode_case(cfg, lens, h=28, hkv=4, d=128, seed=7, graph=False, kv="bf16", unquantised=False):
    pool = quantise(make_pool(lens, hkv, d, seed=seed), kv)
    sc = (pool.k_scale, pool.v_scale)
    g = torch.Generator(device="cpu").manual_seed(seed + 1)
    b = len(lens)
    q5 = torch.randn(b, 5, h, d, generator=g).to(torch.bfloat16).to(DEV)
    attn = DCAAttention(kv_shape(h, hkv, d, kv), cfg, _workspace())
    seq = torch.tensor(lens, device=DEV)
    rpi = torch.arange(b, device=DEV)
    if graph:
        attn.init_graph_buffers(b, b * max(lens))
        gs = attn.make_graph_state(b)
        wrapper = attn.plan_decode(lens, pool.req_to_token, rpi, gs)
        q_static, seq_static = q5.view(b, -1).clone(), seq.clone()
        attn.run_decode(wrapper, q_static, (pool.k, pool.v), attn.decode_step(seq_static), *sc)  # warm-up
        cg = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cg):
            out_static = attn.run_decode(wrapper, q_static, (pool.k, pool.v), attn.decode_step(seq_static), *sc)
        # replay with different lengths (fewer tokens) and queries
        lens = [max(1, n - 37 * (i + 1)) for i, n in enumerate(lens)]
        seq_static.copy_(torch.tensor(lens, device=DEV))
        q5 = torch.randn(b, 5, h, d, generator=g).to(torch.bfloat16).to(DEV)
        q_static.copy_(q5.view(b, -1))
        attn.plan_decode(lens, pool.req_to_token, rpi, gs)
        cg.replay()
        out = out_static
    else:
        wrapper = attn.plan_decode(lens, pool.req_to_token, rpi)
        step = attn.decode_step(seq)
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = attn.run_decode(wrapper, q5.view(b, -1), (pool.k, pool.v), step, *sc)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    worst = 0.0
    k_ref, v_ref = (pool.k_orig, pool.v_orig) if unquantised else (pool.k_ref, pool.v_ref)
    for i, n in enumerate(lens):
        slots = pool.req_to_token[i, :n].long()
        ls = float(yarn_logit_scale(torch.tensor([n]), cfg)[0]) if cfg else 1.0
        ref, _ = dca_attention_ref(q5[i : i + 1], k_ref[slots], v_ref[slots], torch.tensor([n - 1], device=DEV),
                                   cfg.chunk_len if cfg else None, d**-0.5, ls)
        worst = max(worst, rel_rms(out[i : i + 1], ref))
    return worst


@pytest.mark.parametrize("graph", [False, True])
def test_decode_matches_reference(graph):
    cfg = DCAConfig(chunk_size=576, local_size=64, original_max_position_embeddings=700)
    lens = [1, 300, 512, 513, 1024, 1025, 1600, 2100]  # 0..4 DCA chunks, placeholders and YaRN scaling
    assert _decode_case(cfg, lens, graph=graph) <= TOL


# ---------------------------------------------------------------- FP8 KV (per-tensor scales)


@pytest.mark.parametrize("kv", ["e4m3", "e5m2"])
@pytest.mark.parametrize("boundaries", [0, 2])
def test_fp8_prefill_matches_reference(boundaries, kv):
    spans = [RequestSpan(0, 512 * boundaries + 300)]
    assert run_case(SMALL, spans, 28, 4, kv=kv) <= TOL
    assert run_case(SMALL, spans, 28, 4, kv=kv, unquantised=True) <= FP8_LOOSE[kv]


def test_fp8_mixed_batch_radix_hit_and_yarn():
    cfg = DCAConfig(chunk_size=576, local_size=64, original_max_position_embeddings=600)
    spans = [RequestSpan(0, 77), RequestSpan(700, 900), RequestSpan(1000, 1), RequestSpan(1530, 40)]
    assert run_case(cfg, spans, 28, 4, seed=3, kv="e4m3", orig_lens=[77, 4000, 1001, 1570]) <= TOL
    spans = [RequestSpan(0, 1100), RequestSpan(1100, 500)]  # a radix hit reads the same FP8 rows
    assert run_case(SMALL, spans, 28, 4, share_prefix=1100, seed=4, kv="e4m3") <= TOL


@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("kv", ["e4m3", "e5m2"])
def test_fp8_decode_matches_reference(kv, graph):
    """Eager and CUDA-graph decode (same shapes as bf16; the scales are per-layer constants in the graph)."""
    cfg = DCAConfig(chunk_size=576, local_size=64, original_max_position_embeddings=700)
    lens = [1, 300, 512, 513, 1024, 1025, 1600, 2100]
    assert _decode_case(cfg, lens, graph=graph, kv=kv) <= TOL
    assert _decode_case(cfg, lens, graph=graph, kv=kv, unquantised=True) <= FP8_LOOSE[kv]


def test_fp8_scale_is_applied():
    """A dropped v scale cannot pass (the output would be 1 / 0.021 times too large); a dropped k scale is caught by
    the tight oracle comparisons above (logits off by 1 / 0.0137)."""
    spans = [RequestSpan(0, 900)]
    pool = quantise(make_pool([900], 4, 128), "e4m3")
    attn = DCAAttention(kv_shape(28, 4, 128, "e4m3"), SMALL, _workspace())
    state = attn.plan_extend(plan_extend(spans, SMALL), pool.req_to_token, torch.arange(1, device=DEV), None)
    q5 = torch.randn(900, 5 * 28 * 128, device=DEV, dtype=torch.bfloat16)
    good = attn.run_extend(state, q5, (pool.k, pool.v), 0, pool.k_scale, pool.v_scale)
    bad_v = attn.run_extend(state, q5, (pool.k, pool.v), 0, pool.k_scale, 1.0)
    assert rel_rms(bad_v, good) > 10


def test_extend_run_has_no_host_sync():
    spans = [RequestSpan(0, 1300), RequestSpan(600, 200)]
    cfg = DCAConfig(chunk_size=576, local_size=64, original_max_position_embeddings=600)
    pool = make_pool([s.seq_len for s in spans], 4, 128)
    attn = DCAAttention(DCAShape(28, 4, 128, torch.bfloat16, torch.bfloat16, 128**-0.5), cfg, _workspace())
    scale = yarn_logit_scale(torch.tensor([1300, 800], device=DEV), cfg)
    state = attn.plan_extend(plan_extend(spans, cfg), pool.req_to_token, torch.arange(2, device=DEV), scale)
    q5 = torch.randn(1500, 5 * 28 * 128, device=DEV, dtype=torch.bfloat16)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        attn.run_extend(state, q5, (pool.k, pool.v))
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.slow
def test_real_config_600k():
    """Qwen2.5-7B-1M geometry (chunk 262144 / local 8192, GQA 7:1) on a 600K-token sequence.

    The last 4,096 tokens of a 604K prompt (2 DCA boundaries behind them, YaRN s=1.08) are prefilled as one
    chunked-prefill step over a 600K cached prefix, plus a chunk straddling the 507,904 boundary; 64 sampled
    query rows per chunk are checked against the fp32 oracle.
    """
    cfg = DCAConfig(chunk_size=262144, local_size=8192, original_max_position_embeddings=262144)
    n = 604_000
    spans = [RequestSpan(n - 4096, 4096)]
    assert run_case(cfg, spans, 28, 4, seed=11, sample_rows=64) <= TOL
    b = 2 * cfg.chunk_len
    spans = [RequestSpan(b - 1000, 3000)]
    assert run_case(cfg, spans, 28, 4, orig_lens=[n], seed=12, sample_rows=64) <= TOL
    assert _decode_case(cfg, [n, b, b + 1, 300_000], seed=13) <= TOL
