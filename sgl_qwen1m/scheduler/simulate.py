"""Predicted timelines: a long prompt prefilling while chat streams decode and new chats arrive, stepped with
:class:`StepPolicy` (or with fixed chunks, SGLang's own behaviour on an idle server), on predicted step times.

Used by the CPU tests (TTFT overhead vs an idle fixed-chunk prefill, step-time spread of dense DCA plans) and for the
one-line plan a server logs per long request (:func:`plan_summary`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

from .cost import PrefillPiece, Step
from .policy import StepPolicy, Waiting

__all__ = ["Scenario", "SimResult", "simulate", "fixed_chunk_steps", "plan_summary", "spread"]


@dataclass(frozen=True)
class Scenario:
    """``long_tokens`` arrives at t=0 while ``streams`` chats decode (KV ``stream_kv`` tokens each, growing); a new
    chat of ``chat_prompt`` tokens arrives every ``1 / chat_rate_per_s`` seconds (0: none) and decodes thereafter."""

    long_tokens: int
    streams: int = 8
    stream_kv: int = 2048
    chat_rate_per_s: float = 0.0
    chat_prompt: int = 2048
    max_steps: int = 100_000


@dataclass
class SimResult:
    """Step times, the long prompt's TTFT, per-step long chunk sizes and each arriving chat's TTFT (seconds)."""

    step_s: list[float] = field(default_factory=list)
    long_chunks: list[int] = field(default_factory=list)
    long_step_s: list[float] = field(default_factory=list)
    long_ttft_s: Optional[float] = None
    chat_ttft_s: list[float] = field(default_factory=list)
    infeasible_steps: int = 0

    @property
    def max_step_s(self) -> float:
        return max(self.step_s, default=0.0)


def simulate(policy: StepPolicy, sc: Scenario) -> SimResult:
    """Step the policy until the long prompt's prefill ends (predicted times; chats decode forever)."""
    res = SimResult()
    t = 0.0
    kv = [sc.stream_kv] * sc.streams
    waiting: dict[str, Waiting] = {"long": Waiting("long", sc.long_tokens, 0, 0.0)}
    period = 1.0 / sc.chat_rate_per_s if sc.chat_rate_per_s > 0 else None
    next_chat, n_chat = (period if period else float("inf")), 0
    for _ in range(sc.max_steps):
        while next_chat <= t:
            rid = f"chat{n_chat}"
            waiting[rid] = Waiting(rid, sc.chat_prompt, 0, next_chat)
            n_chat += 1
            next_chat += period  # type: ignore[operator]
        d = policy.plan_step(kv, list(waiting.values()))
        t += d.predicted_s
        res.step_s.append(d.predicted_s)
        res.infeasible_steps += not d.feasible
        kv = [n + 1 for n in kv]
        for p in d.prefill:
            w = waiting[p.rid]
            if p.rid == "long":
                res.long_chunks.append(p.extend)
                res.long_step_s.append(d.predicted_s)
            if p.extend >= w.remaining:
                del waiting[p.rid]
                if p.rid == "long":
                    res.long_ttft_s = t
                    return res
                res.chat_ttft_s.append(t - w.arrival_s)
                kv.append(w.prompt_len + 1)
            else:
                waiting[p.rid] = Waiting(w.rid, w.prompt_len, w.done + p.extend, w.arrival_s)
    raise RuntimeError(f"the long prompt did not finish within max_steps={sc.max_steps}")


def fixed_chunk_steps(policy: StepPolicy, prompt: int, chunk: int, decode_lens: Sequence[int] = ()) -> list[float]:
    """Predicted step times of ``prompt`` in fixed ``chunk``-token steps (SGLang's chunked prefill), with
    ``decode_lens`` rows riding along each step (none: the idle server)."""
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    out, done = [], 0
    while done < prompt:
        c = min(chunk, prompt - done)
        out.append(policy.step_s(Step((PrefillPiece("long", done, c),), tuple(decode_lens))))
        done += c
    return out


def spread(values: Sequence[float]) -> float:
    """``max / min`` of the values (1.0 = perfectly even)."""
    return max(values) / min(values) if values else 1.0


def plan_summary(policy: StepPolicy, rid: str, prompt_len: int, decode_lens: Sequence[int] = ()) -> str:
    """One log line: the predicted chunk plan of a long request if the current decode load persists."""
    res = _with_decodes(policy, prompt_len, decode_lens)
    chunks = res.long_chunks
    kind = "sparse" if policy.cost.is_sparse_piece(0, prompt_len) else "dense"
    return (f"qwen1m scheduler: request {rid}: {prompt_len} tokens ({kind}) in {len(chunks)} chunks of "
            f"{min(chunks)}..{max(chunks)} tokens, predicted prefill {res.long_ttft_s:.1f} s, steps <= "
            f"{res.max_step_s * 1e3:.0f} ms (target {policy.cfg.step_target_s * 1e3:.0f} ms) with "
            f"{len(decode_lens)} decoding streams")


def _with_decodes(policy: StepPolicy, prompt_len: int, decode_lens: Sequence[int]) -> SimResult:
    res, t, kv, done = SimResult(), 0.0, list(decode_lens), 0
    while done < prompt_len:
        d = policy.plan_step(kv, [Waiting("long", prompt_len, done)])
        c = d.prefill[0].extend
        t += d.predicted_s
        res.step_s.append(d.predicted_s)
        res.long_chunks.append(c)
        done += c
        kv = [n + 1 for n in kv]
    res.long_ttft_s = t
    return res
