"""Chunk plans for a long prompt under pipeline parallelism, and their predicted pipeline timing (issue 19, item 2).

The Qwen2.5-1M report's Dynamic Chunked Pipeline Parallelism (DCPP) sizes each prefill chunk by its attention cost so
that successive chunks take the same time on every pipeline stage. With fixed chunks a long prompt's later chunks
cost more (dense DCA: their prefix grows; sparse: the estimation pass scores every earlier key), so each stage waits
for the previous one and the pipeline drains behind the slowest chunk.

Timing model (plain arithmetic on the cost model's predictions; what a PP=2 run on two GPUs must confirm):

* ``S`` stages each hold ``layers / S`` layers, so chunk ``i`` occupies every stage for ``t_i = step_s(i) / S``
  (:meth:`StepPolicy.step_s`: the whole model's predicted step; the fixed per-step overhead is split the same way,
  and activation transfers between stages are not modelled);
* chunks of one request enter stage 0 back to back; stage ``s`` starts chunk ``i`` when stage ``s - 1`` has finished
  it and stage ``s`` has finished chunk ``i - 1``: ``f[s][i] = max(f[s-1][i], f[s][i-1]) + t_i``;
* ``makespan = f[S-1][n-1]`` (the request's prefill time), ``bubble_share = 1 - sum(t) / makespan`` (the share of
  each stage's time spent idle while the request is in the pipe; ``(S - 1) / (n + S - 1)`` for equal chunks).

:func:`equal_time_chunks` finds the smallest per-chunk time target that still covers the prompt in a given number
of chunks and cuts each chunk as large as fits it (the policy's own :meth:`StepPolicy.largest_fit`), so the plan has
as many steps as the fixed one it is compared with. Equal times always shrink the bubble, but with sparse prefill
they can cost more work than they save: every chunk's estimation pass scores all keys before its end, and larger
early chunks move the chunk ends later. :func:`best_plan` therefore keeps whichever plan the cost model predicts
finishes first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from .cost import PrefillPiece, Step
from .policy import StepPolicy

__all__ = ["PipelineResult", "pipeline_timing", "chunk_times", "equal_time_chunks", "fixed_chunks", "compare_plans",
           "best_plan"]


@dataclass(frozen=True)
class PipelineResult:
    """Predicted timing of one chunk plan on ``stages`` pipeline stages (seconds)."""

    chunks: tuple[int, ...]
    stage_times: tuple[float, ...]  # t_i: each chunk's time on one stage
    stages: int
    makespan_s: float
    bubble_share: float

    @property
    def spread(self) -> float:
        """``max / min`` of the chunks' stage times (1.0: perfectly equal)."""
        return max(self.stage_times) / min(self.stage_times)


def pipeline_timing(stage_times: Sequence[float], stages: int) -> tuple[float, float]:
    """``(makespan_s, bubble_share)`` of chunks taking ``stage_times[i]`` on each of ``stages`` stages (see the module
    docstring)."""
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    if not stage_times or any(t <= 0 for t in stage_times):
        raise ValueError("stage_times must be non-empty and positive")
    finish = [0.0] * stages  # finish time of the last chunk on each stage
    for t in stage_times:
        prev = 0.0
        for s in range(stages):
            finish[s] = max(prev, finish[s]) + t
            prev = finish[s]
    makespan = finish[-1]
    return makespan, 1.0 - sum(stage_times) / makespan


def chunk_times(policy: StepPolicy, chunks: Sequence[int], stages: int) -> list[float]:
    """Each chunk's predicted time on one of ``stages`` stages (the request alone: no decode rows)."""
    out, done = [], 0
    for c in chunks:
        if c < 1:
            raise ValueError(f"chunk sizes must be >= 1, got {c}")
        out.append(policy.step_s(Step((PrefillPiece("long", done, c),), ())) / stages)
        done += c
    return out


def fixed_chunks(prompt: int, chunk: int) -> list[int]:
    """SGLang's chunked prefill: ``chunk`` tokens per step, the remainder last."""
    if prompt < 1 or chunk < 1:
        raise ValueError(f"prompt and chunk must be >= 1, got {prompt}, {chunk}")
    return [min(chunk, prompt - i) for i in range(0, prompt, chunk)]


def _cover(policy: StepPolicy, prompt: int, target_s: float, max_chunks: int, max_chunk: int) -> list[int]:
    """Greedy plan: each chunk the largest that fits ``target_s`` (whole model); empty if it needs more chunks."""
    out, done = [], 0
    base = policy.cost.step_work(Step((), ()))  # the step's fixed part
    while done < prompt:
        c = policy.largest_fit(base, done, min(max_chunk, prompt - done), target_s)
        if c < 1 or len(out) == max_chunks:
            return []
        out.append(c)
        done += c
    return out


def equal_time_chunks(policy: StepPolicy, prompt: int, n_chunks: int, max_chunk: int, iters: int = 40) -> list[int]:
    """A plan of at most ``n_chunks`` chunks (each at most ``max_chunk`` tokens: the activation bound) whose predicted
    times are as equal as the chunk granule allows: the smallest per-step time target that still covers ``prompt``,
    found by bisection on the target."""
    if n_chunks < 1 or max_chunk < 1 or prompt < 1:
        raise ValueError(f"prompt, n_chunks and max_chunk must be >= 1, got {prompt}, {n_chunks}, {max_chunk}")
    if n_chunks * max_chunk < prompt:
        raise ValueError(f"{n_chunks} chunks of at most {max_chunk} tokens cannot cover {prompt} tokens")
    hi = max(chunk_times(policy, fixed_chunks(prompt, max_chunk), 1))  # every chunk of size max_chunk fits this
    lo = 0.0
    best = _cover(policy, prompt, hi, n_chunks, max_chunk) or fixed_chunks(prompt, max_chunk)
    for _ in range(iters):
        mid = (lo + hi) / 2
        plan = _cover(policy, prompt, mid, n_chunks, max_chunk)
        if plan:
            hi, best = mid, plan
        else:
            lo = mid
    return best


def compare_plans(policy: StepPolicy, prompt: int, chunk: int, stages: int,
                  max_chunk: int = 0) -> dict[str, PipelineResult]:
    """Fixed ``chunk``-token chunks against the equal-time plan with the same number of chunks, both on ``stages``
    stages. The equal-time plan's early chunks are larger than ``chunk`` (cheap: short prefix) and its late ones
    smaller; ``max_chunk`` (default ``4 * chunk``) bounds them (activation memory)."""
    fixed = fixed_chunks(prompt, chunk)
    equal = equal_time_chunks(policy, prompt, len(fixed), max_chunk or 4 * chunk)
    out = {}
    for name, plan in (("fixed", fixed), ("equal_time", equal)):
        times = chunk_times(policy, plan, stages)
        makespan, bubble = pipeline_timing(times, stages)
        out[name] = PipelineResult(tuple(plan), tuple(times), stages, makespan, bubble)
    return out


def best_plan(policy: StepPolicy, prompt: int, chunk: int, stages: int,
              max_chunk: int = 0) -> tuple[str, PipelineResult]:
    """The plan of :func:`compare_plans` with the smaller predicted makespan (``"fixed"`` on ties)."""
    res = compare_plans(policy, prompt, chunk, stages, max_chunk)
    name = "equal_time" if res["equal_time"].makespan_s < res["fixed"].makespan_s else "fixed"
    return name, res[name]
