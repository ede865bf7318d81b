"""Vertical-slash sparse prefill: host planning, shared constants and the per-batch state, in plain torch.

Dimension legend: P = sparse *pieces* in the batch (one per request and DCA chunk, like intra segments),
H = query heads on this rank, L = longest key range of a piece, NB = ``ceil(L / 64)`` 64-wide key blocks,
MB = most 64-row query blocks of any piece.

Semantics of the four steps (plan -> estimate -> select -> attend). The fp32 oracles and the torch selection path
in :mod:`sgl_qwen1m.ops.sparse.reference` implement the same rules; the Triton kernels are in ``estimate.py``,
``select.py`` and ``attention.py``:

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

Planning runs on host ints once per batch; the state it builds lives on the device and is shared by every layer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from sgl_qwen1m.ops.dca.plan import DCAPlan, RequestSpan
from sgl_qwen1m.config import MIN_SPARSE_QUERIES, SPARSE_BLOCK, DCAConfig, SparseBudgets, runs_sparse

__all__ = [
    "BLOCK",
    "MIN_SPARSE_QUERIES",
    "PAD",
    "ESTIMATE_VARIANTS",
    "Piece",
    "PiecePlan",
    "LayerBudget",
    "layer_budgets",
    "plan_pieces",
    "SparseState",
    "SparsePattern",
]

BLOCK = SPARSE_BLOCK  # query rows and key columns per tile; DCA chunk_len must be a multiple of it (config checks it)
PAD = 2**31 - 1  # index padding (sorts last)
_FORCED = 128.0  # above any real score: a column/diagonal sum over <= 64 softmax rows is <= 64
# Query variant used to *score* keys of each DCA stage (intra, succ, inter): the continuous-position variants
# for the two cross stages (SGLang's 5-wide q: intra, succ, inter, succ_critical, inter_critical).
ESTIMATE_VARIANTS = (0, 3, 4)


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

    A request is sparse when its sequence length after this extend (``prefix + extend``) exceeds ``threshold`` and
    it extends by at least :data:`MIN_SPARSE_QUERIES` tokens. Other requests ride along densely (full pattern, exact)
    so that the batch needs one kernel launch per layer; in particular the extend-1 rows that decode requests become
    in a mixed batch (``--enable-mixed-chunk``) attend every key, as a decode step would, and run no estimation.
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
                sparse=runs_sparse(spans[seg.req].seq_len, spans[seg.req].extend_len, threshold),
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


@dataclass
class SparseState:
    """Per-batch device tensors of the sparse plan (shared by every layer), from ``SparsePrefill.plan_extend``."""

    plan: PiecePlan
    req_to_token: torch.Tensor  # [R, ctx] int32 slot table the piece table's column 0 indexes
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
    """One layer's selected pattern (``SparsePrefill.pattern``).

    ``v_idx`` ``[P, H, KV]`` / ``s_idx`` ``[P, H, KS]`` int32 chosen columns / diagonals (ascending, PAD-padded);
    ``cov`` ``[P, H, NB]`` int8 and ``diag`` ``[P, H, NB]`` int32 block diagonals; ``dcnt`` / ``vcnt``
    ``[P, H, MB, 3]`` int32 per-row-block loop bounds.
    """

    v_idx: torch.Tensor
    s_idx: torch.Tensor
    cov: torch.Tensor
    diag: torch.Tensor
    dcnt: torch.Tensor
    vcnt: torch.Tensor
