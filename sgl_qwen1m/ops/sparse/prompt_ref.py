"""Serving's sparse selection over one whole prompt, in torch: the pieces, their scores, masks and attention.

The sparsity-refinement tool (:mod:`sgl_qwen1m.refine`) and the pure-torch sparse prefill of the reference model
(:class:`sgl_qwen1m.model.torch_qwen2.TinyQwen2` with ``use_sparse=True``) both need "what would ``qwen1m`` keep for
this prompt". This module composes the existing oracles and the torch selection path (no rule is re-implemented):

* pieces: one per DCA chunk of the prompt, further cut at engine prefill-chunk boundaries (``plan.Piece``: the
  queries of one extend inside one DCA chunk; keys ``[0, q_end)``);
* scores: :func:`~sgl_qwen1m.ops.sparse.reference.estimate_vs_ref` on the piece's last ``last_q`` queries
  (continuous-position variants for the earlier DCA chunks);
* pattern (:func:`~sgl_qwen1m.ops.sparse.reuse.piece_pattern`): :func:`~sgl_qwen1m.ops.sparse.reference.select_vertical_slash` (budgets through
  :func:`~sgl_qwen1m.ops.sparse.plan.layer_budgets`, so the ``vertical == 30 -> 130`` quirk holds) +
  :func:`~sgl_qwen1m.ops.sparse.reference.block_pattern` + :func:`~sgl_qwen1m.ops.sparse.reference.pattern_mask_ref`;
* attention: :func:`sgl_qwen1m.ops.dca.reference.dca_attention_ref` with that key mask.

Shapes: ``q5`` ``[L, V, H, D]`` rotated query variants of every position (``V == 5`` with DCA: intra, succ, inter,
succ_critical, inter_critical; ``V >= 1`` without), ``k``/``v`` ``[L, Hkv, D]`` cached keys/values. Any device.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from sgl_qwen1m.config import DEFAULT_LAST_Q
from sgl_qwen1m.ops.dca.reference import dca_attention_ref
from sgl_qwen1m.ops.sparse.plan import LayerBudget
from sgl_qwen1m.ops.sparse.reference import estimate_vs_ref, pattern_mask_ref
from sgl_qwen1m.ops.sparse.reuse import estimation_anchors, piece_pattern

__all__ = ["prompt_pieces", "piece_scores", "piece_mask", "sparse_attention_prompt_ref", "attention_variants"]


def prompt_pieces(length: int, chunk_len: Optional[int], prefill_chunk: Optional[int] = None) -> list[tuple[int, int]]:
    """``(q_pos0, q_end)`` of every sparse piece of a ``length``-token prompt prefilled from position 0.

    Pieces end at DCA chunk boundaries (multiples of ``chunk_len``) and, with SGLang's chunked prefill
    (``--chunked-prefill-size``), at multiples of ``prefill_chunk``.
    """
    if length <= 0:
        raise ValueError(f"prompt_pieces: length must be > 0, got {length}")
    cuts = {0, length}
    for step in (chunk_len, prefill_chunk):
        if step is not None:
            if step <= 0:
                raise ValueError(f"prompt_pieces: chunk lengths must be > 0, got {step}")
            cuts |= set(range(step, length, step))
    edges = sorted(cuts)
    return list(zip(edges[:-1], edges[1:]))


def attention_variants(q5: torch.Tensor, chunk_len: Optional[int]) -> torch.Tensor:
    """The variants attention uses: intra/succ/inter with DCA, the first one without."""
    return q5[:, :3] if chunk_len is not None else q5[:, :1]


def piece_scores(
    q5: torch.Tensor,
    k: torch.Tensor,
    piece: tuple[int, int],
    chunk_len: Optional[int],
    sm_scale: float,
    logit_scale: float = 1.0,
    last_q: int = DEFAULT_LAST_Q,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertical and slash scores ``[H, q_end]`` of one piece (independent of the budgets)."""
    q_pos0, q_end = piece
    n = min(last_q, q_end - q_pos0)
    rows = torch.arange(q_end - n, q_end, device=k.device)
    q = q5[rows] if chunk_len is not None else q5[rows, :1]
    return estimate_vs_ref(q, k[:q_end], rows, chunk_len, sm_scale, logit_scale)


def piece_mask(
    vertical: torch.Tensor,
    slash: torch.Tensor,
    q_end: int,
    budget: LayerBudget,
    rows: torch.Tensor,
    keys: Optional[int] = None,
) -> torch.Tensor:
    """``[n, H, q_end]`` bool: keys that the queries at positions ``rows`` may attend under the selected pattern
    (causality not applied). ``vertical``/``slash``: ``[H, >= q_end]`` scores from :func:`piece_scores` (not
    modified).

    ``keys`` (default ``q_end``): pattern reuse (:mod:`sgl_qwen1m.ops.sparse.reuse`): the pattern selected from
    scores over ``[0, q_end)`` laid over a later piece's ``keys >= q_end`` keys; the mask is then ``[n, H, keys]``.
    """
    keys = q_end if keys is None else keys
    v_idx, cov = piece_pattern(vertical, slash, q_end, budget, keys)
    return pattern_mask_ref(cov, v_idx, rows, keys)


def sparse_attention_prompt_ref(
    q5: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    chunk_len: Optional[int],
    sm_scale: float,
    logit_scale: float,
    budget: LayerBudget,
    last_q: int = DEFAULT_LAST_Q,
    prefill_chunk: Optional[int] = None,
    block: int = 256,
    pieces: Optional[Sequence[tuple[int, int]]] = None,
    reestimate_every: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sparse prefill of a whole prompt (positions ``0..L-1``) as ``qwen1m`` runs it, in fp32.

    Returns ``(out [rows, H, D], lse [rows, H])`` (natural log) for the rows of ``pieces`` (default: every piece, so
    ``[L, H, D]``), like :func:`dca_attention_ref`. ``reestimate_every`` (``k``): ``1`` estimates every piece;
    ``k > 1`` estimates pieces ``0, k, 2k, ...`` of each DCA chunk and reuses the last estimate, extended, for the
    others (rule: :mod:`sgl_qwen1m.ops.sparse.reuse`).
    """
    length = k.shape[0]
    qa = attention_variants(q5, chunk_len)
    outs, lses = [], []
    plist = list(pieces) if pieces is not None else prompt_pieces(length, chunk_len, prefill_chunk)
    anchors = estimation_anchors(plist, chunk_len, reestimate_every)
    est_end = 0
    for i, (a, b) in enumerate(plist):
        if anchors[i] == i:
            vert, sl = piece_scores(q5, k, (a, b), chunk_len, sm_scale, logit_scale, last_q)
            est_end = b
        for s in range(a, b, block):
            rows = torch.arange(s, min(s + block, b), device=k.device)
            mask = piece_mask(vert, sl, est_end, budget, rows, keys=b)
            o, lse = dca_attention_ref(qa[rows], k[:b], v[:b], rows, chunk_len, sm_scale, logit_scale,
                                       block=block, key_mask=mask)
            outs.append(o)
            lses.append(lse)
    return torch.cat(outs), torch.cat(lses)
