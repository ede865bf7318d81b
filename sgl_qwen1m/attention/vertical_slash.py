"""Vertical-slash sparse prefill: planning, critical-token selection and block patterns, in plain torch.

Dimension legend: P = sparse *pieces* in the batch (one per request and DCA chunk, like intra segments),
H = query heads on this rank, L = longest key range of a piece, NB = ``ceil(L / 64)`` 64-wide key blocks,
MB = most 64-row query blocks of any piece.

Semantics (the fp32 oracles in :mod:`sgl_qwen1m.attention.sparse_reference` implement the same rules):

* **Estimation.** The last ``n = min(last_q, q_len)`` queries of a piece score every key ``c < q_end`` in fp32 with
  one softmax over the whole prefix. The query variant depends on the key's DCA region, with *continuous* positions
  for the critical variants: own chunk -> ``q_intra``, previous chunk -> ``q_succ_critical``, earlier ->
  ``q_inter_critical``. ``vertical[c]`` sums the probabilities of column ``c``; ``slash[o]`` sums diagonal
  ``o = pos - c`` (continuous distance), so slash lines stay straight across DCA chunk boundaries.
* **Selection.** The first :data:`SINK_COLUMNS` columns and the last :data:`LOCAL_DIAGONALS` diagonals are forced
  in; then top-``vertical_size`` columns and top-``slash_size`` diagonals per head (budgets per layer and head).
* **Block pattern.** A diagonal ``o`` crosses, for every 64-row query block ``rb``, the key blocks ``rb - o // 64``
  and (unless ``o % 64 == 0``) ``rb - o // 64 - 1``. So a head's slash set becomes a set of *block diagonals*
  ``d`` (key block ``rb - d``) shared by all row blocks of the piece; whole 64x64 tiles are computed (a superset of
  the exact diagonals, as in MInference). Vertical columns add single keys not already inside a chosen tile.
  A query at position ``r`` attends key ``c <= r`` iff ``r // 64 - c // 64`` is a chosen block diagonal or ``c`` is
  a chosen column. Block diagonal 0 (the local window) is always chosen, so every query sees itself.

Everything here runs on any device, does no host sync, and has no per-head Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from sgl_qwen1m.attention.dca import DCAPlan, RequestSpan
from sgl_qwen1m.config import LOCAL_DIAGONALS, SINK_COLUMNS, DCAConfig, SparseBudgets

__all__ = [
    "BLOCK",
    "PAD",
    "Piece",
    "PiecePlan",
    "LayerBudget",
    "layer_budgets",
    "plan_pieces",
    "select_vertical_slash",
    "block_pattern",
    "loop_bounds",
    "computed_keys",
]

BLOCK = 64  # query rows and key columns per tile; DCA chunk_len must be a multiple of it for the sparse path
PAD = 2**31 - 1  # index padding (sorts last)
_FORCED = 128.0  # above any real score: a column/diagonal sum over <= 64 softmax rows is <= 64


@dataclass(frozen=True)
class Piece:
    """Query tokens of one request inside one DCA chunk.

    Rows ``q_row0 .. q_row0 + q_len`` of the batch hold positions ``q_pos0 .. q_end``; keys are ``[0, q_end)``;
    ``c0`` is the start of the DCA chunk (0 without DCA). ``sparse`` False runs the piece densely (full pattern).
    """

    req: int
    q_row0: int
    q_pos0: int
    q_len: int
    c0: int
    sparse: bool

    @property
    def q_end(self) -> int:
        return self.q_pos0 + self.q_len

    @property
    def first_block(self) -> int:
        return self.q_pos0 // BLOCK

    @property
    def num_blocks(self) -> int:
        return (self.q_end - 1) // BLOCK - self.first_block + 1


@dataclass(frozen=True)
class PiecePlan:
    """Host-side sparse plan of one prefill batch."""

    pieces: tuple[Piece, ...]
    last_q: int
    chunk_len: Optional[int]

    @property
    def num_pieces(self) -> int:
        return len(self.pieces)

    @property
    def num_blocks(self) -> int:
        return sum(p.num_blocks for p in self.pieces)

    @property
    def max_blocks(self) -> int:
        return max(p.num_blocks for p in self.pieces)

    @property
    def max_len(self) -> int:
        """L: the longest key range of any piece."""
        return max(p.q_end for p in self.pieces)

    @property
    def key_blocks(self) -> int:
        """NB = ceil(L / 64)."""
        return -(-self.max_len // BLOCK)

    @property
    def any_sparse(self) -> bool:
        return any(p.sparse for p in self.pieces)

    def piece_table(self) -> list[list[int]]:
        """Rows ``[req, q_row0, q_pos0, q_len, c0, n_est, 0, 0]`` (the kernels' ``[P, 8]`` int32 layout)."""
        return [[p.req, p.q_row0, p.q_pos0, p.q_len, p.c0, min(self.last_q, p.q_len), 0, 0] for p in self.pieces]

    def block_table(self) -> list[list[int]]:
        """Rows ``[piece, j]``: one per 64-row query block, ``j`` counted from the piece's first block."""
        return [[i, j] for i, p in enumerate(self.pieces) for j in range(p.num_blocks)]


def plan_pieces(
    plan: DCAPlan,
    spans: Sequence[RequestSpan],
    cfg: Optional[DCAConfig],
    threshold: int,
    last_q: int,
) -> Optional[PiecePlan]:
    """Pieces of a prefill batch, or None when no request attends more than ``threshold`` keys.

    A request is sparse when its sequence length after this extend (``prefix + extend``) exceeds ``threshold``.
    Requests below it ride along densely (full pattern) so that the batch needs one kernel launch per layer.
    """
    if threshold < 0:
        raise ValueError(f"sparse threshold must be >= 0, got {threshold}")
    if cfg is not None and cfg.chunk_len % BLOCK:
        raise ValueError(
            f"sparse prefill needs DCA chunk_len (chunk_size - local_size) to be a multiple of {BLOCK}, "
            f"got {cfg.chunk_len}"
        )
    pieces = []
    for seg in plan.intra:
        if seg.q_len == 0:
            continue
        q_end = seg.kv_start + seg.kv_len
        pieces.append(
            Piece(
                req=seg.req,
                q_row0=seg.q_start,
                q_pos0=q_end - seg.q_len,
                q_len=seg.q_len,
                c0=seg.kv_start,
                sparse=spans[seg.req].seq_len > threshold,
            )
        )
    if not any(p.sparse for p in pieces):
        return None
    return PiecePlan(tuple(pieces), last_q, cfg.chunk_len if cfg is not None else None)


@dataclass(frozen=True)
class LayerBudget:
    """Per-head budgets of one layer on the device, plus host maxima for ``topk``."""

    vertical: torch.Tensor  # [H] int64
    slash: torch.Tensor  # [H] int64
    max_vertical: int
    max_slash: int
    stacked: torch.Tensor = field(init=False)  # [2, H] int32 (vertical, slash) for the selection kernel

    def __post_init__(self) -> None:
        object.__setattr__(self, "stacked", torch.stack([self.vertical, self.slash]).to(torch.int32).contiguous())


def layer_budgets(budgets: SparseBudgets, device: torch.device) -> list[LayerBudget]:
    """Device budgets for every layer (heads already sliced for this tensor-parallel rank).

    A head with ``vertical_size == 30`` runs with 130 columns, as in Qwen's released code (vLLM and SGLang).
    """
    out = []
    for layer in budgets.heads:
        v = [b.vertical + 100 if b.vertical == 30 else b.vertical for b in layer]
        s = [b.slash for b in layer]
        out.append(
            LayerBudget(
                torch.tensor(v, dtype=torch.int64, device=device),
                torch.tensor(s, dtype=torch.int64, device=device),
                max(v),
                max(s),
            )
        )
    return out


def _topk_sorted(scores: torch.Tensor, budget: torch.Tensor, kmax: int) -> torch.Tensor:
    """Indices of each row's top-``budget[h]`` entries (scores < 0 never count), ascending, PAD-padded.

    scores ``[P, H, L]`` float32; budget ``[H]``; returns ``[P, H, max(kmax, 1)]`` int32.
    """
    k = max(1, min(kmax, scores.shape[-1]))
    val, idx = torch.topk(scores, k, dim=-1, sorted=True)
    rank = torch.arange(k, device=scores.device)
    keep = (rank.view(1, 1, k) < budget.view(1, -1, 1)) & (val >= 0)
    idx = torch.where(keep, idx, PAD)
    return torch.sort(idx, dim=-1).values.to(torch.int32)


def select_vertical_slash(
    vertical: torch.Tensor,
    slash: torch.Tensor,
    q_end: torch.Tensor,
    budget: LayerBudget,
    sink: int = SINK_COLUMNS,
    local: int = LOCAL_DIAGONALS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Critical columns and diagonals of every piece and head.

    Parameters
    ----------
    vertical, slash : torch.Tensor
        ``[P, H, L]`` float32 column sums and diagonal sums (offset ``o = pos - c``); modified in place.
    q_end : torch.Tensor
        ``[P]`` int64: keys (and diagonals) ``>= q_end`` do not exist for that piece.
    budget : LayerBudget

    Returns
    -------
    (v_idx ``[P, H, KV]``, s_idx ``[P, H, KS]``) int32, ascending, padded with :data:`PAD`.
    """
    length = vertical.shape[-1]
    ar = torch.arange(length, device=vertical.device)
    absent = ar.view(1, 1, -1) >= q_end.view(-1, 1, 1)
    for x, n in ((vertical, sink), (slash, local)):
        n = min(n, length)
        x[..., :n] = _FORCED + (n - ar[:n]).to(x.dtype)  # forced, earliest first on ties with the budget
        x.masked_fill_(absent, -1.0)
    return _topk_sorted(vertical, budget.vertical, budget.max_vertical), _topk_sorted(
        slash, budget.slash, budget.max_slash
    )


def block_pattern(s_idx: torch.Tensor, dense: torch.Tensor, num_key_blocks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Block diagonals of the slash set.

    Parameters
    ----------
    s_idx : ``[P, H, KS]`` int32 diagonals (PAD-padded).
    dense : ``[P]`` bool: pieces that run densely get every block diagonal.
    num_key_blocks : NB.

    Returns
    -------
    cov : ``[P, H, NB]`` int8, 1 where block diagonal ``d`` is chosen (``cov[..., 0] == 1`` always).
    diag : ``[P, H, NB]`` int32 chosen block diagonals ascending, PAD-padded.
    """
    p, h, _ = s_idx.shape
    nb = num_key_blocks
    s = s_idx.long()
    valid = s != PAD
    d1 = torch.where(valid, s // BLOCK, nb)
    d2 = torch.where(valid & (s % BLOCK != 0), s // BLOCK + 1, nb)
    cov = torch.zeros(p, h, nb + 1, dtype=torch.int8, device=s_idx.device)
    one = torch.ones((), dtype=torch.int8, device=s_idx.device).expand_as(d1)
    cov.scatter_(2, d1.clamp(max=nb), one)
    cov.scatter_(2, d2.clamp(max=nb), one)
    cov = cov[..., :nb].contiguous()
    cov[..., 0] = 1
    cov.masked_fill_(dense.view(p, 1, 1), 1)
    ar = torch.arange(nb, device=s_idx.device, dtype=torch.int32)
    diag = torch.sort(torch.where(cov.bool(), ar, PAD), dim=-1).values
    return cov, diag


def loop_bounds(
    diag: torch.Tensor,
    v_idx: torch.Tensor,
    first_block: torch.Tensor,
    c0: torch.Tensor,
    chunk_len: Optional[int],
    max_blocks: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per (piece, head, row block) loop ranges of the sparse kernel, split by DCA region.

    With row block ``rb`` in DCA chunk ``[c0, c0 + C)``: key blocks of the own chunk are ``d <= rb - c0/64``,
    the previous chunk ``d <= rb - (c0 - C)/64``, earlier chunks ``d <= rb``. Columns split likewise at
    ``c0 - C`` and ``c0``; the intra columns end where the leading band of block diagonals begins: with block
    diagonals ``0 .. band - 1`` all chosen, every column from ``64 * (rb - band + 1)`` on is covered by them (the
    kernel would load and mask it), so the intra column range stops there (never below ``c0``).

    Parameters
    ----------
    diag : ``[P, H, NB]`` int32 ascending; v_idx : ``[P, H, KV]`` int32 ascending.
    first_block, c0 : ``[P]`` int64.
    chunk_len : DCA chunk length or None.

    Returns
    -------
    dcnt : ``[P, H, MB, 3]`` int32 ends of the intra / succ / inter block-diagonal ranges in ``diag``.
    vcnt : ``[P, H, MB, 3]`` int32 ends of the inter / succ / intra column ranges in ``v_idx``.
    """
    p, h, nb = diag.shape
    rb = first_block.view(p, 1) + torch.arange(max_blocks, device=diag.device).view(1, -1)  # [P, MB]
    prev = (c0 - chunk_len).clamp(min=0) if chunk_len is not None else torch.zeros_like(c0)
    band = (diag == torch.arange(nb, device=diag.device, dtype=diag.dtype)).sum(-1)  # [P, H] leading 0, 1, ...

    def count(seq: torch.Tensor, vals: torch.Tensor, right: bool) -> torch.Tensor:
        vals = vals.view(p, -1, vals.shape[-1]).expand(p, h, vals.shape[-1]).to(seq.dtype).contiguous()
        return torch.searchsorted(seq.contiguous(), vals, right=right).to(torch.int32)

    dcnt = torch.stack(
        [
            count(diag, rb - (c0 // BLOCK).view(p, 1), True),
            count(diag, rb - (prev // BLOCK).view(p, 1), True),
            count(diag, rb, True),
        ],
        dim=-1,
    )
    mb = rb.shape[1]
    band_start = torch.maximum((rb.view(p, 1, mb) - band.view(p, h, 1) + 1) * BLOCK, c0.view(p, 1, 1))
    vcnt = torch.stack(
        [
            count(v_idx, prev.view(p, 1).expand(p, mb), False),
            count(v_idx, c0.view(p, 1).expand(p, mb), False),
            count(v_idx, band_start, False),
        ],
        dim=-1,
    )
    return dcnt.contiguous(), vcnt.contiguous()


def computed_keys(
    plan: PiecePlan, dcnt: torch.Tensor, vcnt: torch.Tensor
) -> torch.Tensor:
    """Upper bound of (query-block, key) pairs the sparse kernel computes, per head: ``[H]`` int64 (64 rows each).

    Counts whole 64-key tiles for block diagonals and every loaded column (covered ones included, as the
    kernel computes them masked). Used for TFLOP/s and density reports, not on the hot path.
    """
    tot = None
    for i, pc in enumerate(plan.pieces):
        nbk = pc.num_blocks
        tiles = dcnt[i, :, :nbk, 2].long() * BLOCK
        cols = vcnt[i, :, :nbk, 2].long()  # all columns before the row block are visited
        s = (tiles + cols).sum(-1)
        tot = s if tot is None else tot + s
    return tot
