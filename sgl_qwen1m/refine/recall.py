"""Attention recall of serving's selected pattern against full attention, for one layer, on sampled query rows.

:func:`prepare` reduces one layer's captured inputs (:class:`sgl_qwen1m.model.capture.LayerInputs`) to what every
budget evaluation needs and what does not depend on the budget: per piece, the estimator's vertical/slash scores,
the sampled query rows and their full-attention LSE. :func:`evaluate` then measures, for per-head budgets, each
sampled query's recall ``exp(lse_sparse - lse_full)`` and the keys it attends (causal keys inside the pattern).

Sampled rows (documented choice, ``RowSampling``): in every piece its last ``tail`` rows (the rows the pattern is
estimated from and those that see the most keys) plus ``random`` rows drawn uniformly without replacement from the
rest of the piece (seeded). Memory per piece evaluation: the mask ``n x H x q_end`` bytes plus the oracle's
``3 x block x H x q_end`` floats; nothing of size ``L x L``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from sgl_qwen1m.config import DEFAULT_LAST_Q, VERTICAL_SLASH, HeadBudget, SparseBudgets
from sgl_qwen1m.ops.dca.reference import dca_attention_ref
from sgl_qwen1m.ops.sparse.plan import LayerBudget, layer_budgets
from sgl_qwen1m.ops.sparse.prompt_ref import attention_variants, piece_mask, piece_scores, prompt_pieces
from sgl_qwen1m.ops.sparse.reference import attention_recall
from sgl_qwen1m.ops.sparse.reuse import estimation_anchors
from sgl_qwen1m.model.capture import LayerInputs

__all__ = ["RowSampling", "PieceData", "SeqData", "Measured", "prepare", "evaluate", "make_budget"]


@dataclass(frozen=True)
class RowSampling:
    """Which query rows of each piece are measured: the last ``tail`` plus ``random`` uniform others (``seed``)."""

    tail: int = 16
    random: int = 128
    seed: int = 0


@dataclass
class PieceData:
    q_end: int
    vertical: torch.Tensor  # [H, q_end]
    slash: torch.Tensor  # [H, q_end]
    rows: torch.Tensor  # [n] positions
    q: torch.Tensor  # [n, V', H, D] attention variants of the rows
    lse_full: torch.Tensor  # [n, H]
    q_pos0: int = 0  # first query position of the piece (pattern reuse groups pieces by DCA chunk)


@dataclass
class SeqData:
    """One calibration sequence at one layer."""

    k: torch.Tensor
    v: torch.Tensor
    chunk_len: Optional[int]
    sm_scale: float
    logit_scale: float
    pieces: list[PieceData]


@dataclass
class Measured:
    """Per sampled query (all sequences and pieces, concatenated) and head."""

    recall: torch.Tensor  # [N, H]
    keys: torch.Tensor  # [N, H] causal keys attended
    causal: torch.Tensor  # [N] causal keys of the query (dense)

    def stat(self, name: str) -> torch.Tensor:
        """``[H]`` per-head aggregate: ``mean``, ``min`` or ``pNN`` (the NN-th percentile, e.g. ``p05``)."""
        r = self.recall.double()
        if name == "mean":
            return r.mean(0)
        if name == "min":
            return r.min(0).values
        if name.startswith("p") and name[1:].isdigit():
            return torch.quantile(r, int(name[1:]) / 100.0, dim=0)
        raise ValueError(f"unknown recall statistic {name!r}: use mean, min or pNN (e.g. p05)")

    def mean_keys(self) -> torch.Tensor:
        """``[H]`` mean keys per sampled query."""
        return self.keys.double().mean(0)


def _sample_rows(a: int, b: int, sampling: RowSampling, gen: torch.Generator) -> torch.Tensor:
    tail = min(sampling.tail, b - a)
    rest = b - a - tail
    pick = torch.randperm(rest, generator=gen)[: min(sampling.random, rest)] + a if rest > 0 else torch.empty(0)
    rows = torch.cat([pick.long(), torch.arange(b - tail, b)])
    return torch.sort(rows).values


def prepare(
    inp: LayerInputs,
    sampling: RowSampling = RowSampling(),
    last_q: int = DEFAULT_LAST_Q,
    prefill_chunk: Optional[int] = None,
    block: int = 64,
) -> SeqData:
    """Budget-independent data of one layer and sequence (scores, sampled rows, full-attention LSEs)."""
    dev = inp.k.device
    gen = torch.Generator().manual_seed(sampling.seed * 1_000_003 + inp.layer)
    qa = attention_variants(inp.q5, inp.chunk_len)
    pieces = []
    for a, b in prompt_pieces(inp.k.shape[0], inp.chunk_len, prefill_chunk):
        vert, slash = piece_scores(inp.q5, inp.k, (a, b), inp.chunk_len, inp.sm_scale, inp.logit_scale, last_q)
        rows = _sample_rows(a, b, sampling, gen).to(dev)
        _, lse = dca_attention_ref(qa[rows], inp.k[:b], inp.v[:b], rows, inp.chunk_len, inp.sm_scale,
                                   inp.logit_scale, block=block)
        pieces.append(PieceData(b, vert, slash, rows, qa[rows].contiguous(), lse, a))
    return SeqData(inp.k, inp.v, inp.chunk_len, inp.sm_scale, inp.logit_scale, pieces)


def make_budget(vertical: Sequence[int], slash: Sequence[int], device: torch.device) -> LayerBudget:
    """One layer's device budget through :func:`layer_budgets` (so serving's quirks apply)."""
    heads = tuple(HeadBudget(VERTICAL_SLASH, int(v), int(s)) for v, s in zip(vertical, slash))
    return layer_budgets(SparseBudgets(heads=(heads,)), device)[0]


def evaluate(seqs: Sequence[SeqData], budget: LayerBudget, block: int = 64, reestimate_every: int = 1) -> Measured:
    """Recall and attended keys of every sampled query under ``budget`` (serving's selection).

    ``reestimate_every`` ``k > 1``: the pieces of each DCA chunk use the pattern of the last of its pieces ``0, k,
    2k, ...`` (among ``sd.pieces``), extended (:mod:`sgl_qwen1m.ops.sparse.reuse`); ``1`` (default): their own.
    """
    recalls, keys, causal = [], [], []
    for sd in seqs:
        anchors = estimation_anchors([(pc.q_pos0, pc.q_end) for pc in sd.pieces], sd.chunk_len, reestimate_every)
        for i, pc in enumerate(sd.pieces):
            est = sd.pieces[anchors[i]]
            mask = piece_mask(est.vertical, est.slash, est.q_end, budget, pc.rows, keys=pc.q_end)  # [n, H, q_end]
            kpos = torch.arange(pc.q_end, device=mask.device)
            mask &= (kpos[None, :] <= pc.rows[:, None])[:, None, :]
            _, lse = dca_attention_ref(pc.q, sd.k[: pc.q_end], sd.v[: pc.q_end], pc.rows, sd.chunk_len, sd.sm_scale,
                                       sd.logit_scale, block=block, key_mask=mask)
            recalls.append(attention_recall(lse, pc.lse_full).clamp(max=1.0))
            keys.append(mask.sum(-1))
            causal.append(pc.rows + 1)
    return Measured(torch.cat(recalls).cpu(), torch.cat(keys).cpu(), torch.cat(causal).cpu())
