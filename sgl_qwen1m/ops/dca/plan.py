"""Dual Chunk Attention math in plain torch: shape, position remapping, YaRN scale, and segment planning.

Dimension legend: T = tokens in the batch (token-major, requests back to back), B = requests,
H = query heads, Hkv = KV heads, D = head dim, C = ``chunk_len = chunk_size - local_size``.

Positions (Qwen2.5-1M, identical in vLLM and SGLang's ``DualChunkRotaryEmbedding``), for absolute position p:

* keys are rotated at ``p % C`` (stored once in the KV cache, request-independent);
* ``q_intra``  at ``p % C``                      attends its own DCA chunk, causally;
* ``q_succ``   at ``min(p % C + C, chunk_size)``  attends the previous chunk, non-causally;
* ``q_inter``  at ``min(2C - 1, chunk_size)``     attends all earlier chunks, non-causally;
* ``q_succ_critical`` at ``p % C + C`` and ``q_inter_critical`` at ``p % C + chunk_size`` are used only to
  estimate sparse patterns (continuous positions).

Planning turns a batch's host integers into segments: one *segment* is a run of consecutive query tokens
of one request, in one DCA chunk, against one contiguous key range, with one query variant. The three key
ranges of a query partition ``[0, p]``, so the segments together cost exactly the FLOPs of causal attention.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from sgl_qwen1m.config import DCAConfig

__all__ = [
    "FP8_KV_DTYPES",
    "DCAShape",
    "Stage",
    "Segment",
    "RequestSpan",
    "DCAPlan",
    "NUM_Q_VARIANTS",
    "dca_positions",
    "stage_of",
    "plan_extend",
    "plan_decode",
    "decode_stage_valid",
    "yarn_logit_scale",
    "DCARopeCaches",
]

NUM_Q_VARIANTS = 5  # q, q_succ, q_inter, q_succ_critical, q_inter_critical (SGLang concatenates them on dim -1)
# KV pool dtypes of SGLang's --kv-cache-dtype fp8_e4m3 / fp8_e5m2 (per-tensor scales, stored as uint8, read as these)
FP8_KV_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


@dataclass(frozen=True)
class DCAShape:
    """Static attention shape of one model shard (what both prefill operators are built from)."""

    num_qo_heads: int
    num_kv_heads: int
    head_dim: int
    q_dtype: torch.dtype
    kv_dtype: torch.dtype
    sm_scale: float

    @property
    def fp8_kv(self) -> bool:
        """The KV pool is FP8 (read as stored by every kernel, with the layer's per-tensor scales)."""
        return self.kv_dtype in FP8_KV_DTYPES

    def __post_init__(self) -> None:
        if self.num_qo_heads % self.num_kv_heads:
            raise ValueError(
                f"num_qo_heads={self.num_qo_heads} must be a multiple of num_kv_heads={self.num_kv_heads}"
            )


class Stage(enum.IntEnum):
    """Which DCA relation a segment covers; the value is also the query variant index in the 5-wide q."""

    INTRA = 0
    SUCC = 1
    INTER = 2


def dca_positions(positions: torch.Tensor, cfg: DCAConfig) -> dict[str, torch.Tensor]:
    """RoPE positions of keys and the five query variants.

    Parameters
    ----------
    positions : torch.Tensor
        ``[T]`` integer absolute positions.
    cfg : DCAConfig

    Returns
    -------
    dict[str, torch.Tensor]
        ``[T]`` int64 tensors keyed ``k``, ``q_intra``, ``q_succ``, ``q_inter``, ``q_succ_critical``,
        ``q_inter_critical``.
    """
    c, cs = cfg.chunk_len, cfg.chunk_size
    p = positions.long() % c
    return {
        "k": p,
        "q_intra": p,
        "q_succ": (p + c).clamp(max=cs),
        "q_inter": torch.full_like(p, min(2 * c - 1, cs)),
        "q_succ_critical": p + c,
        "q_inter_critical": p + cs,
    }


def stage_of(q_pos: torch.Tensor, k_pos: torch.Tensor, chunk_len: int) -> torch.Tensor:
    """DCA stage of every (query, key) pair: 0 intra, 1 successive, 2 inter (broadcasting).

    Only meaningful for ``k_pos <= q_pos``.
    """
    diff = q_pos.long() // chunk_len - k_pos.long() // chunk_len
    return diff.clamp(max=2)


def yarn_logit_scale(seq_lens: torch.Tensor, cfg: Optional[DCAConfig]) -> torch.Tensor:
    """Per-request logit multiplier ``s**2`` with ``s = max(1, 0.1 ln(L / L_train) + 1)``.

    Applied to queries (or the softmax scale), never to cached keys, so a cached prefix stays valid for
    requests of any length. Device-side and graph-safe: no host sync.

    Parameters
    ----------
    seq_lens : torch.Tensor
        ``[B]`` integer sequence lengths (the full prompt length during prefill).

    Returns
    -------
    torch.Tensor
        ``[B]`` float32.
    """
    if cfg is None or cfg.original_max_position_embeddings <= 0:
        return torch.ones(seq_lens.shape, dtype=torch.float32, device=seq_lens.device)
    ratio = seq_lens.float() / float(cfg.original_max_position_embeddings)
    s = (0.1 * torch.log(ratio) + 1.0).clamp(min=1.0)
    return s * s


@dataclass(frozen=True)
class Segment:
    """One virtual request for an attention kernel: ``q_len`` query tokens against one key range.

    ``q_start`` indexes the batch's token-major query rows; ``kv_start``/``kv_len`` are positions in
    request ``req``'s own sequence. Intra segments are causal (bottom-right aligned), others are not.
    """

    req: int
    stage: Stage
    q_start: int
    q_len: int
    kv_start: int
    kv_len: int


@dataclass(frozen=True)
class RequestSpan:
    """Host-side description of one request in a batch: ``prefix_len`` cached tokens, ``extend_len`` new ones."""

    prefix_len: int
    extend_len: int

    @property
    def seq_len(self) -> int:
        return self.prefix_len + self.extend_len


@dataclass(frozen=True)
class DCAPlan:
    """Segments of one batch, grouped by the kernel call that runs them.

    ``intra`` segments run in one causal call whose query rows are the batch's tokens in order;
    ``cross`` segments (successive first, then inter) run in one non-causal call whose query rows are
    gathered; ``num_succ`` of them are successive. ``num_tokens`` is T.
    """

    num_tokens: int
    intra: tuple[Segment, ...]
    cross: tuple[Segment, ...]
    num_succ: int

    @property
    def is_plain(self) -> bool:
        """True when no token attends across a DCA chunk boundary: plain causal attention."""
        return not self.cross


def _chunk_len(cfg: Optional[DCAConfig]) -> Optional[int]:
    return cfg.chunk_len if cfg is not None else None


def plan_extend(spans: Sequence[RequestSpan], cfg: Optional[DCAConfig]) -> DCAPlan:
    """Split every request's new tokens at DCA chunk boundaries and emit intra/succ/inter segments.

    Works for prefill without a prefix, chunked prefill (``prefix_len > 0``), prefix-cache hits and
    decode (``extend_len == 1``). With ``cfg=None`` (no DCA config) every request is one causal segment.
    """
    c = _chunk_len(cfg)
    intra: list[Segment] = []
    succ: list[Segment] = []
    inter: list[Segment] = []
    row = 0
    for r, span in enumerate(spans):
        if span.prefix_len < 0 or span.extend_len < 0:
            raise ValueError(f"request {r}: prefix_len and extend_len must be >= 0, got {span}")
        a, end = span.prefix_len, span.seq_len
        while a < end:
            chunk = a // c if c else 0
            b = min(end, (chunk + 1) * c) if c else end
            q_start, q_len = row + (a - span.prefix_len), b - a
            lo = chunk * c if c else 0
            intra.append(Segment(r, Stage.INTRA, q_start, q_len, lo, b - lo))
            if chunk >= 1:
                succ.append(Segment(r, Stage.SUCC, q_start, q_len, lo - c, c))
            if chunk >= 2:
                inter.append(Segment(r, Stage.INTER, q_start, q_len, 0, lo - c))
            a = b
        row += span.extend_len
    return DCAPlan(num_tokens=row, intra=tuple(intra), cross=tuple(succ + inter), num_succ=len(succ))


def plan_decode(seq_lens: Sequence[int], cfg: Optional[DCAConfig]) -> tuple[Segment, ...]:
    """Fixed-shape decode plan for CUDA graphs: exactly ``3 * B`` segments, request-major.

    Segment ``3 * i + s`` is stage ``s`` of request ``i``, so the kernel's ``[3B, H, D]`` output views as
    ``[B, 3, H, D]`` for the merge without a copy. A stage a request does not have (its token is in DCA chunk 0
    or 1) gets a one-key placeholder (key 0) whose result the merge discards; see :func:`decode_stage_valid`.
    """
    c = _chunk_len(cfg)
    segs: list[Segment] = []
    for i, n in enumerate(seq_lens):
        if n < 1:
            raise ValueError(f"request {i}: decode needs seq_len >= 1, got {n}")
        chunk = (n - 1) // c if c else 0
        lo = chunk * c if c else 0
        segs.append(Segment(i, Stage.INTRA, i, 1, lo, n - lo))
        segs.append(Segment(i, Stage.SUCC, i, 1, lo - c, c) if chunk >= 1 else Segment(i, Stage.SUCC, i, 1, 0, 1))
        segs.append(Segment(i, Stage.INTER, i, 1, 0, lo - c) if chunk >= 2 else Segment(i, Stage.INTER, i, 1, 0, 1))
    return tuple(segs)


def decode_stage_valid(seq_lens: torch.Tensor, cfg: Optional[DCAConfig]) -> torch.Tensor:
    """``[B, 3]`` bool: which decode stages are real (graph-safe, computed on the device of ``seq_lens``)."""
    chunk = (seq_lens.long() - 1) // cfg.chunk_len if cfg is not None else torch.zeros_like(seq_lens.long())
    stages = torch.arange(3, device=seq_lens.device).view(1, 3)
    return chunk.view(-1, 1) >= stages


@dataclass(frozen=True)
class DCARopeCaches:
    """cos/sin tables of DCA RoPE, each ``[rows, D]`` laid out ``[cos(D/2) | sin(D/2)]`` (NeoX style).

    The same tables SGLang's ``DualChunkRotaryEmbedding`` registers: ``q``, ``qc`` (succ, clamped), ``qc_no_clamp``
    and ``q_inter`` have ``chunk_len`` rows indexed by ``pos % chunk_len``; ``k`` has ``max_position_embeddings``
    rows indexed by ``pos``. The inter query uses row ``chunk_len - 1`` of ``qc`` for every token.
    """

    q: torch.Tensor
    qc: torch.Tensor
    k: torch.Tensor
    qc_no_clamp: torch.Tensor
    q_inter: torch.Tensor
    chunk_len: int

    @classmethod
    def build(
        cls,
        head_dim: int,
        max_position_embeddings: int,
        base: float,
        cfg: DCAConfig,
        dtype: torch.dtype = torch.float32,
        device: Optional[torch.device] = None,
    ) -> "DCARopeCaches":
        """Tables computed exactly as SGLang 0.5.17 computes them (fp32 angles, then cast to ``dtype``)."""
        c, cs = cfg.chunk_len, cfg.chunk_size
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float) / head_dim))
        ar = torch.arange(c, dtype=torch.float)

        def table(t: torch.Tensor) -> torch.Tensor:
            f = torch.outer(t, inv_freq)
            return torch.cat((f.cos(), f.sin()), dim=-1).to(dtype=dtype, device=device)

        return cls(
            q=table(ar),
            qc=table((ar + c).clamp(max=cs)),
            k=table(torch.arange(max_position_embeddings, dtype=torch.float) % c),
            qc_no_clamp=table(ar + c),
            q_inter=table(ar + cs),
            chunk_len=c,
        )
