"""Pattern reuse across prefill chunks (issue 16, item 4): which piece estimates, and how a pattern is extended.

With chunked prefill every sparse piece (:func:`sgl_qwen1m.ops.sparse.prompt_ref.prompt_pieces`: the queries of one
engine prefill chunk inside one DCA chunk) estimates its vertical/slash pattern from its last ``last_q`` queries
against *all* earlier keys, so the estimation cost per piece grows with the prefix, not with the piece. With
``reestimate_every = k`` only some pieces estimate and the others reuse the last estimated pattern:

* **Which pieces estimate.** Pieces are counted within their DCA chunk (``q_pos0 // chunk_len``; one group without
  DCA), in order, over the pieces that run sparse: piece ``j = 0, k, 2k, ...`` of a DCA chunk estimates, the others
  reuse the pattern of the last piece that estimated. A new DCA chunk therefore always re-estimates: its queries use
  other DCA variants against every earlier region (intra / successive / inter move by one chunk), so a pattern never
  crosses a DCA chunk boundary. ``k == 1`` is today's behaviour (every piece estimates).
* **What "extended" means.** A pattern is the selection's output, nothing else: ``v_idx`` (absolute key columns,
  the forced :data:`~sgl_qwen1m.config.SINK_COLUMNS` sinks included) and ``s_idx`` (diagonal offsets
  ``o = pos - c``, the forced :data:`~sgl_qwen1m.config.LOCAL_DIAGONALS` local diagonals included), chosen from the
  estimating piece's scores over its keys ``[0, q_end_est)``. A reusing piece with keys ``[0, q_end)``,
  ``q_end > q_end_est``, keeps both index sets unchanged: the same absolute columns and the same offsets, which
  continue naturally to its later queries. Serving's block-pattern and mask stages then run on them over the
  *new* key range (``block_pattern(s_idx, ceil(q_end / 64))``, ``pattern_mask_ref(..., q_end)``), exactly as if the
  selection had returned those indices for this piece: block diagonal 0 is always on, and an offset ``o`` near a
  64-block edge may now also light block diagonal ``o // 64 + 1`` that had no key block in the shorter piece.
  Budgets are not re-applied: an estimate over fewer candidates than a budget keeps all of them (with
  ``vertical >= q_end_est`` every old key is a column), so a reusing piece may attend more keys than its own
  estimate would have chosen.
* **Keys the estimate never saw** (``[q_end_est, q_end)``, the new tokens of the chunks since the estimate) get no
  vertical column. They are reached only along diagonals: the forced local diagonals (offsets ``0..99``, which
  light block diagonals 0, 1 and 2: every key in the query's own 64-key block and the two before it, so at least
  the 128 keys before the query) and any selected slash offset whose 64x64 tiles land on them. A new key farther
  from a query and on no selected offset is not attended until the next estimate; the recall experiment
  (:mod:`sgl_qwen1m.refine.reuse`) measures what this costs.

Shapes: ``vertical``/``slash`` ``[H, >= q_end_est]`` fp32 scores; ``v_idx`` ``[H, KV]`` / ``s_idx`` ``[H, KS]``
int32 (PAD-padded, ascending); ``cov`` ``[H, NB]`` int8 with ``NB = ceil(keys / 64)``. Plain torch, any device.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from sgl_qwen1m.ops.sparse.plan import BLOCK, LayerBudget
from sgl_qwen1m.ops.sparse.reference import block_pattern, select_vertical_slash

__all__ = ["estimation_anchors", "piece_pattern", "estimation_work"]


def estimation_anchors(pieces: Sequence[tuple[int, int]], chunk_len: Optional[int], every: int = 1) -> list[int]:
    """For every piece ``(q_pos0, q_end)`` (in prompt order), the index of the piece whose estimate it uses.

    ``anchors[i] == i``: piece ``i`` estimates. Otherwise ``anchors[i]`` is the last earlier piece of the same DCA
    chunk that estimated (see the module docstring). ``every == 1``: ``[0, 1, 2, ...]``.
    """
    if every < 1:
        raise ValueError(f"reestimate_every must be >= 1, got {every}")
    out: list[int] = []
    group, j, last = None, 0, -1
    for i, (a, b) in enumerate(pieces):
        if b <= a:
            raise ValueError(f"estimation_anchors: empty piece {(a, b)}")
        g = a // chunk_len if chunk_len is not None else 0
        if g != group:
            group, j = g, 0
        if j % every == 0:
            last = i
        out.append(last)
        j += 1
    return out


def piece_pattern(
    vertical: torch.Tensor, slash: torch.Tensor, q_end: int, budget: LayerBudget, keys: Optional[int] = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Serving's pattern of one piece from its scores, laid over ``keys`` keys (default ``q_end``).

    ``vertical``/``slash`` ``[H, >= q_end]`` fp32 (not modified); ``q_end``: keys the scores cover (the estimating
    piece's); ``keys >= q_end``: keys of the piece that uses the pattern. Returns ``(v_idx [H, KV] int32,
    cov [H, ceil(keys / 64)] int8)``; ``pattern_mask_ref(cov, v_idx, rows, keys)`` is the mask
    :func:`~sgl_qwen1m.ops.sparse.prompt_ref.piece_mask` builds with the same arguments.
    """
    keys = q_end if keys is None else keys
    if keys < q_end:
        raise ValueError(f"piece_pattern: keys ({keys}) < q_end ({q_end}): a pattern only extends forwards")
    v = vertical[:, :q_end].clone()[None]
    s = slash[:, :q_end].clone()[None]
    q_end_t = torch.tensor([q_end], dtype=torch.int64, device=vertical.device)
    v_idx, s_idx = select_vertical_slash(v, s, q_end_t, budget)
    dense = torch.zeros(1, dtype=torch.bool, device=vertical.device)
    cov, _ = block_pattern(s_idx, dense, -(-keys // BLOCK))
    return v_idx[0], cov[0]


def estimation_work(pieces: Sequence[tuple[int, int]], anchors: Sequence[int], last_q: int) -> dict[str, int]:
    """Estimation passes and scored (query, key) pairs actually run vs with ``every == 1``.

    A pass of piece ``(a, b)`` scores ``min(last_q, b - a)`` queries against ``b`` keys (its cost on the GPU is
    proportional to that). Returns ``{"passes", "passes_all", "pairs", "pairs_all"}``.
    """
    pairs = [min(last_q, b - a) * b for a, b in pieces]
    run = [i for i, x in enumerate(anchors) if x == i]
    return {"passes": len(run), "passes_all": len(pieces), "pairs": sum(pairs[i] for i in run),
            "pairs_all": sum(pairs)}
