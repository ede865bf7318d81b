"""Step times of a real server from its log: SGLang's ``Prefill batch`` lines as profile samples (plain Python).

SGLang (0.5.17) logs one line per prefill step when the step is scheduled::

    Prefill batch, #new-seq: 1, #new-token: 16384, #cached-token: 0, token usage: 0.02, #running-req: 0,
    #queue-req: 0, #pending-token: 983616, cuda graph: False, input throughput (token/s): 3255.74

``input throughput`` is that line's ``#new-token`` divided by the seconds since the previous prefill line
(``metrics_reporter.report_prefill_stats``), so two consecutive lines give the wall time of the step between them:
``seconds = new_token / throughput`` of the later line, spent on the earlier line's step. That is the time a decoding
stream waits per step (forward, host planning, scheduling), which is what the policy predicts.

Only *alone* steps become samples: one request extending its prefix, nothing running and nothing queued on both
lines (no decode rows, no other prompt), and the later line continuing the same prompt (its ``#pending-token`` is
the earlier line's minus its own ``#new-token``). The prompt's length is ``new + pending`` of its first line, so
each step's prefix follows from the lines alone. The first step of every prompt is skipped (it includes the
request's arrival and, on a fresh server, compilation).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable, Sequence

from .cost import CostModel, StepWork
from .profile import Sample

__all__ = ["PrefillLine", "AloneStep", "parse_prefill_lines", "alone_steps", "step_samples"]

_LINE = re.compile(r"Prefill batch, #new-seq: (\d+), #new-token: (\d+), #cached-token: (\d+), .*?#running-req: (\d+), "
                   r"#queue-req: (\d+), #pending-token: (\d+), .*?input throughput \(token/s\): ([\d.]+)")


@dataclass(frozen=True)
class PrefillLine:
    """One ``Prefill batch`` line (``lineno``: 1-based line of the log)."""

    lineno: int
    new_seq: int
    new_tokens: int
    cached_tokens: int
    running: int
    queued: int
    pending: int
    throughput: float

    @property
    def alone(self) -> bool:
        return self.new_seq == 1 and self.running == 0 and self.queued == 0


@dataclass(frozen=True)
class AloneStep:
    """One measured step: ``extend`` tokens of a ``prompt``-token request after ``prefix`` cached ones."""

    prompt: int
    prefix: int
    extend: int
    seconds: float
    lineno: int


def parse_prefill_lines(lines: Iterable[str]) -> list[PrefillLine]:
    """Every ``Prefill batch`` line of a server log, in order (other lines ignored)."""
    out = []
    for i, line in enumerate(lines, 1):
        m = _LINE.search(line)
        if m:
            a = [int(x) for x in m.groups()[:6]]
            out.append(PrefillLine(i, *a, float(m.group(7))))
    return out


def alone_steps(lines: Sequence[PrefillLine], min_prompt: int = 1) -> list[AloneStep]:
    """The alone steps of prompts of at least ``min_prompt`` tokens (see the module docstring)."""
    out: list[AloneStep] = []
    prompt = done = 0
    for a, b in zip(lines, lines[1:]):
        if not a.alone:
            prompt = 0
            continue
        if prompt == 0 or a.new_tokens + a.pending != prompt - done:  # a's step starts a prompt
            prompt, done = a.new_tokens + a.pending, 0
        same = b.alone and b.pending == a.pending - b.new_tokens and a.pending > 0
        if same and done > 0 and prompt >= min_prompt and b.throughput > 0:
            out.append(AloneStep(prompt, done, a.new_tokens, b.new_tokens / b.throughput, a.lineno))
        done += a.new_tokens
        if not same:
            prompt = 0
    return out


def step_samples(steps: Sequence[AloneStep], cost: CostModel, tag: str = "log") -> list[Sample]:
    """Profile samples of measured steps: each step's work under ``cost`` plus the step's fixed part."""
    return [Sample(cost.prefill_work(s.prefix, s.extend) + StepWork(steps=1.0), s.seconds,
                   f"{tag}:{s.lineno} prefix={s.prefix} extend={s.extend}") for s in steps]
