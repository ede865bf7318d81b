"""Swap SGLang's unfused ``DualChunkRotaryEmbedding.forward`` for the one-launch Triton ``dca_rope`` on a loaded model.

SGLang 0.5.17's module (``layers/rotary_embedding/rope_variant.py:678-833``) computes the five query rotations and
the key rotation with about sixty small PyTorch ops per layer; in a long-context decode step those launches cost
more than attention itself. The replacement reads the module's own cos/sin buffers, so it computes the same
function (fp32 arithmetic instead of bf16 intermediates). Only models served by ``qwen1m`` are touched: the
backend calls :func:`install_fused_dca_rope` on its model runner's model.

Call signatures (SGLang 0.5.17; ``tests/test_rope_families.py`` re-reads them from the installed SGLang):

* qwen2, qwen2_moe, glm4: ``self.rotary_emb(positions, q, k)``.
* qwen3_moe (``apply_qk_norm_rope``): ``self.rotary_emb(positions, q, k, fused_set_kv_buffer_arg=...)``, after
  q/k RMSNorm. The argument is not None on CUDA with a bf16 KV pool; the model then calls attention with
  ``save_kv_cache=False`` and expects RoPE to have written K and V into the pool. SGLang's own
  ``DualChunkRotaryEmbedding.forward`` does not accept the argument at all (``TypeError``). The replacement honours
  it: the Triton kernel stores the rotated keys and the values at ``cache_loc``; on the fallback path (offsets,
  GPT-J style, CPU tensors) SGLang's forward rotates and the store is done here. The side effect is never dropped.
  With an FP8 pool SGLang does not pass the argument (it gates on a bf16 pool) and the backend's
  ``set_kv_buffer`` quantises with the layer scales; see ``ops/dca/rope.py`` for an FP8 buffer arriving anyway.

Version guard: the replacement is installed only when ``DualChunkRotaryEmbedding.forward`` has a signature listed
in ``KNOWN_FORWARD_PARAMS``; otherwise SGLang's forward stays and the reason is logged. Models whose attention
bypasses ``rotary_emb`` for a fused qk-norm + plain-RoPE kernel (``--enable-fused-qk-norm-rope``) would lose DCA
silently, so installation refuses them with an error.
"""

from __future__ import annotations

import functools
import inspect
import logging
from typing import Any, Optional

import torch

from sgl_qwen1m.ops.dca.plan import FP8_KV_DTYPES, DCARopeCaches

__all__ = ["install_fused_dca_rope", "KNOWN_FORWARD_PARAMS", "forward_signature_known", "fused_forward"]

logger = logging.getLogger(__name__)

# Parameter names of DualChunkRotaryEmbedding.forward in the SGLang versions this replacement was checked against.
KNOWN_FORWARD_PARAMS: tuple[tuple[str, ...], ...] = (("self", "positions", "query", "key", "offsets"),)


def forward_signature_known(cls: type) -> bool:
    """True when ``cls.forward`` takes exactly the parameters of a known SGLang version."""
    return tuple(inspect.signature(cls.forward).parameters) in KNOWN_FORWARD_PARAMS


def _put_rows(buf: torch.Tensor, loc: torch.Tensor, x: torch.Tensor) -> None:
    x = x.reshape(x.shape[0], -1).to(buf.dtype)
    if buf.dtype in FP8_KV_DTYPES:  # index_put has no float8 kernels: write the bytes (scale 1.0, see ops/dca/rope.py)
        buf.view(torch.uint8)[loc] = x.view(torch.uint8)
    else:
        buf[loc] = x


def _store_kv(arg: Any, k: torch.Tensor) -> None:
    """What SGLang's fused RoPE does with ``fused_set_kv_buffer_arg``: rows ``cache_loc`` of the pool get K and V."""
    _put_rows(arg.k_buffer, arg.cache_loc, k)
    _put_rows(arg.v_buffer, arg.cache_loc, arg.value)


def fused_forward(module: Any, caches: DCARopeCaches, positions: torch.Tensor, query: torch.Tensor,
                  key: torch.Tensor, offsets: Optional[torch.Tensor] = None,
                  fused_set_kv_buffer_arg: Optional[Any] = None):
    """The replacement ``forward`` (bound to ``module`` and its caches). Accepts every argument the DCA-wired
    SGLang models pass; see the module docstring."""
    if offsets is None and query.dim() == 2 and key.dim() == 2 and query.is_cuda:
        from sgl_qwen1m.ops.dca.rope import dca_rope

        return dca_rope(positions, query, key, caches, module.head_size, kv_write=fused_set_kv_buffer_arg)
    q, k = type(module).forward(module, positions, query, key, offsets)
    if fused_set_kv_buffer_arg is not None:
        _store_kv(fused_set_kv_buffer_arg, k)
    return q, k


def _check_no_rope_bypass(model: torch.nn.Module, dca_cls: type) -> None:
    for name, m in model.named_modules():
        if getattr(m, "use_fused_qk_norm_rope", False) and isinstance(getattr(m, "rotary_emb", None), dca_cls):
            raise ValueError(
                f"qwen1m: {name} ({type(m).__name__}) uses SGLang's fused qk-norm + RoPE kernel, which applies plain "
                "RoPE and skips Dual Chunk Attention's rotations; drop --enable-fused-qk-norm-rope"
            )


def replacement_signature() -> inspect.Signature:
    """What a model's ``self.rotary_emb(...)`` call may pass to the installed replacement (checked against SGLang's
    model sources by ``sgl_qwen1m.adapter.conformance``)."""
    return inspect.signature(functools.partial(fused_forward, None, None))


def install_fused_dca_rope(model: torch.nn.Module) -> int:
    """Replace ``forward`` on every eligible ``DualChunkRotaryEmbedding`` of ``model``; returns how many."""
    from sglang.srt.layers.rotary_embedding.rope_variant import DualChunkRotaryEmbedding

    _check_no_rope_bypass(model, DualChunkRotaryEmbedding)
    if not forward_signature_known(DualChunkRotaryEmbedding):
        logger.warning(
            "qwen1m: DualChunkRotaryEmbedding.forward%s is not a signature this plugin knows (%s); keeping SGLang's "
            "unfused DCA RoPE", inspect.signature(DualChunkRotaryEmbedding.forward), KNOWN_FORWARD_PARAMS,
        )
        return 0
    n = 0
    for m in model.modules():  # SGLang caches one module per shape (get_rope), so layers usually share one
        if not isinstance(m, DualChunkRotaryEmbedding) or not m.is_neox_style or m.rotary_dim != m.head_size:
            continue
        caches = DCARopeCaches(
            q=m.cos_sin_q_cache, qc=m.cos_sin_qc_cache, k=m.cos_sin_k_cache,
            qc_no_clamp=m.cos_sin_qc_no_clamp_cache, q_inter=m.cos_sin_q_inter_cache,
            chunk_len=m.chunk_size - m.local_size,
        )
        m.forward = functools.partial(fused_forward, m, caches)
        n += 1
    return n
