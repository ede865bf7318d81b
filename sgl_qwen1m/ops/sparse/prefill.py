"""Vertical-slash sparse prefill for DCA models: ``plan_extend`` once per batch, then per layer (``run_extend``)
estimate -> select -> attend.

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
from typing import Optional, Sequence

import torch

from sgl_qwen1m.config import (
    DEFAULT_LAST_Q,
    DEFAULT_SPARSE_THRESHOLD,
    LOCAL_DIAGONALS,
    SINK_COLUMNS,
    DCAConfig,
    SparseBudgets,
)
from sgl_qwen1m.ops.dca.plan import DCAPlan, DCAShape, RequestSpan
from sgl_qwen1m.ops.sparse.attention import vs_attention
from sgl_qwen1m.ops.sparse.estimate import estimate_scores
from sgl_qwen1m.ops.sparse.plan import BLOCK, PAD, LayerBudget, SparsePattern, SparseState, layer_budgets, plan_pieces
from sgl_qwen1m.ops.sparse.reference import block_pattern, computed_keys, loop_bounds, select_vertical_slash
from sgl_qwen1m.ops.sparse.select import pattern_bounds, select_vs

__all__ = ["SparsePrefill", "SELECT_ENV", "STATS_ENV"]

logger = logging.getLogger(__name__)
SELECT_ENV = "QWEN1M_SPARSE_SELECT"  # "torch": select with torch topk/sort (the reference path) instead of Triton
STATS_ENV = "QWEN1M_SPARSE_STATS"  # not SGL_*: SGLang renames SGL_* variables  # "1": log layer 0's computed fraction per batch (adds a host sync)


class SparsePrefill:
    """Sparse prefill of one model shard: the same call shape as :class:`sgl_qwen1m.ops.dca.attention.DCAAttention`
    (``plan_extend`` once per batch from host ints, ``run_extend`` per layer).

    Parameters
    ----------
    shape : DCAShape
        The shard's attention shape (``num_qo_heads``, ``num_kv_heads``, ``head_dim``, ``sm_scale``).
    cfg : DCAConfig or None (plain causal attention).
    budgets : SparseBudgets already sliced to this rank's heads (``SparseBudgets.for_tp_rank``).
    device : where the per-batch state lives.
    threshold : requests attending more keys than this run sparse.
    last_q : estimation queries per piece.
    """

    def __init__(
        self,
        shape: DCAShape,
        cfg: Optional[DCAConfig],
        budgets: SparseBudgets,
        device: torch.device,
        *,
        threshold: int = DEFAULT_SPARSE_THRESHOLD,
        last_q: int = DEFAULT_LAST_Q,
    ) -> None:
        if budgets.num_heads != shape.num_qo_heads:
            raise ValueError(
                f"sparse budgets cover {budgets.num_heads} query heads, this shard has {shape.num_qo_heads} "
                "(slice them with SparseBudgets.for_tp_rank)"
            )
        if last_q > 64:
            raise ValueError(f"sparse_attention_last_q must be <= 64 (one query tile), got {last_q}")
        self.shape = shape
        self.cfg = cfg
        self.chunk_len: Optional[int] = cfg.chunk_len if cfg is not None else None
        self.threshold = threshold
        self.last_q = last_q
        self.device = device
        self.budgets: list[LayerBudget] = layer_budgets(budgets, device)
        self.stats = os.environ.get(STATS_ENV) == "1"
        self.torch_select = os.environ.get(SELECT_ENV, "triton") == "torch"

    # ------------------------------------------------------------------ plan (once per batch)

    def plan_extend(
        self,
        plan: DCAPlan,
        spans: Sequence[RequestSpan],
        req_to_token: torch.Tensor,
        req_pool_indices: torch.Tensor,
        token_scale: Optional[torch.Tensor],
    ) -> Optional[SparseState]:
        """Device plan of a prefill batch, or None when every request is at or under the threshold.

        Parameters
        ----------
        plan : DCAPlan
            From :func:`sgl_qwen1m.ops.dca.plan.plan_extend` on host ints.
        spans : the batch's requests (host ints).
        req_to_token : ``[R, ctx]`` int32 slot table (kept in the state: the kernels read keys through it).
        req_pool_indices : ``[B]`` rows of the batch's requests in ``req_to_token``.
        token_scale : ``[T]`` float32 YaRN logit multiplier per token, or None (all 1).
        """
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
        return SparseState(pp, req_to_token, table, blocks, host[:, 0], host[:, 1], host[:, 2], host[:, 3].bool(),
                           token_scale.float().contiguous(), host)

    # ------------------------------------------------------------------ estimate + select, attend (per layer)

    def pattern(self, state: SparseState, layer_id: int, q: torch.Tensor, k_cache: torch.Tensor,
                k_scale: float = 1.0) -> SparsePattern:
        """Estimate and select one layer's pattern. ``q``: ``[T, V, H, D]``; ``k_cache``: ``[N, Hkv, D]`` (bf16 /
        fp16, or FP8 with per-tensor scale ``k_scale``).

        Three launches: ``estimate_scores`` (two passes), ``select_vs`` (radix top-k + compaction) and
        ``pattern_bounds``. With ``QWEN1M_SPARSE_SELECT=torch`` the selection runs through their torch references
        (``select_vertical_slash`` + ``build_pattern``) instead."""
        pp = state.plan
        scores = estimate_scores(q, state, k_cache, sm_scale=self.shape.sm_scale, chunk_len=self.chunk_len,
                                 k_scale=k_scale)
        budget = self.budgets[layer_id]
        if self.torch_select:
            v_idx, s_idx = select_vertical_slash(scores[0], scores[1], state.q_end, budget)
            return self.build_pattern(state, v_idx, s_idx)
        v_idx, s_idx = select_vs(scores, state.q_end, state.dense, budget, sink=SINK_COLUMNS, local=LOCAL_DIAGONALS)
        del scores
        cov, diag, dcnt, vcnt = pattern_bounds(s_idx, v_idx, state.pieces, num_key_blocks=pp.key_blocks,
                                               max_blocks=pp.max_blocks, chunk_len=self.chunk_len)
        return SparsePattern(v_idx, s_idx, cov, diag, dcnt, vcnt)

    def build_pattern(self, state: SparseState, v_idx: torch.Tensor, s_idx: torch.Tensor) -> SparsePattern:
        """Kernel pattern from selected columns ``v_idx`` and diagonals ``s_idx`` (``[P, H, *]``, PAD-padded);
        pieces under the threshold get every block diagonal and no extra columns."""
        pp = state.plan
        v_idx = torch.where(state.dense.view(-1, 1, 1), torch.full_like(v_idx, PAD), v_idx)
        cov, diag = block_pattern(s_idx, state.dense, pp.key_blocks)
        dcnt, vcnt = loop_bounds(diag, v_idx, state.first_block, state.c0, self.chunk_len, pp.max_blocks)
        return SparsePattern(v_idx, s_idx, cov, diag, dcnt, vcnt)

    def attend(
        self,
        state: SparseState,
        pat: SparsePattern,
        q: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        return_lse: bool = False,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Sparse attention with a selected pattern: (``[T, H, D]``, natural-log LSE ``[T, H]`` or None)."""
        return vs_attention(q, state, pat, kv_cache, sm_scale=self.shape.sm_scale, dca=self.cfg is not None,
                            k_scale=k_scale, v_scale=v_scale, return_lse=return_lse)

    def run_extend(
        self,
        state: SparseState,
        q5: torch.Tensor,
        kv_cache: tuple[torch.Tensor, torch.Tensor],
        layer_id: int,
        k_scale: float = 1.0,
        v_scale: float = 1.0,
    ) -> torch.Tensor:
        """One layer: ``q5`` ``[T, V * H * D]`` (SGLang's concatenated variants), ``kv_cache`` ``[N, Hkv, D]`` each
        -> ``[T, H, D]`` in ``q5.dtype``. ``layer_id`` picks the layer's budgets. An FP8 pool is read as stored and
        widened in registers; ``k_scale`` / ``v_scale`` are its per-tensor scales (1.0 for bf16)."""
        t = q5.shape[0]
        q = q5.view(t, -1, self.shape.num_qo_heads, self.shape.head_dim)
        pat = self.pattern(state, layer_id, q, kv_cache[0], k_scale)
        if self.stats and layer_id == 0:
            self.log_stats(state, pat)
        return self.attend(state, pat, q, kv_cache, k_scale=k_scale, v_scale=v_scale)[0]

    def log_stats(self, state: SparseState, pat: SparsePattern) -> None:
        """Computed (query, key) pairs of one layer against dense causal attention (diagnostics; syncs)."""
        pp = state.plan
        done = float(computed_keys(pp, pat.dcnt, pat.vcnt).sum()) * BLOCK
        dense = sum(p.q_len * p.q_pos0 + p.q_len * (p.q_len + 1) / 2 for p in pp.pieces) * self.shape.num_qo_heads
        diag = float((pat.cov[:, :, :].sum(-1).float() / max(1, pp.key_blocks)).mean())
        logger.warning("qwen1m sparse stats: %d pieces, keys up to %d, computed fraction %.3f of dense causal, "
                       "block-diagonal coverage %.3f", pp.num_pieces, pp.max_len, done / max(dense, 1.0), diag)
