"""Perplexity by position on long concatenated held-out text, through any scorer.

A *scorer* turns one sequence of ids ``[N]`` into the next-token NLLs ``[N - 1]`` (nats; entry ``t`` is
``-log p(ids[t + 1] | ids[:t + 1])``):

* :class:`TorchScorer`: the pure-torch reference (one causal forward: plain RoPE, or DCA + YaRN past ``chunk_size``
  exactly as the reference prefill runs it);
* :class:`HttpScorer` / :func:`engine_scorer`: an SGLang server's ``/generate`` or an ``sglang.Engine`` with
  ``return_logprob=True, logprob_start_len=0`` (prompt log-probabilities, parsed by :func:`nll_from_meta`).

:func:`concat_documents` builds the sequence (held-out documents in a seeded order, joined by EOS, cut to exactly
``length``); :func:`position_rows` averages NLL per position bucket (default: one bucket per training length) into
results rows ``{"metric": "perplexity", "position_start", "position_end", "tokens", "nll", "value"}``.
"""

from __future__ import annotations

import json
import math
import random
import urllib.request
from typing import Any, Optional, Protocol, Sequence

import torch
import torch.nn.functional as F

__all__ = ["Scorer", "TorchScorer", "HttpScorer", "engine_scorer", "nll_from_meta", "concat_documents",
           "position_edges", "position_rows"]


class Scorer(Protocol):
    name: str

    def token_nll(self, ids: Sequence[int]) -> torch.Tensor: ...


def concat_documents(docs: Sequence[Sequence[int]], length: int, seed: int = 0, eos_id: int = 0) -> list[int]:
    """Exactly ``length`` ids: ``docs`` shuffled with ``seed``, joined by ``eos_id``, cut (documents never repeat)."""
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    out: list[int] = []
    for i in order:
        if out:
            out.append(eos_id)
        out += list(docs[i])
        if len(out) >= length:
            return out[:length]
    raise ValueError(f"the documents hold {len(out)} tokens, fewer than the {length} asked for")


def position_edges(length: int, bucket: int) -> list[int]:
    """``[0, bucket, 2 * bucket, ..., length]``."""
    if bucket <= 0 or length <= 1:
        raise ValueError(f"position_edges: need bucket > 0 and length > 1, got {bucket}, {length}")
    return sorted(set(range(0, length, bucket)) | {length})


def position_rows(nll: torch.Tensor, edges: Sequence[int], **labels: Any) -> list[dict[str, Any]]:
    """Mean NLL and perplexity of the *predicted* positions ``1..N-1`` in each ``[edges[i], edges[i+1])``.

    ``nll[t]`` scores the token at position ``t + 1``; extra keyword arguments are copied into every row, and
    ``case`` (``"positions a-b"``) keys each bucket's row apart in a results file.
    """
    pos = torch.arange(1, nll.shape[0] + 1)
    rows = []
    for a, b in zip(edges[:-1], edges[1:]):
        sel = nll[(pos >= a) & (pos < b)].double()
        if sel.numel() == 0:
            continue
        m = float(sel.mean())
        rows.append({"metric": "perplexity", **labels, "case": f"positions {a}-{b}", "position_start": a,
                     "position_end": b,
                     "tokens": int(sel.numel()), "nll": m, "value": math.exp(m)})
    return rows


class TorchScorer:
    """Next-token NLLs from :class:`sgl_qwen1m.model.torch_qwen2.TinyQwen2` (the model's DCA setting decides)."""

    def __init__(self, model: Any, name: Optional[str] = None) -> None:
        self.model = model
        self.name = name or ("reference-dca" if model.dca is not None else "reference-rope")

    @torch.no_grad()
    def token_nll(self, ids: Sequence[int]) -> torch.Tensor:
        dev = self.model.model.embed_tokens.weight.device
        x = torch.as_tensor(list(ids), dtype=torch.long, device=dev)[None]
        dca = self.model.dca
        use = dca if dca is not None and x.shape[1] > dca.chunk_size else None  # shorter: DCA == plain RoPE
        logits = self.model(x, dca=use)[0].float()
        return F.cross_entropy(logits[:-1], x[0, 1:], reduction="none").cpu()


def nll_from_meta(meta: dict[str, Any], n: int) -> torch.Tensor:
    """``[n - 1]`` NLLs from SGLang's ``meta_info["input_token_logprobs"]`` (``[logprob, token_id, text]`` per prompt
    token, the first one's logprob None) of a request sent with ``logprob_start_len=0``."""
    items = meta.get("input_token_logprobs")
    if items is None or len(items) < n:
        got = None if items is None else len(items)
        raise ValueError(f"expected {n} input_token_logprobs (send return_logprob=True, logprob_start_len=0), got {got}")
    vals = [it[0] if isinstance(it, (list, tuple)) else it for it in items[1:n]]
    if any(v is None for v in vals):
        raise ValueError("input_token_logprobs has None past the first token")
    return -torch.tensor(vals, dtype=torch.float64)


def _request(ids: Sequence[int]) -> dict[str, Any]:
    return {"input_ids": list(ids), "sampling_params": {"max_new_tokens": 1, "temperature": 0.0},
            "return_logprob": True, "logprob_start_len": 0}


class HttpScorer:
    """Prompt log-probabilities from a running SGLang server (``{url}/generate``)."""

    def __init__(self, url: str = "http://127.0.0.1:30000", name: str = "http", timeout: float = 3600.0) -> None:
        self.url, self.name, self.timeout = url.rstrip("/"), name, timeout

    def token_nll(self, ids: Sequence[int]) -> torch.Tensor:
        body = json.dumps(_request(ids)).encode()
        req = urllib.request.Request(f"{self.url}/generate", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=self.timeout) as resp:
            res = json.loads(resp.read())
        return nll_from_meta(res["meta_info"], len(ids))


class _EngineScorer:
    def __init__(self, engine: Any, name: str) -> None:
        self.engine, self.name = engine, name

    def token_nll(self, ids: Sequence[int]) -> torch.Tensor:
        req = _request(ids)
        res = self.engine.generate(input_ids=req["input_ids"], sampling_params=req["sampling_params"],
                                   return_logprob=True, logprob_start_len=0)
        return nll_from_meta(res["meta_info"], len(ids))


def engine_scorer(engine: Any, name: str) -> Scorer:
    """A scorer over a started ``sglang.Engine`` (e.g. ``EngineRunner(...)._start()``)."""
    return _EngineScorer(engine, name)
