"""RULER-style synthetic long-context tasks, generated locally and deterministically in token-id space.

Tasks: ``passkey``, ``niah_single``, ``niah_multikey``, ``niah_multivalue``, ``variable_tracking``. A prompt is
``instruction haystack-with-needles question`` with exactly ``prompt_len`` tokens (no BOS, as in Qwen): the
haystack is RULER's "noise" filler (sentences drawn at random, the last one cut to fit) and needles go between
sentences at uniformly random depths. The continuation the model must produce is ``target_ids`` (answer, then
``<|endoftext|>``); scoring is RULER's string-match-all on the answer items: exact match for one-answer tasks, the
fraction of values found otherwise.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Sequence

from tokenizers import Tokenizer

from sgl_qwen1m.model.vocab import EOS, FILLER_SENTENCES, KEY_NOUNS, build_tokenizer

__all__ = ["TASKS", "Sample", "TaskBuilder", "parse_answer", "score_output"]

TASKS = ("passkey", "niah_single", "niah_multikey", "niah_multivalue", "variable_tracking")
NIAH_HEAD = "special magic numbers are hidden inside a lot of irrelevant text. find them and memorize them."


@dataclass(frozen=True)
class Sample:
    """One prompt: ``tokenizer.encode(prompt_text).ids == prompt_ids`` (``[prompt_len]``); ``target_ids`` is the
    expected continuation (answer + EOS)."""

    task: str
    prompt_ids: tuple[int, ...]
    prompt_text: str
    answers: tuple[str, ...]
    target_ids: tuple[int, ...]

    @property
    def max_new_tokens(self) -> int:
        return len(self.target_ids) + 4


def _number(rng: random.Random, digits: int) -> str:
    return str(rng.randrange(10 ** (digits - 1), 10**digits))


def _distinct_numbers(rng: random.Random, digits: int, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        v = _number(rng, digits)
        if v not in out:
            out.append(v)
    return out


class TaskBuilder:
    """Builds :class:`Sample` s with the bundled tokenizer (or any tokenizer with the same vocabulary)."""

    def __init__(self, tokenizer: Optional[Tokenizer] = None) -> None:
        self.tok = tokenizer or build_tokenizer()
        self.eos = self.tok.token_to_id(EOS)
        self.filler = [self.ids(s) for s in FILLER_SENTENCES]

    @lru_cache(maxsize=4096)
    def _ids(self, text: str) -> tuple[int, ...]:
        return tuple(self.tok.encode(" " + text, add_special_tokens=False).ids)

    def ids(self, text: str) -> list[int]:
        """Token ids of ``" " + text``: fragments encoded this way concatenate like the joined text."""
        return list(self._ids(text))

    def decode(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)

    # ------------------------------------------------------------------ composition
    def _compose(self, rng: random.Random, prompt_len: int, head: str, needles: Sequence[str], tail: str) -> list[int]:
        head_ids, tail_ids = self.ids(head), self.ids(tail)
        needle_ids = [self.ids(n) for n in needles]
        budget = prompt_len - len(head_ids) - len(tail_ids) - sum(len(n) for n in needle_ids)
        if budget < 0:
            raise ValueError(f"prompt_len={prompt_len} is too short for this task (needs > {prompt_len - budget})")
        sentences: list[list[int]] = []
        used = 0
        while used < budget:
            s = rng.choice(self.filler)[: budget - used]
            sentences.append(s)
            used += len(s)
        slots = sorted(rng.randint(0, max(len(sentences) - 1, 0)) for _ in needle_ids)  # never after the cut one
        hay: list[int] = []
        k = 0
        for i in range(len(sentences) + 1):
            while k < len(slots) and slots[k] == i:
                hay += needle_ids[k]
                k += 1
            if i < len(sentences):
                hay += sentences[i]
        return head_ids + hay + tail_ids

    def _sample(self, task: str, ids: list[int], answers: Sequence[str]) -> Sample:
        target = self.ids(", ".join(answers) + ".") + [self.eos]
        return Sample(task, tuple(ids), self.decode(ids), tuple(answers), tuple(target))

    # ------------------------------------------------------------------ tasks
    def passkey(self, rng: random.Random, prompt_len: int) -> Sample:
        n = _number(rng, 5)
        head = "there is an important pass key hidden inside a lot of irrelevant text. find it and memorize it."
        needle = f"the pass key is {n}. remember it. {n} is the pass key."
        ids = self._compose(rng, prompt_len, head, [needle], "what is the pass key? the pass key is")
        return self._sample("passkey", ids, [n])

    def niah(self, rng: random.Random, prompt_len: int, num_keys: int = 1, num_values: int = 1) -> Sample:
        keys = rng.sample(KEY_NOUNS, num_keys)
        values = _distinct_numbers(rng, 6, num_keys * num_values)
        if num_values > 1:
            needles = [f"the special magic number for {keys[0]} is {v}." for v in values]
            tail = f"what are all the special magic numbers for {keys[0]}? the special magic numbers for {keys[0]} are"
            task, answers = "niah_multivalue", values
        else:
            needles = [f"the special magic number for {k} is {v}." for k, v in zip(keys, values)]
            rng.shuffle(needles)
            q = rng.randrange(num_keys)
            tail = f"what is the special magic number for {keys[q]}? the special magic number for {keys[q]} is"
            task, answers = ("niah_single" if num_keys == 1 else "niah_multikey"), [values[q]]
        return self._sample(task, self._compose(rng, prompt_len, NIAH_HEAD, needles, tail), answers)

    def variable_tracking(self, rng: random.Random, prompt_len: int, hops: int = 2, chains: int = 2) -> Sample:
        names = rng.sample(KEY_NOUNS, (hops + 1) * chains)
        values = _distinct_numbers(rng, 5, chains)
        per_chain = []
        for c in range(chains):
            vs = names[c * (hops + 1) : (c + 1) * (hops + 1)]
            per_chain.append([f"var {vs[0]} = {values[c]}."] + [f"var {b} = {a}." for a, b in zip(vs, vs[1:])])
        # Interleave the chains at random, keeping each chain in order.
        order = [c for c in range(chains) for _ in range(hops + 1)]
        rng.shuffle(order)
        idx = [0] * chains
        needles = []
        for c in order:
            needles.append(per_chain[c][idx[c]])
            idx[c] += 1
        head = "memorize and track the chain of variable assignment hidden in the following text."
        v = values[0]
        tail = f"what variables are assigned the value {v}? the variables assigned the value {v} are"
        return self._sample("variable_tracking", self._compose(rng, prompt_len, head, needles, tail), names[: hops + 1])

    def make(self, task: str, prompt_len: int, rng: random.Random) -> Sample:
        """A sample of ``task`` whose prompt has exactly ``prompt_len`` tokens."""
        if task == "passkey":
            return self.passkey(rng, prompt_len)
        if task == "niah_single":
            return self.niah(rng, prompt_len)
        if task == "niah_multikey":
            return self.niah(rng, prompt_len, num_keys=4)
        if task == "niah_multivalue":
            return self.niah(rng, prompt_len, num_values=4)
        if task == "variable_tracking":
            return self.variable_tracking(rng, prompt_len)
        raise ValueError(f"unknown task {task!r}; choose from {TASKS}")

    def answer_len(self, task: str) -> int:
        """Tokens of the target continuation (answer + EOS); fixed per task."""
        return len(self.make(task, 256, random.Random(0)).target_ids)

    def min_prompt_len(self, task: str) -> int:
        """Shortest prompt the task fits in (no filler)."""
        try:
            self.make(task, 1, random.Random(0))
        except ValueError as e:
            return int(str(e).rsplit("> ", 1)[1].rstrip(")")) + 1
        return 1


def parse_answer(text: str) -> list[str]:
    """Items of a continuation: ``" 123, 456."`` -> ``["123", "456"]`` (text after the first period dropped)."""
    body = text.strip().split(".", 1)[0]
    return [x.strip() for x in body.split(",") if x.strip()]


def score_output(sample: Sample, output_text: str) -> float:
    """1.0/0.0 exact match for one answer; the fraction of expected items present for several (RULER)."""
    got = parse_answer(output_text)
    if len(sample.answers) == 1:
        return float(got == list(sample.answers))
    return sum(a in got for a in sample.answers) / len(sample.answers)
