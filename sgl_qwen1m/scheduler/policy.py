"""Step policy: each forward step, which requests ride along and how many prefill tokens run.

Rules, in order (one :meth:`StepPolicy.plan_step` call per step):

1. Every decoding request contributes its one token (a mixed batch), so no stream waits for a prefill to end.
2. Waiting prompts are admitted short ones first (``prompt <= long_prompt_tokens``, in arrival order), then the
   long ones' remaining chunks: a new 2K-token chat does not queue behind a million-token prompt.
3. Each admitted piece is as large as fits: the predicted step time (:class:`CostModel` work times the GPU's
   :class:`Profile`) stays under ``step_target_s`` and the step's tokens under the activation bound. A long prompt's
   chunk therefore grows when the step has room and shrinks as its prefix (dense DCA: quadratic attention; sparse: the
   estimation pass over every earlier key) makes each token dearer; taking the largest chunk that fits also means the
   fewest steps, so the estimation pass's fixed cost per chunk is paid as few times as the target allows.
4. The first piece of a step has a floor: the largest chunk whose added time is within ``chunk_floor_factor``
   (default 1.5) times what the smallest piece (``min_progress_tokens``) adds. Deep into a million-token prompt the
   estimation pass over every earlier key is a fixed cost per chunk; a chunk squeezed under the target by it would
   pay that cost for a few hundred tokens (efficiency far below a half), and when even the smallest piece is over
   the target (decode rows alone over it, or the fixed cost itself) the old fallback ran 64 tokens per step. So a
   step may exceed the target (``feasible`` False) rather than run a chunk whose useful work is under a half of its
   fixed cost. The 2026-12-08 H100 run showed why: with a 64-token fallback, a profile that overpredicted the
   estimation pass turned a 62 s prefill into a 1,234 s plan (``benchmarks/results/scheduler-h100/``).

Only one request is chunked per step (as in SGLang's ``PrefillAdder``): after a partially admitted prompt the step
is closed.

The latency goal is one knob: ``QWEN1M_ITL_TARGET_MS`` (environment of the server process; default 1000, a p99
inter-token-latency goal). The step target is ``itl_target_ms * step_fraction`` (default 0.8): headroom for the
model's error and for a step that finishes just after a token was due.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Mapping, Optional, Sequence

from .cost import CostModel, PrefillPiece, Step, StepWork
from .profile import Profile

__all__ = ["ITL_ENV", "ITL_RANGE_MS", "parse_itl_target_ms", "PolicyConfig", "Waiting", "StepDecision", "StepPolicy"]

ITL_ENV = "QWEN1M_ITL_TARGET_MS"
ITL_RANGE_MS = (10.0, 600_000.0)  # what the environment may set (a 10 ms goal is already below any 1M decode step)


def parse_itl_target_ms(raw: str) -> float:
    """``QWEN1M_ITL_TARGET_MS``'s text -> milliseconds; ValueError naming the value and the allowed range."""
    lo, hi = ITL_RANGE_MS
    allowed = f"allowed: {lo:g} to {hi:g} milliseconds, default {PolicyConfig.itl_target_ms:g}"
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{ITL_ENV}={raw!r} is not a number of milliseconds ({allowed})") from None
    if not (math.isfinite(value) and lo <= value <= hi):
        raise ValueError(f"{ITL_ENV}={raw!r} is out of range ({allowed})")
    return value


@dataclass(frozen=True)
class PolicyConfig:
    """Knobs of :class:`StepPolicy` (defaults are the shipped behaviour).

    ``max_step_tokens``: the activation bound, tokens per step (prefill + decode rows); with
    ``activation_budget_bytes`` it is derived as ``budget // CostModel.activation_bytes_per_token`` instead.
    ``granule``: chunk sizes of a partially admitted prompt are multiples of this (the 64-row sparse tile).
    ``chunk_floor_factor``: a step's first piece is at least the largest chunk that adds at most this many times
    what the smallest piece (``min_progress_tokens``) adds (rule 4 of the module docstring); 1: no floor.
    """

    itl_target_ms: float = 1000.0
    step_fraction: float = 0.8
    max_step_tokens: int = 16384
    activation_budget_bytes: Optional[int] = None
    min_progress_tokens: int = 64
    chunk_floor_factor: float = 1.5
    granule: int = 64
    long_prompt_tokens: int = 32768

    def __post_init__(self) -> None:
        if not self.itl_target_ms > 0:
            raise ValueError(f"itl_target_ms must be > 0, got {self.itl_target_ms}")
        if not 0 < self.step_fraction <= 1:
            raise ValueError(f"step_fraction must be in (0, 1], got {self.step_fraction}")
        for name in ("max_step_tokens", "min_progress_tokens", "granule", "long_prompt_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not (math.isfinite(self.chunk_floor_factor) and self.chunk_floor_factor >= 1):
            raise ValueError(f"chunk_floor_factor must be a finite number >= 1, got {self.chunk_floor_factor}")
        if self.activation_budget_bytes is not None and self.activation_budget_bytes < 1:
            raise ValueError(f"activation_budget_bytes must be >= 1, got {self.activation_budget_bytes}")

    @property
    def step_target_s(self) -> float:
        return self.itl_target_ms * self.step_fraction / 1000.0

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None, **kw: object) -> "PolicyConfig":
        """Defaults, with ``itl_target_ms`` from ``QWEN1M_ITL_TARGET_MS`` when set."""
        env = os.environ if env is None else env
        raw = env.get(ITL_ENV, "").strip()
        if raw:
            kw["itl_target_ms"] = parse_itl_target_ms(raw)
        return cls(**kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Waiting:
    """A prompt with ``prompt_len - done`` tokens still to prefill (``done`` > 0: its earlier chunks ran)."""

    rid: str
    prompt_len: int
    done: int = 0
    arrival_s: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.done < self.prompt_len:
            raise ValueError(f"request {self.rid}: done must be in [0, prompt_len={self.prompt_len}), got {self.done}")

    @property
    def remaining(self) -> int:
        return self.prompt_len - self.done


@dataclass(frozen=True)
class StepDecision:
    """What one step runs and its predicted time; ``feasible`` False: the target could not be met (progress
    fallback or decode rows alone over it)."""

    step: Step
    predicted_s: float
    target_s: float
    feasible: bool

    @property
    def prefill(self) -> tuple[PrefillPiece, ...]:
        return self.step.prefill


class StepPolicy:
    """Picks each step's batch from the cost model and a GPU profile (see the module docstring)."""

    def __init__(self, cost: CostModel, profile: Profile, cfg: Optional[PolicyConfig] = None) -> None:
        self.cost = cost
        self.profile = profile
        self.scale = 1.0
        self.cfg = cfg or PolicyConfig.from_env()
        per_tok = cost.activation_bytes_per_token
        cap = self.cfg.max_step_tokens
        if self.cfg.activation_budget_bytes is not None:
            cap = self.cfg.activation_budget_bytes // per_tok
            if cap < 1:
                raise ValueError(f"activation_budget_bytes={self.cfg.activation_budget_bytes} holds no token "
                                 f"({per_tok} bytes per token)")
        self.max_step_tokens = cap

    def predict_s(self, work: StepWork) -> float:
        """Predicted seconds: the profile's, times ``scale`` (1.0; a serving planner sets it from the steps it
        measures, :class:`sgl_qwen1m.scheduler.serving.PassPlanner`)."""
        return self.profile.predict_s(work) * self.scale

    def step_s(self, step: Step) -> float:
        """Predicted seconds of a whole step."""
        return self.predict_s(self.cost.step_work(step))

    def largest_fit(self, base: StepWork, prefix: int, limit: int, budget_s: float) -> int:
        """Largest ``c <= limit`` whose piece keeps the step within ``budget_s``; 0 if none.

        Candidates are ``limit`` and the sizes that end the chunk on a multiple of ``granule`` (so a chunk can end
        exactly on a DCA chunk boundary instead of spilling a few queries, and a second estimation pass, into the
        next DCA chunk). Step time is monotone in ``c``, so a binary search suffices."""
        if limit < 1:
            return 0

        def fits(c: int) -> bool:
            return self.predict_s(base + self.cost.prefill_work(prefix, c)) <= budget_s

        if fits(limit):
            return limit
        g = self.cfg.granule
        first = g - prefix % g  # smallest c that ends on a multiple of g
        if first >= limit:
            return 0
        lo, hi = -1, (limit - 1 - first) // g  # candidate k: c = first + k * g < limit
        while lo < hi:
            mid = (lo + hi + 1) // 2
            if fits(first + mid * g):
                lo = mid
            else:
                hi = mid - 1
        return first + lo * g if lo >= 0 else 0

    def floor_chunk(self, base: StepWork, prefix: int, limit: int) -> int:
        """Rule 4's floor: the largest ``c <= limit`` whose piece adds at most ``chunk_floor_factor`` times what the
        smallest piece (``min_progress_tokens``) adds to the step; never less than that smallest piece."""
        small = min(self.cfg.min_progress_tokens, limit)
        if self.cfg.chunk_floor_factor == 1:
            return small
        base_s = self.predict_s(base)
        added = self.predict_s(base + self.cost.prefill_work(prefix, small)) - base_s
        return max(small, self.largest_fit(base, prefix, limit, base_s + self.cfg.chunk_floor_factor * added))

    def order(self, waiting: Sequence[Waiting]) -> list[Waiting]:
        """Short prompts first (arrival order), then long ones (arrival order)."""
        long_min = self.cfg.long_prompt_tokens
        return sorted(waiting, key=lambda w: (w.prompt_len > long_min, w.arrival_s))

    def plan_step(self, decode_lens: Sequence[int], waiting: Sequence[Waiting]) -> StepDecision:
        """One step's batch: every decode row plus as much waiting prefill as the target and the memory allow."""
        target = self.cfg.step_target_s
        base = StepWork(steps=1.0) + self.cost.decode_many(decode_lens)
        tokens_left = self.max_step_tokens - len(decode_lens)
        pieces: list[PrefillPiece] = []
        feasible = self.predict_s(base) <= target
        for w in self.order(waiting):
            if tokens_left < 1:
                break
            limit = min(w.remaining, tokens_left)
            c = self.largest_fit(base, w.done, limit, target) if feasible else 0
            if not pieces and c < limit:  # progress every step, and never a chunk dwarfed by its fixed cost (rule 4)
                c = max(c, self.floor_chunk(base, w.done, limit))
            elif c == 0:
                break
            pieces.append(PrefillPiece(w.rid, w.done, c))
            base = base + self.cost.prefill_work(w.done, c)
            tokens_left -= c
            if c < w.remaining:
                break  # one chunked request per step
        step = Step(tuple(pieces), tuple(decode_lens))
        predicted = self.predict_s(base)
        return StepDecision(step, predicted, target, feasible and predicted <= target + 1e-12)
