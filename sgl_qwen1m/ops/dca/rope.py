"""Fused DCA RoPE (Triton). fp32 oracle: ``reference.dca_rope_ref``; tests: ``tests/test_rope.py``.

``dca_rope``: Dual Chunk Attention rotary embedding in one launch. SGLang's ``DualChunkRotaryEmbedding.forward``
builds the five query rotations and the key rotation from about sixty unfused PyTorch ops per layer, which
dominates a long-context decode step. This kernel reads the same cos/sin caches and writes the same
``[T, 5 * H * D]`` query layout (variants: intra, succ, inter, succ_critical, inter_critical) and ``[T, Hkv * D]``
keys, NeoX style (rotate halves), with ``rotary_dim == head_dim``. With ``kv_write`` it also stores the rotated keys
and the values into the paged KV pool rows ``cache_loc`` (what SGLang models ask of RoPE through
``fused_set_kv_buffer_arg`` when they skip the attention backend's own KV write).

FP8 pools: SGLang 0.5.17 passes ``fused_set_kv_buffer_arg`` on CUDA only for a bf16 pool
(``models/utils.enable_fused_set_kv_buffer``; ``tests/test_rope_families.py`` checks the condition), so with
``--kv-cache-dtype fp8_*`` qwen3_moe leaves the write to the attention backend, whose ``set_kv_buffer`` quantises
with the layer scales. Should an FP8 (float8-typed) buffer arrive anyway, the kernel casts to it with scale 1.0, which
is what SGLang's CUDA arg builder implies (it asserts that the layer has no ``k_scale`` / ``v_scale``).
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import triton
import triton.language as tl

from sgl_qwen1m.ops.dca.plan import DCARopeCaches

__all__ = ["dca_rope"]

# pool dtypes the fused write stores into (FP8: cast with scale 1.0, see the module docstring; a uint8 view is refused)
_POOL_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2)


@triton.jit
def _rotate_store(x1, x2, cache_ptr, row, j, out_ptr, offs_lo, offs_hi, mask, HALF: tl.constexpr):
    cos = tl.load(cache_ptr + row * (2 * HALF) + j).to(tl.float32)[None, :]
    sin = tl.load(cache_ptr + row * (2 * HALF) + HALF + j).to(tl.float32)[None, :]
    tl.store(out_ptr + offs_lo, (x1 * cos - x2 * sin).to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(out_ptr + offs_hi, (x2 * cos + x1 * sin).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _load_halves(ptr, row_stride, t, NH: tl.constexpr, NH_P2: tl.constexpr, HALF: tl.constexpr):
    """Row ``t``'s ``NH`` heads as fp32 halves ``[NH_P2, HALF]`` (x1, x2), their mask and their head-major offsets."""
    j = tl.arange(0, HALF)
    h = tl.arange(0, NH_P2)
    mask = (h < NH)[:, None]
    src = ptr + t * row_stride + h[:, None] * (2 * HALF) + j[None, :]
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=mask, other=0.0).to(tl.float32)
    return x1, x2, mask, h[:, None] * (2 * HALF) + j[None, :]


@triton.jit
def _dca_rope_kernel(
    pos_ptr, q_ptr, k_ptr, q_out_ptr, k_out_ptr,
    q_cache, qc_cache, k_cache, qcn_cache, qi_cache,
    q_row_stride, k_row_stride, chunk_len,
    v_ptr, kbuf_ptr, vbuf_ptr, loc_ptr, v_row_stride, kbuf_row_stride, vbuf_row_stride,
    H: tl.constexpr, HKV: tl.constexpr, H_P2: tl.constexpr, HKV_P2: tl.constexpr, HALF: tl.constexpr,
    WRITE_KV: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + t).to(tl.int64)
    pc = pos % chunk_len
    j = tl.arange(0, HALF)
    D: tl.constexpr = 2 * HALF
    # queries: [H, HALF] halves of every head
    x1, x2, qmask, lo = _load_halves(q_ptr, q_row_stride, t, H, H_P2, HALF)
    base = q_out_ptr + t * (5 * H * D)
    _rotate_store(x1, x2, q_cache, pc, j, base, lo, lo + HALF, qmask, HALF)
    _rotate_store(x1, x2, qc_cache, pc, j, base + H * D, lo, lo + HALF, qmask, HALF)
    _rotate_store(x1, x2, qc_cache, chunk_len - 1, j, base + 2 * H * D, lo, lo + HALF, qmask, HALF)
    _rotate_store(x1, x2, qcn_cache, pc, j, base + 3 * H * D, lo, lo + HALF, qmask, HALF)
    _rotate_store(x1, x2, qi_cache, pc, j, base + 4 * H * D, lo, lo + HALF, qmask, HALF)
    # keys
    y1, y2, kmask, klo = _load_halves(k_ptr, k_row_stride, t, HKV, HKV_P2, HALF)
    _rotate_store(y1, y2, k_cache, pos, j, k_out_ptr + t * (HKV * D), klo, klo + HALF, kmask, HALF)
    if WRITE_KV:  # the pool rows of this token: rotated key and the value, cast to the pool dtype
        loc = tl.load(loc_ptr + t).to(tl.int64)
        _rotate_store(y1, y2, k_cache, pos, j, kbuf_ptr + loc * kbuf_row_stride, klo, klo + HALF, kmask, HALF)
        v1, v2, vmask, vlo = _load_halves(v_ptr, v_row_stride, t, HKV, HKV_P2, HALF)
        vdst = vbuf_ptr + loc * vbuf_row_stride
        tl.store(vdst + vlo, v1.to(vbuf_ptr.dtype.element_ty), mask=vmask)
        tl.store(vdst + vlo + HALF, v2.to(vbuf_ptr.dtype.element_ty), mask=vmask)


def dca_rope(
    positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor, caches: DCARopeCaches, head_dim: int,
    kv_write: Optional[Any] = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply DCA RoPE.

    Parameters
    ----------
    positions : ``[T]`` integer absolute positions (CUDA).
    q : ``[T, H * D]``; k : ``[T, Hkv * D]``. Rows may be strided (views of a fused QKV output); the last dim must be
        contiguous.
    caches : DCARopeCaches
        Tables of dtype ``q.dtype`` (or float32), last dim ``D``.
    kv_write : object with ``value`` ``[T, Hkv * D]``, ``k_buffer`` / ``v_buffer`` ``[N, Hkv * D]`` (bf16, fp16,
        fp32, or float8 e4m3 / e5m2 at scale 1.0) and ``cache_loc`` ``[T]`` (SGLang's ``FusedSetKVBufferArg`` has exactly these), or None. When given,
        row ``cache_loc[t]`` of ``k_buffer`` gets the rotated key of token ``t`` and of ``v_buffer`` its value.

    Returns
    -------
    (q5 ``[T, 5 * H * D]``, k ``[T, Hkv * D]``), both contiguous, in ``q.dtype``.
    """
    t = positions.shape[0]
    d = head_dim
    if q.dim() != 2 or k.dim() != 2 or q.shape[0] != t or k.shape[0] != t:
        raise ValueError(f"dca_rope: expected q [T, H*D], k [T, Hkv*D] with T={t}, got {tuple(q.shape)}, {tuple(k.shape)}")
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        raise ValueError("dca_rope: the last dimension of q and k must be contiguous")
    if d % 2 or d & (d - 1) or q.shape[1] % d or k.shape[1] % d:
        raise ValueError(f"dca_rope: head_dim must be an even power of two dividing q and k widths, got {d}")
    for name in ("q", "qc", "k", "qc_no_clamp", "q_inter"):
        c = getattr(caches, name)
        if c.shape[-1] != d or not c.is_contiguous():
            raise ValueError(f"dca_rope: cache {name} must be contiguous [rows, {d}], got {tuple(c.shape)}")
    h, hkv = q.shape[1] // d, k.shape[1] // d
    if kv_write is not None:
        v, kb, vb, loc = kv_write.value, kv_write.k_buffer, kv_write.v_buffer, kv_write.cache_loc
        for name, x in (("value", v), ("k_buffer", kb), ("v_buffer", vb)):
            if x.dim() != 2 or x.shape[1] != hkv * d or x.stride(-1) != 1:
                raise ValueError(f"dca_rope: kv_write.{name} must be [rows, {hkv * d}] with a contiguous last dim, "
                                 f"got {tuple(x.shape)}")
            if name != "value" and x.dtype not in _POOL_DTYPES:
                raise ValueError(f"dca_rope: kv_write.{name} dtype {x.dtype} is not supported {_POOL_DTYPES}")
        if v.shape[0] != t or loc.shape != (t,):
            raise ValueError(f"dca_rope: kv_write needs value [T, ...] and cache_loc [T] with T={t}, "
                             f"got {tuple(v.shape)}, {tuple(loc.shape)}")
    q_out = torch.empty(t, 5 * h * d, dtype=q.dtype, device=q.device)
    k_out = torch.empty(t, hkv * d, dtype=k.dtype, device=k.device)
    if t:
        _dca_rope_kernel[(t,)](
            positions, q, k, q_out, k_out,
            caches.q, caches.qc, caches.k, caches.qc_no_clamp, caches.q_inter,
            q.stride(0), k.stride(0), caches.chunk_len,
            *((v, kb, vb, loc, v.stride(0), kb.stride(0), vb.stride(0)) if kv_write is not None
              else (k, k_out, k_out, positions, 0, 0, 0)),
            H=h, HKV=hkv, H_P2=triton.next_power_of_2(h), HKV_P2=triton.next_power_of_2(hkv), HALF=d // 2,
            WRITE_KV=kv_write is not None, num_warps=4,
        )
    return q_out, k_out
