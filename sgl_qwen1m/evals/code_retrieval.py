"""Retrieval in the text's own idiom: a Python assignment planted deep in concatenated held-out code, asked for at
the end.

Prompt (ids, exactly ``prompt_len`` of them)::

    <held-out documents joined by EOS ...>
    SOME_UNIQUE_NAME = "482913"             <- the needle, a line of its own at depth d (after a newline token)
    <... more held-out documents>

    assert SOME_UNIQUE_NAME == "            <- the query; the model should continue with 482913"

Two query styles (:data:`STYLES`): ``assert`` (above, task ``code_retrieval``) asks with a different statement, so
the first digit needs a match on the name alone; ``restate`` (task ``code_retrieval_restate``) ends the prompt
with the needle's own opening, ``\n\nSOME_UNIQUE_NAME = "``, as passkey retrieval restates "The pass key is": the
value follows by copying (induction) once the line is found. Both styles draw the same haystack seeds, names
and values.

The name is two upper-case words and a number (never in the haystack: checked), the value six digits (one token
per digit under Qwen's split rule). Scoring: exact match of the text before the first ``"`` of the continuation.
Samples run through any :class:`sgl_qwen1m.evals.runners.Runner` (token ids in, greedy ids out).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from sgl_qwen1m.evals.harness import Record, prompt_length
from sgl_qwen1m.evals.perplexity import concat_documents
from sgl_qwen1m.evals.runners import Runner

__all__ = ["TASK", "STYLES", "CodeSample", "make_code_sample", "code_samples", "score_code", "evaluate_code",
           "prefix_breakdown"]

TASK = "code_retrieval"
STYLES = {"assert": TASK, "restate": TASK + "_restate"}  # query style -> task name
_QUERY = {"assert": '\n\nassert {name} == "', "restate": '\n\n{name} = "'}
_WORDS = ("CACHE", "LIMIT", "BUFFER", "TIMEOUT", "RETRY", "SHARD", "WORKER", "QUEUE", "TOKEN", "BATCH", "SEED",
          "STRIDE", "WINDOW", "BUDGET", "OFFSET", "MARGIN", "PREFIX", "SUFFIX", "ANCHOR", "VECTOR")


@dataclass(frozen=True)
class CodeSample:
    task: str
    prompt_ids: tuple[int, ...]
    answers: tuple[str, ...]  # (value,)
    name: str
    depth: float  # where the needle starts, as a fraction of the prompt

    @property
    def max_new_tokens(self) -> int:
        return 12  # six digits, the closing quote and slack


def _newline_ends(tokenizer: Any) -> set[int]:
    vocab = tokenizer.get_vocab()
    return {i for i in vocab.values() if tokenizer.decode([i]).endswith("\n")}


def make_code_sample(
    tokenizer: Any,
    docs: Sequence[Sequence[int]],
    prompt_len: int,
    rng: random.Random,
    depth: Optional[float] = None,
    newline_ids: Optional[set[int]] = None,
    eos_id: int = 0,
    style: str = "assert",
) -> CodeSample:
    """One prompt of exactly ``prompt_len`` ids; ``depth`` in [0, 1] (default uniform in [0.05, 0.95]); ``style``
    one of :data:`STYLES`."""
    if style not in STYLES:
        raise ValueError(f"unknown retrieval style {style!r}; choose from {', '.join(STYLES)}")
    depth = rng.uniform(0.05, 0.95) if depth is None else depth
    value = str(rng.randrange(100000, 1000000))
    hay_seed = rng.randrange(1 << 30)
    for _ in range(20):
        name = f"{rng.choice(_WORDS)}_{rng.choice(_WORDS)}_{rng.randrange(10, 100)}"
        needle = tokenizer.encode(f'{name} = "{value}"\n', add_special_tokens=False).ids
        query = tokenizer.encode(_QUERY[style].format(name=name), add_special_tokens=False).ids
        n_hay = prompt_len - len(needle) - len(query)
        if n_hay <= 0:
            raise ValueError(f"prompt_len {prompt_len} is too short for the needle and query")
        hay = concat_documents(docs, n_hay, seed=hay_seed, eos_id=eos_id)
        if name not in tokenizer.decode(hay):
            break
    else:  # pragma: no cover - 20 collisions in a row
        raise RuntimeError("could not find a name absent from the haystack")
    nl = newline_ids if newline_ids is not None else _newline_ends(tokenizer)
    at = int(depth * n_hay)
    while at < n_hay and at > 0 and hay[at - 1] not in nl and hay[at - 1] != eos_id:
        at += 1  # start the needle on a line of its own
    ids = hay[:at] + needle + hay[at:] + query
    return CodeSample(STYLES[style], tuple(ids), (value,), name, at / prompt_len)


def code_samples(
    tokenizer: Any, docs: Sequence[Sequence[int]], multiples: Sequence[float], samples: int, train_len: int,
    seed: int = 0, eos_id: int = 0, styles: Sequence[str] = ("assert",),
) -> list[tuple[float, CodeSample]]:
    """``samples`` prompts per length multiple (``harness.prompt_length``) and style, depths spread evenly, seeded
    (every style draws the same haystack seeds, names and values)."""
    nl = _newline_ends(tokenizer)
    out = []
    for style in styles:
        for m in multiples:
            rng = random.Random(f"{seed}/{TASK}/{m}")
            n = prompt_length(m, train_len)
            for i in range(samples):
                depth = 0.05 + 0.9 * (i + 0.5) / samples
                out.append((m, make_code_sample(tokenizer, docs, n, rng, depth, nl, eos_id, style)))
    return out


def score_code(sample: CodeSample, output_text: str) -> float:
    """1.0 if the text before the first ``"`` is exactly the value (surrounding spaces ignored), else 0.0."""
    return float(output_text.split('"', 1)[0].strip() == sample.answers[0])


def evaluate_code(runner: Runner, samples: Sequence[tuple[float, CodeSample]], tokenizer: Any,
                  eos_id: int = 0) -> list[Record]:
    """Greedy continuations through ``runner``, scored; :class:`harness.Record` rows (``harness.aggregate`` them)."""
    outs = runner.generate([s.prompt_ids for _, s in samples], [s.max_new_tokens for _, s in samples])
    recs = []
    for (m, s), o in zip(samples, outs):
        ids = list(o)[: list(o).index(eos_id)] if eos_id in o else list(o)
        text = tokenizer.decode(ids)
        recs.append(Record(runner.name, s.task, m, len(s.prompt_ids), list(s.answers), ids, text, score_code(s, text)))
    return recs


def prefix_breakdown(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Where retrieval fails: per ``(backend, task, length_multiple)`` of code-retrieval records (``Record`` dicts, as
    ``harness.read_records`` gives), how many prompts, how many outputs start with the value's first digit (one
    token: the look-up of the name), its first three, and the exact value. ``first`` close to ``exact`` means the
    copy works once the needle is found and the look-up is what fails."""
    cells: dict[tuple[str, str, float], list[int]] = {}
    for r in records:
        if not str(r["task"]).startswith(TASK):
            continue
        want, got = r["answers"][0], (r.get("output_text") or "").strip()
        c = cells.setdefault((r["backend"], r["task"], float(r["length_multiple"])), [0, 0, 0, 0])
        c[0] += 1
        c[1] += got[:1] == want[:1]
        c[2] += got[:3] == want[:3]
        c[3] += int(r["score"] == 1.0)
    return [{"backend": b, "task": t, "length_multiple": m, "prompts": c[0], "first_digit": c[1], "first_3": c[2],
             "exact": c[3]} for (b, t, m), c in sorted(cells.items())]
