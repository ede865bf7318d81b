"""Vertical-slash sparse prefill for DCA models: plan once per batch, then estimate + select + attend per layer.

Per layer and prefill batch (all pieces of all requests at once, no per-head loop, no host sync):

1. ``estimate_scores`` (2 Triton launches): vertical and slash scores from each piece's last ``last_q`` queries;
2. ``select_vs`` (1 Triton launch, radix top-k): per-head budgets from ``sparse_attention_config.json``;
3. ``pattern_bounds`` (1 Triton launch): block diagonals and per-row-block loop ranges;
4. ``vs_attention`` (1 Triton launch): every DCA stage of every query in one online softmax.

Pieces of requests that attend at most ``threshold`` keys share the launch with a full pattern (exact).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from sgl_qwen1m.attention.dca import DCAPlan, RequestSpan
from sgl_qwen1m.attention.kernels_select import pattern_bounds, select_vs
from sgl_qwen1m.attention.kernels_sparse import estimate_scores, vs_attention
from sgl_qwen1m.attention.vertical_slash import (
    PAD,
    LayerBudget,
    PiecePlan,
    block_pattern,
    layer_budgets,
    loop_bounds,
    plan_pieces,
    select_vertical_slash,
)
from sgl_qwen1m.config import (
    DEFAULT_LAST_Q,
    DEFAULT_SPARSE_THRESHOLD,
    LOCAL_DIAGONALS,
    SINK_COLUMNS,
    DCAConfig,
    SparseBudgets,
)

__all__ = ["SparseState", "SparsePattern", "SparsePrefill", "SELECT_ENV", "STATS_ENV"]

logger = logging.getLogger(__name__)
SELECT_ENV = "QWEN1M_SPARSE_SELECT"  # "torch": select with torch topk/sort (the reference path) instead of Triton
STATS_ENV = "QWEN1M_SPARSE_STATS"  # not SGL_*: SGLang renames SGL_* variables  # "1": log layer 0's computed fraction per batch (adds a host sync)


@dataclass
class SparseState:
    """Per-batch device tensors of the sparse plan (shared by every layer)."""

    plan: PiecePlan
    piece_table: torch.Tensor  # [P, 8] int32, column 0 = row in req_to_token
    block_table: torch.Tensor  # [NBLK, 2] int32
    q_end: torch.Tensor  # [P] int64
    first_block: torch.Tensor  # [P] int64
    c0: torch.Tensor  # [P] int64
    dense: torch.Tensor  # [P] bool
    q_scale: torch.Tensor  # [T] float32
    pieces: torch.Tensor  # [P, 4] int64 rows [q_end, first_block, c0, dense]; the four fields above are its columns


@dataclass
class SparsePattern:
    """One layer's selected pattern (kept for tests and tools)."""

    v_idx: torch.Tensor
    s_idx: torch.Tensor
    cov: torch.Tensor
    diag: torch.Tensor
    dcnt: torch.Tensor
    vcnt: torch.Tensor


class SparsePrefill:
    """Sparse prefill of one model shard.

    Parameters
    ----------
    num_qo_heads, num_kv_heads, head_dim, sm_scale : the shard's attention shape.
    cfg : DCAConfig or None (plain causal attention).
    budgets : SparseBudgets already sliced to this rank's heads (``SparseBudgets.for_tp_rank``).
    threshold : requests attending more keys than this run sparse.
    last_q : estimation queries per piece.
    """

    def __init__(
        self,
        num_qo_heads: int,
        num_kv_heads: int,
        head_dim: int,
        sm_scale: float,
        cfg: Optional[DCAConfig],
        budgets: SparseBudgets,
        device: torch.device,
        threshold: int = DEFAULT_SPARSE_THRESHOLD,
        last_q: int = DEFAULT_LAST_Q,
    ) -> None:
        if budgets.num_heads != num_qo_heads:
            raise ValueError(
                f"sparse budgets cover {budgets.num_heads} query heads, this shard has {num_qo_heads} "
                "(slice them with SparseBudgets.for_tp_rank)"
            )
        if last_q > 64:
            raise ValueError(f"sparse_attention_last_q must be <= 64 (one query tile), got {last_q}")
        self.num_qo_heads = num_qo_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.sm_scale = sm_scale
        self.cfg = cfg
        self.threshold = threshold
        self.last_q = last_q
        self.device = device
        self.budgets: list[LayerBudget] = layer_budgets(budgets, device)
        self.stats = os.environ.get(STATS_ENV) == "1"
        self.torch_select = os.environ.get(SELECT_ENV, "triton") == "torch"

    def plan(
        self,
        plan: DCAPlan,
        spans: Sequence[RequestSpan],
        req_pool_indices: torch.Tensor,
        token_scale: Optional[torch.Tensor],
    ) -> Optional[SparseState]:
        """Device plan of a prefill batch, or None when every request is at or under the threshold."""
        pp = plan_pieces(plan, spans, self.cfg, self.threshold, self.last_q)
        if pp is None:
            return None
        dev = self.device
        table = torch.tensor(pp.piece_table(), dtype=torch.int32).to(dev, non_blocking=True)
        table[:, 0] = req_pool_indices.to(torch.int32).index_select(0, table[:, 0].long())
        blocks = torch.tensor(pp.block_table(), dtype=torch.int32).to(dev, non_blocking=True)
        host = torch.tensor([[p.q_end, p.first_block, p.c0, not p.sparse] for p in pp.pieces], dtype=torch.int64)
        host = host.to(dev, non_blocking=True)
        if token_scale is None:
            token_scale = torch.ones(plan.num_tokens, dtype=torch.float32, device=dev)
        return SparseState(pp, table, blocks, host[:, 0], host[:, 1], host[:, 2], host[:, 3].bool(),
                           token_scale.float().contiguous(), host)

    def pattern(
        self,
        state: SparseState,
        layer_id: int,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        req_to_token: torch.Tensor,
    ) -> SparsePattern:
        """Estimate and select one layer's pattern. ``q``: ``[T, V, H, D]``.

        Three launches: ``estimate_scores`` (two passes), ``select_vs`` (radix top-k + compaction) and
        ``pattern_bounds``. With ``QWEN1M_SPARSE_SELECT=torch`` the selection runs through their torch references
        (``select_vertical_slash`` + ``build_pattern``) instead."""
        pp = state.plan
        cl = self.cfg.chunk_len if self.cfg is not None else None
        scores = estimate_scores(q, state.q_scale, k_cache, req_to_token, state.piece_table, pp.max_len,
                                 self.sm_scale, cl)
        budget = self.budgets[layer_id]
        if self.torch_select:
            v_idx, s_idx = select_vertical_slash(scores[0], scores[1], state.q_end, budget)
            return self.build_pattern(state, v_idx, s_idx)
        v_idx, s_idx = select_vs(scores, state.q_end, state.dense, budget, SINK_COLUMNS, LOCAL_DIAGONALS)
        del scores
        cov, diag, dcnt, vcnt = pattern_bounds(s_idx, v_idx, state.pieces, pp.key_blocks, pp.max_blocks, cl)
        return SparsePattern(v_idx, s_idx, cov, diag, dcnt, vcnt)

    def build_pattern(self, state: SparseState, v_idx: torch.Tensor, s_idx: torch.Tensor) -> SparsePattern:
        """Kernel pattern from selected columns ``v_idx`` and diagonals ``s_idx`` (``[P, H, *]``, PAD-padded);
        pieces under the threshold get every block diagonal and no extra columns."""
        pp = state.plan
        v_idx = torch.where(state.dense.view(-1, 1, 1), torch.full_like(v_idx, PAD), v_idx)
        cov, diag = block_pattern(s_idx, state.dense, pp.key_blocks)
        cl = self.cfg.chunk_len if self.cfg is not None else None
        dcnt, vcnt = loop_bounds(diag, v_idx, state.first_block, state.c0, cl, pp.max_blocks)
        return SparsePattern(v_idx, s_idx, cov, diag, dcnt, vcnt)

    def attend(
        self,
        state: SparseState,
        pat: SparsePattern,
        q: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        req_to_token: torch.Tensor,
        return_lse: bool = False,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Sparse attention with a selected pattern: (``[T, H, D]``, natural-log LSE ``[T, H]`` or None)."""
        return vs_attention(
            q, state.q_scale, kv_cache[0], kv_cache[1], req_to_token, state.piece_table, state.block_table,
            pat.diag, pat.cov, pat.v_idx, pat.dcnt, pat.vcnt, self.sm_scale, self.cfg is not None,
            return_lse=return_lse,
        )

    def run(
        self,
        state: SparseState,
        layer_id: int,
        q5: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        req_to_token: torch.Tensor,
    ) -> torch.Tensor:
        """One layer: ``q5`` ``[T, V * H * D]`` (SGLang's concatenated variants) -> ``[T, H, D]``."""
        t = q5.shape[0]
        q = q5.view(t, -1, self.num_qo_heads, self.head_dim)
        pat = self.pattern(state, layer_id, q, kv_cache[0], req_to_token)
        if self.stats and layer_id == 0:
            self.log_stats(state, pat)
        return self.attend(state, pat, q, kv_cache, req_to_token)[0]

    def log_stats(self, state: SparseState, pat: SparsePattern) -> None:
        """Computed (query, key) pairs of one layer against dense causal attention (diagnostics; syncs)."""
        from sgl_qwen1m.attention.vertical_slash import BLOCK, computed_keys

        pp = state.plan
        done = float(computed_keys(pp, pat.dcnt, pat.vcnt).sum()) * BLOCK
        dense = sum(p.q_len * p.q_pos0 + p.q_len * (p.q_len + 1) / 2 for p in pp.pieces) * self.num_qo_heads
        diag = float((pat.cov[:, :, :].sum(-1).float() / max(1, pp.key_blocks)).mean())
        logger.warning("qwen1m sparse stats: %d pieces, keys up to %d, computed fraction %.3f of dense causal, "
                       "block-diagonal coverage %.3f", pp.num_pieces, pp.max_len, done / max(dense, 1.0), diag)
