"""Small helpers shared by the Engine and the HTTP benchmarks: prompts, output checks, progress, deadlines, the
streamed ``/generate`` reply's chunks."""

from __future__ import annotations

import json
import math
import os
import random
import signal
import subprocess
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Optional, Sequence

__all__ = [
    "EngineOptions",
    "REGULAR_VOCAB",
    "make_prompt",
    "check_output",
    "Progress",
    "Deadline",
    "median",
    "sse_chunks",
]

@dataclass(kw_only=True)
class EngineOptions:
    """SGLang settings shared by the Engine benchmark (``E2EOptions``) and the HTTP smoke run (``ServeOptions``).

    Keyword-only, so subclasses add required fields and override defaults freely.
    """

    model_shape: str = ""  # plain (no DCA) config dir, for flashinfer
    model_dca: str = ""  # DCA config dir (with sparse_attention_config.json)
    context_length: int = 0  # 0: longest prompt + new tokens + 1024, rounded up to 4096
    chunked_prefill_size: int = 8192
    mem_fraction_static: float = 0.80
    max_running_requests: int = 4
    max_total_tokens: int = -1  # -1: context_length (pool fits one request); 0: SGLang's own sizing
    cuda_graph: bool = False
    deadline_s: float = 0.0
    seed: int = 0
    mem_budget_gib: float = 0.0  # > 0: rows carry it; each peak row says whether the peak stayed within it
    log_level: str = "warning"
    work_dir: str = "/tmp/sgl_qwen1m_bench"


def budget_defaults(opts: EngineOptions) -> dict[str, float]:
    """Row fields of a run with a memory budget (``mem_budget_gib``), none without one."""
    return {"mem_budget_gib": opts.mem_budget_gib} if opts.mem_budget_gib > 0 else {}


def peak_fields(peak_gib: float, opts: EngineOptions) -> dict[str, Any]:
    """Extra fields of a ``peak_mem_gib`` row: where it was measured and, with a budget, whether it stayed within."""
    out: dict[str, Any] = {"source": "nvidia-smi memory.used, device-wide"}
    if opts.mem_budget_gib > 0:
        out["within_budget"] = bool(peak_gib <= opts.mem_budget_gib)
    return out


# Qwen2 tokens at and above 151643 are special (<|endoftext|>, <|im_start|>, ...); prompts use regular ids only.
REGULAR_VOCAB = 151643


def make_prompt(length: int, seed: int = 0, vocab_size: int = 152064) -> list[int]:
    """``length`` random token ids in ``[0, min(vocab_size, 151643))``, the same for the same (seed, length)."""
    if length <= 0:
        raise ValueError(f"prompt length must be > 0, got {length}")
    rng = random.Random(f"sgl_qwen1m.bench:{seed}:{length}")
    high = min(vocab_size, REGULAR_VOCAB)
    return [rng.randrange(high) for _ in range(length)]


@dataclass(frozen=True)
class OutputCheck:
    """Verdict on one generate() result."""

    ok: bool
    detail: str
    output_tokens: int

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, "output_tokens": self.output_tokens}


def check_output(out: Mapping[str, Any], expect_tokens: int, vocab_size: int) -> OutputCheck:
    """Check a ``skip_tokenizer_init`` result: ``expect_tokens`` ids in range, not aborted, finite logprobs if any.

    With random weights the tokens mean nothing; this catches NaN/Inf logits (non-finite logprobs), out-of-range
    ids, aborted or truncated requests.
    """
    ids = out.get("output_ids")
    meta = out.get("meta_info") or {}
    if not isinstance(ids, list):
        return OutputCheck(False, f"no output_ids in result (keys {sorted(out)})", 0)
    n = len(ids)
    reason = meta.get("finish_reason")
    if isinstance(reason, Mapping) and reason.get("type") == "abort":
        return OutputCheck(False, f"aborted: {reason.get('message')}", n)
    if n != expect_tokens:
        return OutputCheck(False, f"{n} output ids, expected {expect_tokens} (finish_reason {reason})", n)
    bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab_size]
    if bad:
        return OutputCheck(False, f"token ids out of [0, {vocab_size}): {bad[:5]}", n)
    logprobs: Sequence[Any] = meta.get("output_token_logprobs") or []
    values = [lp[0] if isinstance(lp, (list, tuple)) else lp for lp in logprobs]
    nonfinite = [v for v in values if v is None or not math.isfinite(float(v))]
    if nonfinite:
        return OutputCheck(False, f"{len(nonfinite)} non-finite output logprobs (NaN/Inf logits)", n)
    if logprobs and len(logprobs) != n:
        return OutputCheck(False, f"{len(logprobs)} logprobs for {n} tokens", n)
    detail = f"{n} valid ids" + (f", logprobs finite (min {min(values):.2f})" if values else "")
    return OutputCheck(True, detail, n)


class Progress:
    """One line per event with the seconds since start: ``[  12.3s] flashinfer: ttft 131072 ...``."""

    def __init__(self, label: str, t0: Optional[float] = None) -> None:
        self.label = label
        self.t0 = time.monotonic() if t0 is None else t0

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def __call__(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f}s] {self.label}: {msg}", file=sys.stdout, flush=True)


class Deadline:
    """An absolute wall-clock deadline (``time.time()`` seconds; 0 means none)."""

    def __init__(self, at: float = 0.0) -> None:
        self.at = at

    def remaining(self) -> float:
        return math.inf if not self.at else self.at - time.time()

    def allows(self, needed_s: float) -> bool:
        """True when ``needed_s`` more seconds fit before the deadline."""
        return self.remaining() >= needed_s


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence."""
    return float(statistics.median(values))


def sse_chunks(lines: Iterable[bytes]) -> Iterator[dict[str, Any]]:
    """The JSON chunks of a server-sent-event stream (SGLang's streamed ``/generate``): each ``data:`` line parsed
    (``json.JSONDecodeError``, a ``ValueError``, on a bad one), other lines skipped, ending at ``data: [DONE]`` or
    when ``lines`` ends. An ``"error"`` chunk is yielded like any other: what it means is the caller's."""
    for raw in lines:
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            return
        yield json.loads(payload)


def stop_process_group(proc: subprocess.Popen, log: Any, name: str, term_wait_s: float, kill_wait_s: float) -> None:
    """SIGTERM ``proc``'s process group (started with ``start_new_session=True``), SIGKILL if it outlives
    ``term_wait_s``; logs how it ended."""
    for sig, wait in ((signal.SIGTERM, term_wait_s), (signal.SIGKILL, kill_wait_s)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            log(f"{name} stopped ({sig.name})")
            return
        except subprocess.TimeoutExpired:
            log(f"{name} (group {proc.pid}) still alive after {sig.name}")
