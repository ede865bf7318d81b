"""``qwen1m``: SGLang attention backend for models with ``dual_chunk_attention_config`` (Qwen2.5-*-1M).

Translates SGLang's ``ForwardBatch`` into host-int plans (once per batch) and runs a prefill operator per layer:
:class:`sgl_qwen1m.ops.dca.attention.DCAAttention`, or, when SGLang has loaded ``sparse_attention_config.json``
(``sparse_attention_enabled``) and a request of the batch attends more than ``sparse_attention_threshold`` keys,
:class:`sgl_qwen1m.ops.sparse.prefill.SparsePrefill`. The batch's metadata holds the chosen operator and its state;
both run as ``op.run_extend(state, q5, kv_cache, layer_id)``. Decode always runs ``DCAAttention``. Keys are written
to SGLang's KV pool exactly as RoPE left them (rotated at ``pos % chunk_len``, never rescaled), so the radix cache
stays on.

FP8 KV (``--kv-cache-dtype fp8_e4m3`` / ``fp8_e5m2``; launch-gated by ``validation.py`` until GPU-verified): SGLang's
``set_kv_buffer`` quantises with ``layer.k_scale`` / ``v_scale``; every kernel reads the pool as stored and gets the
layer's ``k_scale_float`` / ``v_scale_float`` (checkpoint scales, else 1.0 with one warning at construction). The
radix cache needs nothing more: a reused prefix is the same FP8 rows, read with the same per-layer scales.
Tested against SGLang 0.5.17.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Union

import torch

from sglang.srt.environ import envs
from sglang.srt.layers.attention.base_attn_backend import AttentionBackend
from sglang.srt.runtime_context import get_buffer

from sgl_qwen1m.adapter.rope import install_fused_dca_rope
from sgl_qwen1m.config import DCAConfig, sparse_budgets_from_hf
from sgl_qwen1m.ops.dca.attention import DCAAttention, DecodeGraphState, DecodeStep, ExtendState
from sgl_qwen1m.ops.dca.plan import FP8_KV_DTYPES, DCAShape, RequestSpan, plan_extend, yarn_logit_scale

if TYPE_CHECKING:
    from flashinfer import BatchDecodeWithPagedKVCacheWrapper

    from sgl_qwen1m.ops.sparse.plan import SparseState
    from sgl_qwen1m.ops.sparse.prefill import SparsePrefill
    from sglang.srt.layers.radix_attention import RadixAttention
    from sglang.srt.model_executor.forward_batch_info import ForwardBatch
    from sglang.srt.model_executor.model_runner import ModelRunner

logger = logging.getLogger(__name__)

SUPPORTED_HEAD_DIMS = (64, 128, 256)
SUPPORTED_KV_DTYPES = (torch.bfloat16, torch.float16) + FP8_KV_DTYPES
_WORKSPACE_BYTES = 512 * 1024 * 1024  # what SGLang's FlashInfer backend uses for Qwen2


@dataclass
class _ExtendMeta:
    op: Union[DCAAttention, "SparsePrefill"]  # the prefill operator that runs this batch
    state: Union[ExtendState, "SparseState"]  # its per-batch plan


@dataclass
class _DecodeMeta:
    wrapper: "BatchDecodeWithPagedKVCacheWrapper"
    step: Optional[DecodeStep] = None  # per-step tensors, built in init_forward_metadata_in_graph


class Qwen1MAttnBackend(AttentionBackend):
    """Exact DCA (+ YaRN temperature) on FlashInfer; plain causal attention for models without DCA."""

    def __init__(self, model_runner: "ModelRunner") -> None:
        super().__init__()
        mc = model_runner.model_config
        sa = model_runner.server_args
        self.cfg: Optional[DCAConfig] = DCAConfig.from_hf_config(mc.hf_config)
        if sa.speculative_algorithm is not None:
            raise ValueError(
                f"attention backend 'qwen1m' does not support speculative decoding "
                f"(speculative_algorithm={sa.speculative_algorithm!r})"
            )
        tp = sa.tp_size
        head_dim = mc.head_dim
        if head_dim not in SUPPORTED_HEAD_DIMS:
            raise ValueError(f"attention backend 'qwen1m' supports head_dim in {SUPPORTED_HEAD_DIMS}, got {head_dim}")
        kv_dtype = model_runner.kv_cache_dtype
        if kv_dtype not in SUPPORTED_KV_DTYPES:
            raise ValueError(
                f"attention backend 'qwen1m' supports KV cache dtypes {SUPPORTED_KV_DTYPES}, got {kv_dtype}"
            )
        if model_runner.page_size != 1:  # second line of defence; rejected at launch (validation.check_launch)
            raise ValueError(f"attention backend 'qwen1m' needs --page-size 1, got {model_runner.page_size}")
        shape = DCAShape(
            num_qo_heads=mc.get_num_attention_heads(tp),
            num_kv_heads=mc.get_num_kv_heads(tp),
            head_dim=head_dim,
            q_dtype=model_runner.dtype,
            kv_dtype=kv_dtype,
            sm_scale=head_dim**-0.5,
        )
        envs.SGLANG_FLASHINFER_WORKSPACE_SIZE.set(max(envs.SGLANG_FLASHINFER_WORKSPACE_SIZE.get(), _WORKSPACE_BYTES))
        workspace = get_buffer(
            "flashinfer_workspace",
            lambda: torch.empty(envs.SGLANG_FLASHINFER_WORKSPACE_SIZE.get(), dtype=torch.uint8,
                                device=model_runner.device),
        )
        self.fp8_kv = shape.fp8_kv
        if self.fp8_kv:
            _log_kv_scales(model_runner.model, kv_dtype)
        self.attn = DCAAttention(shape, self.cfg, workspace)
        self.sparse: Optional["SparsePrefill"] = _make_sparse(mc.hf_config, self.cfg, shape, sa.tp_size,
                                                              _tp_rank(tp), model_runner.device)
        fused_rope = install_fused_dca_rope(model_runner.model) if self.cfg is not None else 0
        self.req_to_token = model_runner.req_to_token_pool.req_to_token
        self.token_to_kv_pool = model_runner.token_to_kv_pool
        self.max_context_len = mc.context_len
        self._graphs: dict[int, DecodeGraphState] = {}
        self.forward_metadata: Union[_ExtendMeta, _DecodeMeta, None] = None
        logger.info(
            "qwen1m attention: %s, heads %d/%d, head_dim %d, chunk_len %s, YaRN original length %s, "
            "fused DCA RoPE on %d layers; sparse prefill %s",
            "DCA" if self.cfg else "plain causal (no dual_chunk_attention_config)",
            shape.num_qo_heads, shape.num_kv_heads, head_dim,
            self.cfg.chunk_len if self.cfg else None,
            self.cfg.original_max_position_embeddings if self.cfg else None,
            fused_rope,
            f"above {self.sparse.threshold} tokens" if self.sparse else "off",
        )

    # ---------------------------------------------------------------- metadata

    def init_forward_metadata(self, forward_batch: "ForwardBatch") -> None:
        """Eager path: plan once per batch from host ints."""
        mode = forward_batch.forward_mode
        if mode.is_idle():
            self.forward_metadata = None
        elif mode.is_decode():
            self.forward_metadata = _DecodeMeta(self._plan_decode(forward_batch, None))
            self.init_forward_metadata_in_graph(forward_batch)
        elif mode.is_target_verify() or mode.is_draft_extend_v2():
            raise ValueError("attention backend 'qwen1m' does not support speculative decoding")
        else:
            self.forward_metadata = self._plan_extend(forward_batch)

    def _plan_extend(self, fb: "ForwardBatch") -> _ExtendMeta:
        prefix = fb.extend_prefix_lens_cpu
        extend = fb.extend_seq_lens_cpu
        if prefix is None or extend is None:
            raise RuntimeError("qwen1m needs extend_prefix_lens_cpu/extend_seq_lens_cpu on extend batches")
        spans = [RequestSpan(int(p), int(e)) for p, e in zip(prefix, extend)]
        plan = plan_extend(spans, self.cfg)
        scale = None
        if self.cfg is not None and self.cfg.original_max_position_embeddings > 0:
            lens = fb.orig_seq_lens if fb.orig_seq_lens is not None else fb.seq_lens
            scale = yarn_logit_scale(lens[: len(spans)], self.cfg)
        if self.sparse is not None:
            token_scale = None
            if scale is not None:
                ext = torch.tensor([s.extend_len for s in spans], device=scale.device)
                token_scale = torch.repeat_interleave(scale, ext, output_size=plan.num_tokens)
            sparse = self.sparse.plan_extend(plan, spans, self.req_to_token, fb.req_pool_indices, token_scale)
            if sparse is not None:
                return _ExtendMeta(self.sparse, sparse)
        # no sparse prefill, or no request of the batch above the threshold: dense DCA
        return _ExtendMeta(self.attn, self.attn.plan_extend(plan, self.req_to_token, fb.req_pool_indices, scale))

    def _plan_decode(self, fb: "ForwardBatch", graph: Optional[DecodeGraphState]):
        bs = fb.batch_size
        seq_lens_cpu = fb.seq_lens_cpu
        if seq_lens_cpu is None:
            raise RuntimeError("qwen1m needs seq_lens_cpu on decode batches")
        return self.attn.plan_decode(seq_lens_cpu[:bs].tolist(), self.req_to_token, fb.req_pool_indices[:bs], graph)

    # ---------------------------------------------------------------- CUDA graphs (decode only)

    def init_cuda_graph_state(self, max_bs: int, max_num_tokens: int) -> None:
        self.attn.init_graph_buffers(max_bs, max_bs * self.max_context_len)

    def init_forward_metadata_out_graph(self, forward_batch: "ForwardBatch", in_capture: bool = False) -> None:
        mode = forward_batch.forward_mode
        if not mode.is_decode_or_idle():
            raise ValueError(f"qwen1m captures CUDA graphs for decode only, got forward mode {mode}")
        bs = forward_batch.batch_size
        if in_capture:
            self._graphs[bs] = self.attn.make_graph_state(bs)
        self.forward_metadata = _DecodeMeta(self._plan_decode(forward_batch, self._graphs[bs]))

    def init_forward_metadata_in_graph(self, forward_batch: "ForwardBatch") -> None:
        """Per-step decode tensors (YaRN scale, stage mask): once per step, recorded into the CUDA graph."""
        meta = self.forward_metadata
        if isinstance(meta, _DecodeMeta):
            meta.step = self.attn.decode_step(forward_batch.seq_lens[: forward_batch.batch_size])

    def get_cuda_graph_seq_len_fill_value(self) -> int:
        return 1

    # ---------------------------------------------------------------- forward

    def _layer_kv(self, layer: "RadixAttention", fb: "ForwardBatch", k, v, save_kv_cache: bool):
        """Store the batch's new keys/values (when asked) and return the layer's pools ``(k, v)``."""
        if save_kv_cache and k is not None:
            self.token_to_kv_pool.set_kv_buffer(layer, fb.out_cache_loc, k, v, layer.k_scale, layer.v_scale)
        return self.token_to_kv_pool.get_kv_buffer(layer.layer_id)

    def _kv_scales(self, layer: "RadixAttention") -> tuple[float, float]:
        """The layer's FP8 dequantisation scales as Python floats (no device sync; constants in a CUDA graph)."""
        if not self.fp8_kv:
            return 1.0, 1.0
        ks, vs = layer.k_scale_float, layer.v_scale_float
        return (1.0 if ks is None else float(ks)), (1.0 if vs is None else float(vs))

    def forward_extend(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch",
                       save_kv_cache: bool = True, **kwargs):
        kv = self._layer_kv(layer, forward_batch, k, v, save_kv_cache)
        meta: _ExtendMeta = self.forward_metadata
        o = meta.op.run_extend(meta.state, q, kv, layer.layer_id, *self._kv_scales(layer))  # DCA or sparse
        return o.view(-1, layer.tp_q_head_num * layer.head_dim)

    def forward_decode(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch",
                       save_kv_cache: bool = True, **kwargs):
        meta: _DecodeMeta = self.forward_metadata
        kv = self._layer_kv(layer, forward_batch, k, v, save_kv_cache)
        o = self.attn.run_decode(meta.wrapper, q, kv, meta.step, *self._kv_scales(layer))
        return o.view(-1, layer.tp_q_head_num * layer.head_dim)


def _log_kv_scales(model: torch.nn.Module, kv_dtype: torch.dtype) -> None:
    """Once per backend: which attention layers have checkpoint k/v scales (the rest read FP8 with 1.0)."""
    scales = [(m.k_scale_float, m.v_scale_float) for m in model.modules() if hasattr(m, "k_scale_float")]
    have = sum(1 for ks, vs in scales if ks is not None and vs is not None)
    if have < len(scales) or not scales:
        logger.warning("qwen1m: FP8 KV cache (%s) without k/v scales in the checkpoint for %d of %d attention layers: "
                       "those use scale 1.0 (e4m3 holds |x| <= 448; larger keys or values are clipped)", kv_dtype,
                       len(scales) - have, len(scales))
    else:
        logger.info("qwen1m: FP8 KV cache (%s) with checkpoint k/v scales on all %d attention layers", kv_dtype,
                    have)


def _tp_rank(tp_size: int) -> int:
    if tp_size == 1:
        return 0
    from sgl_qwen1m.adapter.compat import tensor_parallel_rank

    return tensor_parallel_rank()


def _make_sparse(hf_config, cfg: Optional[DCAConfig], shape: DCAShape, tp_size: int, tp_rank: int,
                 device) -> Optional["SparsePrefill"]:
    """Sparse prefill when the model's DCA config enables it (SGLang injects ``sparse_attention_config.json``)."""
    budgets = sparse_budgets_from_hf(hf_config, cfg)
    if budgets is None:
        return None
    from sgl_qwen1m.ops.sparse.plan import BLOCK
    from sgl_qwen1m.ops.sparse.prefill import SparsePrefill

    if cfg.chunk_len % BLOCK:
        logger.warning("qwen1m: sparse prefill needs chunk_size - local_size (%d) to be a multiple of %d; "
                       "running dense prefill", cfg.chunk_len, BLOCK)
        return None
    return SparsePrefill(shape, cfg, budgets.for_tp_rank(tp_rank, tp_size), device,
                         threshold=cfg.sparse_attention_threshold, last_q=cfg.sparse_attention_last_q)
