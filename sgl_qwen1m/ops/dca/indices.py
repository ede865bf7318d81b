"""Turn a plan's segments into the index tensors a paged attention kernel reads (plain torch, any device).

SGLang keeps one KV slot per token (page size 1 for attention) and maps request-local positions to slots
through ``req_to_token[req_pool_index, position]``. A segment's keys are the slots of positions
``[kv_start, kv_start + kv_len)`` of its request.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from sgl_qwen1m.ops.dca.plan import NUM_Q_VARIANTS, Segment

__all__ = ["SegmentTensors", "segment_tensors", "gather_kv_indices"]


@dataclass(frozen=True)
class SegmentTensors:
    """Host-built tensors for one kernel call over ``N`` segments.

    ``qo_indptr``/``kv_indptr`` (``[N+1]`` int32, CPU) are what FlashInfer plans from; the device tensors
    ``seg_req``/``seg_kv_start`` feed :func:`gather_kv_indices`, and ``q_rows`` (``[sum q_len]`` int64,
    device) indexes the ``[T * 5, H, D]`` view of SGLang's 5-variant query.
    """

    qo_indptr: torch.Tensor
    kv_indptr: torch.Tensor
    kv_lens: torch.Tensor
    seg_req: torch.Tensor
    seg_kv_start: torch.Tensor
    q_rows: Optional[torch.Tensor]
    num_kv: int
    num_q: int


def segment_tensors(segs: Sequence[Segment], device: torch.device, with_q_rows: bool) -> SegmentTensors:
    """Build the index tensors of ``segs`` from host integers (one H2D copy each, no sync)."""
    q_lens = [s.q_len for s in segs]
    kv_lens = [s.kv_len for s in segs]
    qo_indptr = torch.zeros(len(segs) + 1, dtype=torch.int32)
    kv_indptr = torch.zeros(len(segs) + 1, dtype=torch.int32)
    if segs:
        torch.cumsum(torch.tensor(q_lens, dtype=torch.int32), 0, out=qo_indptr[1:])
        torch.cumsum(torch.tensor(kv_lens, dtype=torch.int32), 0, out=kv_indptr[1:])
    q_rows = None
    if with_q_rows:
        starts = torch.tensor([s.q_start * NUM_Q_VARIANTS + int(s.stage) for s in segs], dtype=torch.int64)
        seg_of_row = torch.repeat_interleave(torch.arange(len(segs)), torch.tensor(q_lens, dtype=torch.int64))
        offs = torch.arange(int(qo_indptr[-1])) - qo_indptr[:-1].long()[seg_of_row]
        q_rows = (starts[seg_of_row] + offs * NUM_Q_VARIANTS).to(device, non_blocking=True)
    return SegmentTensors(
        qo_indptr=qo_indptr,
        kv_indptr=kv_indptr,
        kv_lens=torch.tensor(kv_lens, dtype=torch.int64).to(device, non_blocking=True),
        seg_req=torch.tensor([s.req for s in segs], dtype=torch.int64).to(device, non_blocking=True),
        seg_kv_start=torch.tensor([s.kv_start for s in segs], dtype=torch.int64).to(device, non_blocking=True),
        q_rows=q_rows,
        num_kv=int(kv_indptr[-1]),
        num_q=int(qo_indptr[-1]),
    )


def gather_kv_indices(
    st: SegmentTensors,
    req_to_token: torch.Tensor,
    req_pool_indices: torch.Tensor,
    out: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """KV slot of every key of every segment, segments back to back.

    Parameters
    ----------
    st : SegmentTensors
    req_to_token : torch.Tensor
        ``[R, max_context]`` int32 slot table.
    req_pool_indices : torch.Tensor
        ``[B]`` row of each request of the batch in ``req_to_token``.
    out : torch.Tensor, optional
        ``[>= num_kv]`` int32 buffer to fill (CUDA-graph decode keeps one fixed buffer).

    Returns
    -------
    torch.Tensor
        ``[num_kv]`` int32.
    """
    n = st.num_kv
    seg_ids = torch.repeat_interleave(
        torch.arange(st.kv_lens.numel(), device=st.kv_lens.device), st.kv_lens, output_size=n
    )
    kv_begin = torch.cumsum(st.kv_lens, 0) - st.kv_lens  # [N]
    pos = torch.arange(n, device=seg_ids.device) - kv_begin[seg_ids] + st.seg_kv_start[seg_ids]
    rows = req_pool_indices.long()[st.seg_req][seg_ids]
    idx = req_to_token[rows, pos]
    if out is None:
        return idx.to(torch.int32)
    out[:n].copy_(idx)
    return out[:n]
