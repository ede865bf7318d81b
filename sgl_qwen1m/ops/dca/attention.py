"""Exact Dual Chunk Attention on FlashInfer's paged kernels. No SGLang types: tensors and host ints only.

Prefill (any extend: plain, chunked, prefix hit) is two kernel calls per layer:

* ``intra``: causal paged prefill over the batch's query rows in token order, one virtual request per
  (request, DCA chunk) piece, keys = the piece's own DCA chunk up to the query;
* ``cross``: non-causal paged prefill over gathered ``q_succ``/``q_inter`` rows, keys = the previous chunk
  (succ) or all earlier chunks (inter).

Partial results are merged by their base-2 LSE. Short sequences have no cross segments and run only the
intra call, which is plain causal FlashInfer attention. Decode is one call over ``3 * B`` virtual requests
(request-major, fixed shape so CUDA graphs can replay it) followed by one ``merge_states`` over the three stages.

YaRN's attention temperature is applied by multiplying queries by ``s**2`` (per request); cached keys are
never rescaled, so the radix cache stays valid across requests of any length.

FP8 KV (``shape.kv_dtype`` e4m3 / e5m2): every wrapper is planned with the FP8 ``kv_data_type`` and reads the pool
as stored; the layer's per-tensor ``k_scale`` / ``v_scale`` go to ``run`` (FlashInfer folds ``k_scale`` into the
softmax scale, so the returned LSEs and their merge are those of the dequantised keys, and multiplies the output by
``v_scale``), as SGLang's own FlashInfer backend calls it. Prefill then uses FlashInfer's FA2 kernels (SGLang's
choice for paged prefill; bf16 query x FP8 KV); decode already does (tensor-core decode runs FA2 prefill kernels).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from flashinfer import (
    BatchDecodeWithPagedKVCacheWrapper,
    BatchPrefillWithPagedKVCacheWrapper,
    merge_state,
    merge_states,
)

from sgl_qwen1m.ops.dca.plan import (
    NUM_Q_VARIANTS,
    DCAPlan,
    DCAShape,
    Segment,
    decode_stage_valid,
    plan_decode,
    yarn_logit_scale,
)
from sgl_qwen1m.ops.dca.indices import SegmentTensors, gather_kv_indices, segment_tensors
from sgl_qwen1m.config import DCAConfig

__all__ = ["ExtendState", "DecodeStep", "DCAAttention", "DecodeGraphState"]


@dataclass
class ExtendState:
    """Per-batch prefill plan on the device, reused by every layer."""

    num_tokens: int
    cross: Optional[SegmentTensors]
    num_succ_rows: int
    succ_tokens: Optional[torch.Tensor]  # [Ns] int64 token row of each succ query row
    inter_tokens: Optional[torch.Tensor]  # [Ni] int64 token row of each inter query row
    token_scale: Optional[torch.Tensor]  # [T] float32 YaRN logit multiplier, None when all 1
    cross_scale: Optional[torch.Tensor]  # [Ns + Ni] float32


@dataclass
class DecodeStep:
    """Per-step decode tensors shared by every layer (graph-safe to build: pure device ops on ``seq_lens``)."""

    q_scale: torch.Tensor  # [B, 1, 1, 1] YaRN logit multiplier, in the query dtype
    lse_bias: torch.Tensor  # [B, 3, 1] float32: 0 for real stages, -inf for placeholders


@dataclass
class DecodeGraphState:
    """The decode wrapper captured for one CUDA-graph batch size (``3 * bs`` virtual requests, shared buffers)."""

    wrapper: BatchDecodeWithPagedKVCacheWrapper


def _run_scales(k_scale: float, v_scale: float) -> dict:
    """FlashInfer ``run`` keyword scales: omitted at 1.0 (a bf16 pool), which skips its extra ``out *= v_scale``."""
    return {name: float(x) for name, x in (("k_scale", k_scale), ("v_scale", v_scale)) if x != 1.0}


def _last_page_lens(n: int) -> torch.Tensor:
    """Host ``[n]`` int32 ones: with one token per page every last page holds one entry."""
    return torch.ones(n, dtype=torch.int32)


class DCAAttention:
    """Plans DCA segments once per batch and runs them per layer on FlashInfer.

    Parameters
    ----------
    shape : DCAShape
    cfg : DCAConfig or None
        None runs plain causal attention (models without ``dual_chunk_attention_config``).
    workspace : torch.Tensor
        FlashInfer float workspace (uint8, >= 128 MB), shared with other wrappers on the same stream.
    """

    def __init__(self, shape: DCAShape, cfg: Optional[DCAConfig], workspace: torch.Tensor) -> None:
        self.shape = shape
        self.cfg = cfg
        self.device = workspace.device
        self.workspace = workspace
        backend = "fa2" if shape.fp8_kv else "auto"
        self.intra = BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
        self.cross = BatchPrefillWithPagedKVCacheWrapper(workspace, "NHD", backend=backend)
        self.decode = BatchDecodeWithPagedKVCacheWrapper(workspace, "NHD", use_tensor_cores=True)
        self._graph_kv_indices: Optional[torch.Tensor] = None
        self._graph_indptr: Optional[torch.Tensor] = None
        self._graph_last_page: Optional[torch.Tensor] = None

    # ------------------------------------------------------------------ prefill

    def _plan_kwargs(self, causal: bool) -> dict:
        s = self.shape
        return dict(
            num_qo_heads=s.num_qo_heads,
            num_kv_heads=s.num_kv_heads,
            head_dim_qk=s.head_dim,
            page_size=1,
            causal=causal,
            sm_scale=s.sm_scale,
            q_data_type=s.q_dtype,
            kv_data_type=s.kv_dtype,
        )

    def plan_extend(
        self,
        plan: DCAPlan,
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        logit_scale: Optional[torch.Tensor],
    ) -> ExtendState:
        """Plan both kernel calls of a prefill batch.

        Parameters
        ----------
        plan : DCAPlan
            From :func:`sgl_qwen1m.ops.dca.plan.plan_extend` on host ints.
        req_to_token : torch.Tensor
            ``[R, max_context]`` int32 slot table.
        req_pool_indices : torch.Tensor
            ``[B]`` rows of the batch's requests in ``req_to_token``.
        logit_scale : torch.Tensor or None
            ``[B]`` float32 YaRN multiplier per request (None: all 1).
        """
        intra = segment_tensors(plan.intra, self.device, with_q_rows=False)
        intra_idx = gather_kv_indices(intra, req_to_token, req_pool_indices)
        self.intra.plan(intra.qo_indptr, intra.kv_indptr, intra_idx, _last_page_lens(len(plan.intra)),
                        **self._plan_kwargs(causal=True))
        token_scale = cross_scale = None
        if logit_scale is not None:
            seg_req = intra.seg_req
            q_lens = torch.tensor([s.q_len for s in plan.intra], device=self.device)
            token_scale = torch.repeat_interleave(logit_scale[seg_req], q_lens, output_size=plan.num_tokens)
        if plan.is_plain:
            return ExtendState(plan.num_tokens, None, 0, None, None, token_scale, None)
        cross = segment_tensors(plan.cross, self.device, with_q_rows=True)
        cross_idx = gather_kv_indices(cross, req_to_token, req_pool_indices)
        self.cross.plan(cross.qo_indptr, cross.kv_indptr, cross_idx, _last_page_lens(len(plan.cross)),
                        **self._plan_kwargs(causal=False))
        tokens = cross.q_rows // NUM_Q_VARIANTS
        ns = int(cross.qo_indptr[plan.num_succ])
        if token_scale is not None:
            cross_scale = token_scale[tokens]
        return ExtendState(plan.num_tokens, cross, ns, tokens[:ns], tokens[ns:], token_scale, cross_scale)

    def run_extend(
        self,
        state: ExtendState,
        q5: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        layer_id: int = 0,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> torch.Tensor:
        """Attention output of a planned prefill batch for one layer.

        Parameters
        ----------
        state : ExtendState
            From :meth:`plan_extend` for this batch.
        q5 : torch.Tensor
            ``[T, 5 * H * D]`` SGLang's concatenated query variants (intra, succ, inter, 2 critical).
            Models without DCA pass ``[T, H * D]``.
        kv_cache : (k, v)
            ``[N, Hkv, D]`` each: the layer's KV pool, already holding the batch's new keys.
        layer_id : int
            Unused (every layer runs the same plan); the call shape of ``SparsePrefill.run_extend``.
        k_scale, v_scale : float
            Per-tensor dequantisation scales of an FP8 pool (SGLang's ``layer.k_scale_float`` / ``v_scale_float``);
            1.0 for bf16.

        Returns
        -------
        torch.Tensor
            ``[T, H, D]`` in ``q5.dtype``.
        """
        h, d = self.shape.num_qo_heads, self.shape.head_dim
        t = state.num_tokens
        q_all = q5.view(t, -1, h, d)  # [T, V, H, D]
        q = q_all[:, 0]
        if state.token_scale is not None:
            q = q * state.token_scale.view(t, 1, 1).to(q.dtype)
        sc = _run_scales(k_scale, v_scale)
        o, lse = self.intra.run(q.contiguous(), kv_cache, return_lse=True, **sc)  # [T,H,D], [T,H] base 2
        if state.cross is None:
            return o
        qx = q_all.reshape(t * q_all.shape[1], h, d).index_select(0, state.cross.q_rows)  # [Ns+Ni, H, D]
        if state.cross_scale is not None:
            qx = qx * state.cross_scale.view(-1, 1, 1).to(qx.dtype)
        ox, lsex = self.cross.run(qx, kv_cache, return_lse=True, **sc)
        ns = state.num_succ_rows
        for rows, lo, hi in ((state.succ_tokens, 0, ns), (state.inter_tokens, ns, ox.shape[0])):
            if hi > lo:
                mo, ml = merge_state(o.index_select(0, rows), lse.index_select(0, rows), ox[lo:hi], lsex[lo:hi])
                o.index_copy_(0, rows, mo)
                lse.index_copy_(0, rows, ml)
        return o

    # ------------------------------------------------------------------ decode

    def init_graph_buffers(self, max_bs: int, max_kv_tokens: int) -> None:
        """Allocate the fixed index buffers shared by all CUDA-graph batch sizes."""
        n = 3 * max_bs
        self._graph_kv_indices = torch.zeros(max_kv_tokens + 2 * max_bs, dtype=torch.int32, device=self.device)
        self._graph_indptr = torch.zeros(n + 1, dtype=torch.int32, device=self.device)
        self._graph_last_page = torch.ones(n, dtype=torch.int32, device=self.device)

    def make_graph_state(self, bs: int) -> DecodeGraphState:
        if self._graph_kv_indices is None:
            raise RuntimeError("init_graph_buffers must run before make_graph_state")
        wrapper = BatchDecodeWithPagedKVCacheWrapper(
            self.workspace, "NHD", use_cuda_graph=True, use_tensor_cores=True,
            paged_kv_indptr_buffer=self._graph_indptr[: 3 * bs + 1],
            paged_kv_indices_buffer=self._graph_kv_indices,
            paged_kv_last_page_len_buffer=self._graph_last_page[: 3 * bs],
        )
        return DecodeGraphState(wrapper)

    def plan_decode(
        self,
        seq_lens: Sequence[int],
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        graph: Optional[DecodeGraphState] = None,
    ) -> BatchDecodeWithPagedKVCacheWrapper:
        """Plan one decode step of ``B = len(seq_lens)`` requests (host ints; no device sync)."""
        segs: tuple[Segment, ...] = plan_decode(seq_lens, self.cfg)
        st = segment_tensors(segs, self.device, with_q_rows=False)
        wrapper = graph.wrapper if graph is not None else self.decode
        out = self._graph_kv_indices if graph is not None else None
        idx = gather_kv_indices(st, req_to_token, req_pool_indices, out=out)
        s = self.shape
        wrapper.plan(st.kv_indptr, idx, _last_page_lens(len(segs)), s.num_qo_heads, s.num_kv_heads, s.head_dim, 1,
                     q_data_type=s.q_dtype, kv_data_type=s.kv_dtype, sm_scale=s.sm_scale)
        return wrapper

    def decode_step(self, seq_lens: torch.Tensor) -> DecodeStep:
        """Per-step tensors of a decode batch; call once per step (inside the CUDA graph), not per layer.

        ``seq_lens``: ``[B]`` device sequence lengths including the new token.
        """
        b = seq_lens.shape[0]
        q_scale = yarn_logit_scale(seq_lens, self.cfg).to(self.shape.q_dtype).view(b, 1, 1, 1)
        valid = decode_stage_valid(seq_lens, self.cfg)  # [B, 3]
        lse_bias = torch.zeros(b, 3, 1, dtype=torch.float32, device=seq_lens.device)
        lse_bias.masked_fill_(~valid.unsqueeze(-1), float("-inf"))
        return DecodeStep(q_scale, lse_bias)

    def run_decode(
        self,
        wrapper: BatchDecodeWithPagedKVCacheWrapper,
        q5: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        step: DecodeStep,
        k_scale: float = 1.0, v_scale: float = 1.0,
    ) -> torch.Tensor:
        """One decode step for one layer: 3 kernels around the attention call, static shapes, no host sync.

        Parameters
        ----------
        q5 : torch.Tensor
            ``[B, 5 * H * D]`` (or ``[B, H * D]`` without DCA).
        step : DecodeStep
            From :meth:`decode_step` for this batch.
        k_scale, v_scale : float
            FP8 pool scales (Python floats: recorded into a CUDA graph as constants, as SGLang does); 1.0 for bf16.

        Returns
        -------
        torch.Tensor
            ``[B, H, D]``.
        """
        h, d = self.shape.num_qo_heads, self.shape.head_dim
        b = q5.shape[0]
        q_all = q5.view(b, -1, h, d)
        if q_all.shape[1] == 1:
            q_all = q_all.expand(b, 3, h, d)
        q = (q_all[:, :3] * step.q_scale).view(3 * b, h, d)  # [3B, H, D] request-major
        o, lse = wrapper.run(q, kv_cache, return_lse=True, **_run_scales(k_scale, v_scale))  # [3B,H,D], [3B,H] base 2
        lse = lse.view(b, 3, h) + step.lse_bias  # placeholders -> -inf
        out, _ = merge_states(o.view(b, 3, h, d), lse)
        return out
