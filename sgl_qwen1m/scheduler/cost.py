"""Cost model of one forward step of a qwen1m server (plain Python: no torch, no SGLang).

A step runs some *prefill pieces* (request ``r`` extends its cached prefix of ``P`` tokens by ``c`` new ones) and some
*decode rows* (one new token of a request whose KV holds ``S`` tokens). Its time is predicted as a dot product of
six work counts (:class:`StepWork`) with six per-GPU coefficients (:class:`sgl_qwen1m.scheduler.profile.Profile`):

======================  ====================================================================================
work count              what it counts (all layers summed unless said otherwise)
======================  ====================================================================================
``tokens``              tokens through the linear layers (prefill tokens + decode rows)
``dense_flops``         attention FLOPs of dense pieces: ``4 * head_dim * heads * layers * pairs``,
                        ``pairs = c * P + c * (c + 1) / 2`` (causal; DCA splits the same pairs into
                        intra/successive/inter stages, so the closed form holds for dense DCA too)
``sparse_blocks``       64x64 tiles of the vertical-slash kernel: ``sum_{layer, head} sum_{k=P+1}^{P+c}
                        min(k, budget[layer][head]) / 4096`` (keys per query = min(keys so far, v + s))
``estimate_key_layers`` the estimation pass: each sparse piece scores its last 64 queries against every key
                        before its end, in every layer: ``layers * (P + c)`` per piece, whatever ``c`` is
``kv_bytes``            decode rows' KV reads: ``S * kv_bytes_per_token`` (memory-bound)
``steps``               1 per step (launches, host planning, sampling, weight reads of a small batch)
======================  ====================================================================================

A prefill piece is sparse when the model has budgets, its sequence after the step (``P + c``) exceeds
``sparse_threshold`` and it has at least ``MIN_SPARSE_QUERIES`` queries (``config.runs_sparse``, the planner's rule).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Optional, Sequence

from sgl_qwen1m.config import DEFAULT_SPARSE_THRESHOLD, SPARSE_BLOCK, SparseBudgets, runs_sparse
from sgl_qwen1m.sizing import ModelShape, activation_bytes_per_token

__all__ = ["StepWork", "PrefillPiece", "Step", "CostModel", "WORK_FIELDS", "sum_min"]

_TILE = float(SPARSE_BLOCK * SPARSE_BLOCK)


@dataclass(frozen=True)
class StepWork:
    """Work counts of one step (or of several summed); units in the module docstring."""

    tokens: float = 0.0
    dense_flops: float = 0.0
    sparse_blocks: float = 0.0
    estimate_key_layers: float = 0.0
    kv_bytes: float = 0.0
    steps: float = 0.0

    def __add__(self, other: "StepWork") -> "StepWork":
        return StepWork(*(getattr(self, f) + getattr(other, f) for f in WORK_FIELDS))

    def vector(self) -> list[float]:
        """The counts in :data:`WORK_FIELDS` order."""
        return [float(getattr(self, f)) for f in WORK_FIELDS]


WORK_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(StepWork))


@dataclass(frozen=True)
class PrefillPiece:
    """``extend`` new tokens of request ``rid`` after ``prefix`` cached ones."""

    rid: str
    prefix: int
    extend: int

    def __post_init__(self) -> None:
        if self.prefix < 0 or self.extend < 1:
            raise ValueError(f"prefill piece {self.rid}: prefix must be >= 0 and extend >= 1, "
                             f"got prefix={self.prefix} extend={self.extend}")


@dataclass(frozen=True)
class Step:
    """One forward step: prefill pieces and decode rows (``decode_lens[i]``: KV tokens of decode row i)."""

    prefill: tuple[PrefillPiece, ...] = ()
    decode_lens: tuple[int, ...] = ()

    @property
    def prefill_tokens(self) -> int:
        return sum(p.extend for p in self.prefill)

    @property
    def tokens(self) -> int:
        return self.prefill_tokens + len(self.decode_lens)


def sum_min(lo: int, hi: int, cap: float) -> float:
    """``sum_{k=lo}^{hi} min(k, cap)`` in closed form (0 when ``hi < lo``)."""
    if hi < lo:
        return 0.0
    if cap >= hi:
        return (lo + hi) * (hi - lo + 1) / 2.0
    if cap <= lo:
        return cap * (hi - lo + 1)
    c = int(cap)  # lo < cap < hi: the ramp lo..c, then cap for c+1..hi
    return (lo + c) * (c - lo + 1) / 2.0 + cap * (hi - c)


@dataclass(frozen=True)
class CostModel:
    """Work counts of steps for one model shape.

    ``budgets``: per layer, per query head ``vertical + slash`` keys (None: dense DCA, no sparse prefill);
    ``dca_chunk_len``: DCA ``chunk_size - local_size`` (None: no DCA); a piece crossing a DCA chunk boundary is one
    sparse piece per DCA chunk, each with its own estimation pass. ``kv_dtype_bytes``: 2 (bf16) or 1 (fp8).
    """

    shape: ModelShape
    budgets: Optional[tuple[tuple[int, ...], ...]] = None
    sparse_threshold: int = DEFAULT_SPARSE_THRESHOLD
    dca_chunk_len: Optional[int] = None
    kv_dtype_bytes: int = 2
    _flat: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.budgets is not None:
            if len(self.budgets) != self.shape.layers or any(len(b) != self.shape.heads for b in self.budgets):
                raise ValueError(f"budgets must be {self.shape.layers} layers x {self.shape.heads} heads, got "
                                 f"{len(self.budgets)} x {sorted({len(b) for b in self.budgets})}")
            if any(k < 1 for b in self.budgets for k in b):
                raise ValueError("every head budget (vertical + slash) must be >= 1")
        if self.sparse_threshold < 0:
            raise ValueError(f"sparse_threshold must be >= 0, got {self.sparse_threshold}")
        if self.dca_chunk_len is not None and self.dca_chunk_len < 1:
            raise ValueError(f"dca_chunk_len must be >= 1, got {self.dca_chunk_len}")
        flat = tuple(sorted(k for b in self.budgets for k in b)) if self.budgets is not None else ()
        object.__setattr__(self, "_flat", flat)

    @classmethod
    def from_sparse_budgets(cls, shape: ModelShape, budgets: Optional[SparseBudgets], **kw: object) -> "CostModel":
        """From :class:`SparseBudgets`; a ``vertical == 30`` head counts 130 columns, as the kernels run it
        (``ops/sparse/plan.py:layer_budgets``)."""
        if budgets is None:
            return cls(shape, None, **kw)  # type: ignore[arg-type]
        rows = tuple(tuple((h.vertical + 100 if h.vertical == 30 else h.vertical) + h.slash for h in layer)
                     for layer in budgets.heads)
        return cls(shape, rows, **kw)  # type: ignore[arg-type]

    @property
    def sparse(self) -> bool:
        return self.budgets is not None

    @property
    def activation_bytes_per_token(self) -> int:
        """Live activation bytes per token of a step (``sizing.activation_bytes_per_token``)."""
        return activation_bytes_per_token(self.shape)

    def is_sparse_piece(self, prefix: int, extend: int) -> bool:
        """Whether a prefill piece runs the sparse path (mirrors ``plan_pieces``)."""
        return self.sparse and runs_sparse(prefix + extend, extend, self.sparse_threshold)

    def _sparse_pairs(self, lo: int, hi: int) -> float:
        """Query-key pairs over all layers and heads for queries whose key counts run ``lo..hi``."""
        return sum(sum_min(lo, hi, float(b)) for b in self._flat)

    def _dca_pieces(self, prefix: int, extend: int) -> list[tuple[int, int]]:
        """``(prefix, extend)`` of each DCA chunk the extend range spans (one piece without DCA)."""
        if self.dca_chunk_len is None:
            return [(prefix, extend)]
        out, pos, end, cl = [], prefix, prefix + extend, self.dca_chunk_len
        while pos < end:
            stop = min(end, (pos // cl + 1) * cl)
            out.append((pos, stop - pos))
            pos = stop
        return out

    def prefill_work(self, prefix: int, extend: int) -> StepWork:
        """Work of one prefill piece without the step's fixed part (``steps`` 0)."""
        if prefix < 0 or extend < 0:
            raise ValueError(f"prefix and extend must be >= 0, got prefix={prefix} extend={extend}")
        if extend == 0:
            return StepWork()
        s = self.shape
        if not self.is_sparse_piece(prefix, extend):
            pairs = extend * prefix + extend * (extend + 1) / 2.0
            return StepWork(tokens=extend, dense_flops=4.0 * s.head_dim * s.heads * s.layers * pairs)
        blocks = est = 0.0
        for p, c in self._dca_pieces(prefix, extend):
            blocks += self._sparse_pairs(p + 1, p + c) / _TILE
            est += s.layers * (p + c)
        return StepWork(tokens=extend, sparse_blocks=blocks, estimate_key_layers=est)

    def decode_work(self, kv_len: int) -> StepWork:
        """Work of one decode row whose KV holds ``kv_len`` tokens."""
        if kv_len < 0:
            raise ValueError(f"decode kv_len must be >= 0, got {kv_len}")
        return StepWork(tokens=1, kv_bytes=float(kv_len) * self.shape.kv_bytes_per_token(self.kv_dtype_bytes))

    def step_work(self, step: Step) -> StepWork:
        """Work of a whole step, fixed part included."""
        total = StepWork(steps=1.0)
        for p in step.prefill:
            total = total + self.prefill_work(p.prefix, p.extend)
        for n in step.decode_lens:
            total = total + self.decode_work(n)
        return total

    def decode_many(self, kv_lens: Sequence[int]) -> StepWork:
        """Work of several decode rows (no fixed part)."""
        total = StepWork()
        for n in kv_lens:
            total = total + self.decode_work(n)
        return total
