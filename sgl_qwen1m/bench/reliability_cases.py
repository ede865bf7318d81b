"""The case list of ``python -m sgl_qwen1m bench reliability``: what each hostile request is and what counts as
surviving it. Pure data and request builders (no I/O), so CPU tests can check that every body is what its name
claims; :mod:`.reliability` sends them to a real ``sglang.launch_server``.

A *simple* case is one HTTP request (``path``, ``body`` bytes) judged by :func:`judge`:

* ``expect="error"``: the server must refuse it clearly: HTTP 4xx, or a 200 whose JSON carries ``"error"``;
* ``expect="either"``: a clear refusal, or a served answer with valid output ids (e.g. ids sent as digit strings,
  which SGLang's request model may coerce to ints);
* a 5xx, a dropped connection or a timeout never passes.

The other cases (a stream dropped mid-prefill, a request aborted while queued, concurrent requests over the KV
pool, the radix-cache prefix pair) need several requests and are run by :mod:`.reliability`; here they only have a
name, a size and a time budget. Every case is followed by a normal request (:func:`normal_body`) that must succeed.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

from .common import make_prompt

__all__ = ["Sizes", "Case", "build_cases", "normal_body", "generate_body", "judge", "Verdict", "CUSTOM_KINDS"]

BAD_ID_POSITION = 5  # where the out-of-range id sits in the id cases (a validation message can name it)
CUSTOM_KINDS = ("stream_drop", "abort_queued", "concurrent_over_pool", "radix_prefix")


@dataclass(frozen=True)
class Sizes:
    """Token counts the cases are built from (the server's limits and the long prompts)."""

    vocab_size: int = 152064
    context_length: int = 245760  # 240K: larger than the pool, so "under the context, over the pool" exists
    max_total_tokens: int = 204800  # 200K KV pool
    chunk: int = 8192  # --chunked-prefill-size; radix prefixes are whole chunks
    sparse_threshold: int = 32768
    normal_tokens: int = 256
    new_tokens: int = 8
    stream_drop_tokens: int = 122880  # 120K
    queued_long_tokens: int = 36864  # 36K x max_running_requests, then one more that gets aborted in the queue
    concurrent_tokens: int = 92160  # 90K x concurrent
    concurrent: int = 4
    max_running_requests: int = 4
    radix_suffix_tokens: int = 1024

    def over_pool_tokens(self) -> int:
        """A prompt longer than the pool but shorter than the context (0 when the context is not larger)."""
        n = self.max_total_tokens + min(8192, max(1, (self.context_length - self.max_total_tokens) // 2))
        return n if n < self.context_length - 16 else 0

    def backend_for(self, prompt_tokens: int) -> str:
        """The path a prompt of this length takes on the qwen1m-sparse server."""
        return "qwen1m-sparse" if prompt_tokens > self.sparse_threshold else "qwen1m-dense"


@dataclass(frozen=True)
class Case:
    """One hostile input. ``body`` is the raw request bytes (simple cases); ``params`` configures custom ones."""

    name: str
    what: str
    kind: str = "simple"  # "simple" or one of CUSTOM_KINDS
    path: str = "/generate"
    body: bytes = b""
    expect: str = "error"  # "error" | "either" (simple cases)
    prompt_tokens: int = 0
    budget_s: float = 60.0  # wall time this case may take (request timeouts derive from it)
    rid: Optional[str] = None
    params: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> Any:
        """The body parsed back (None when it is not valid JSON): what the tests inspect."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None


def new_rid(name: str) -> str:
    return f"rel-{name}-{uuid.uuid4().hex[:8]}"


def generate_body(ids: Any, max_new_tokens: Any = 8, rid: Optional[str] = None, **extra: Any) -> dict[str, Any]:
    """A ``/generate`` body: greedy, ``ignore_eos`` (dummy weights may emit EOS at once)."""
    body: dict[str, Any] = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 0.0, "ignore_eos": True},
    }
    if rid:
        body["rid"] = rid
    body.update(extra)
    return body


def normal_body(sizes: Sizes, seed: int, rid: Optional[str] = None) -> dict[str, Any]:
    """The follow-up request after every case: ``normal_tokens`` ids, ``new_tokens`` new ones."""
    return generate_body(make_prompt(sizes.normal_tokens, seed, sizes.vocab_size), sizes.new_tokens, rid)


def _enc(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _with_bad_id(sizes: Sizes, bad: int, seed: int) -> list[int]:
    ids = make_prompt(16, seed, sizes.vocab_size)
    ids[BAD_ID_POSITION] = bad
    return ids


def build_cases(sizes: Sizes, seed: int = 0) -> list[Case]:
    """Every case, in run order: cheap refusals, the long cases, and last the out-of-range ids (they kill a server
    that does not check ids, so on such a server everything else has been measured before the first restart)."""
    s, cases = sizes, []

    def simple(name: str, what: str, body: Any, expect: str = "error", path: str = "/generate",
               raw: Optional[bytes] = None, tokens: int = 16, budget: float = 60.0) -> None:
        rid = body.get("rid") if isinstance(body, dict) else None
        cases.append(Case(name, what, path=path, body=raw if raw is not None else _enc(body), expect=expect,
                          prompt_tokens=tokens, budget_s=budget, rid=rid))

    v = s.vocab_size
    ok_ids = make_prompt(16, seed, v)
    simple("ids_as_strings", "input_ids as digit strings (may be coerced to ints)",
           generate_body([str(i) for i in ok_ids], rid=new_rid("ids_as_strings")), expect="either")
    simple("ids_floats", "input_ids with fractional floats",
           generate_body([i + 0.5 for i in ok_ids], rid=new_rid("ids_floats")))
    simple("ids_nested_mixed", "input_ids nested three deep and ragged",
           generate_body([ok_ids[:4], [ok_ids[4], [ok_ids[5]]]], rid=new_rid("ids_nested_mixed")))
    simple("ids_as_dict", "input_ids is a JSON object",
           generate_body({"0": ok_ids[0], "1": ok_ids[1]}, rid=new_rid("ids_as_dict")))
    simple("sampling_params_string", "sampling_params is a string",
           dict(generate_body(ok_ids, rid=new_rid("sampling_params_string")), sampling_params="greedy"))
    simple("max_new_tokens_string", "sampling_params.max_new_tokens is the string 'lots'",
           generate_body(ok_ids, "lots", rid=new_rid("max_new_tokens_string")))
    simple("max_new_tokens_huge", "max_new_tokens = 10**9",
           generate_body(ok_ids, 10**9, rid=new_rid("max_new_tokens_huge")))
    simple("max_new_tokens_negative", "max_new_tokens = -1",
           generate_body(ok_ids, -1, rid=new_rid("max_new_tokens_negative")))
    simple("empty_input_ids", "input_ids = []", generate_body([], rid=new_rid("empty_input_ids")), tokens=0)
    simple("no_prompt", "neither text nor input_ids", {"sampling_params": {"max_new_tokens": 4}}, tokens=0)
    simple("text_without_tokenizer", "a text prompt to a server started with --skip-tokenizer-init",
           {"text": "hello", "sampling_params": {"max_new_tokens": 4}, "rid": new_rid("text_without_tokenizer")},
           expect="either", tokens=0)
    simple("malformed_json", "a body cut off in the middle of the JSON", None,
           raw=_enc(generate_body(ok_ids))[:-7], tokens=0)
    simple("body_not_object", "the body is a JSON list, not an object", None, raw=_enc(ok_ids), tokens=0)
    n = s.context_length + 1024
    simple("over_context", f"{n} prompt tokens, context length {s.context_length}",
           generate_body(make_prompt(n, seed, v), rid=new_rid("over_context")), tokens=n, budget=90.0)
    n = s.over_pool_tokens()
    if n:
        simple("over_pool_under_context",
               f"{n} prompt tokens: under the context ({s.context_length}), over the KV pool ({s.max_total_tokens})",
               generate_body(make_prompt(n, seed + 1, v), rid=new_rid("over_pool")), expect="either",
               tokens=n, budget=150.0)
    cases.append(Case("stream_drop_mid_prefill",
                      f"a streamed {s.stream_drop_tokens}-token request whose client disconnects mid-prefill",
                      kind="stream_drop", prompt_tokens=s.stream_drop_tokens, budget_s=90.0,
                      params={"drop_after_s": 2.0}))
    cases.append(Case("abort_queued",
                      f"{s.max_running_requests} x {s.queued_long_tokens} tokens running, one more queued, "
                      "then aborted through /abort_request",
                      kind="abort_queued", prompt_tokens=s.queued_long_tokens, budget_s=120.0))
    total = s.concurrent * s.concurrent_tokens
    cases.append(Case("concurrent_over_pool",
                      f"{s.concurrent} x {s.concurrent_tokens} tokens at once = {total} > pool {s.max_total_tokens}",
                      kind="concurrent_over_pool", prompt_tokens=s.concurrent_tokens, budget_s=180.0))
    for label, chunks in (("dense", 2), ("sparse", 5)):
        prefix = chunks * s.chunk
        if label == "sparse" and prefix + s.radix_suffix_tokens <= s.sparse_threshold:
            prefix = (s.sparse_threshold // s.chunk + 1) * s.chunk
        n = prefix + s.radix_suffix_tokens
        cases.append(Case(f"radix_prefix_{label}",
                          f"P+A then P+B (P {prefix} tokens from the radix cache) vs P+B after /flush_cache: "
                          "same greedy tokens",
                          kind="radix_prefix", prompt_tokens=n, budget_s=90.0, params={"prefix_tokens": prefix}))
    for name, bad, what in (
        ("ids_eq_vocab", v, f"input_ids holds {v} (== vocab_size) at position {BAD_ID_POSITION}"),
        ("ids_huge", 2**40, f"input_ids holds 2**40 at position {BAD_ID_POSITION}"),
        ("ids_beyond_int64", 10**20, f"input_ids holds 10**20 (no int64) at position {BAD_ID_POSITION}"),
        ("ids_negative", -1, f"input_ids holds -1 at position {BAD_ID_POSITION}"),
    ):
        simple(name, what, generate_body(_with_bad_id(s, bad, seed), rid=new_rid(name)))
    name = "completions_ids_eq_vocab"
    simple(name, f"/v1/completions with a token-list prompt holding {v} at position {BAD_ID_POSITION}",
           {"model": "default", "prompt": _with_bad_id(s, v, seed), "max_tokens": 4, "temperature": 0},
           path="/v1/completions")
    return cases


@dataclass(frozen=True)
class Verdict:
    """How the server answered one request."""

    ok: bool
    outcome: str  # "refused (HTTP 400)", "served", "no answer", "server error (HTTP 500)", ...
    detail: str  # message excerpt


def error_message(payload: Any, text: str) -> str:
    """The human part of an error answer: SGLang's ``{"error": {"message"}}``, FastAPI's ``{"detail"}``, or text."""
    if isinstance(payload, dict):
        err = payload.get("error", payload.get("detail", payload.get("message")))
        if isinstance(err, dict):
            err = err.get("message", err)
        if err is not None:
            return err if isinstance(err, str) else json.dumps(err)[:600]
    return text


def _served_ok(payload: Any, vocab_size: int) -> tuple[bool, str]:
    """Does a 200 answer carry valid output ids (one result, a batch, or OpenAI ``choices``)?"""
    items = payload if isinstance(payload, list) else [payload]
    for item in items:
        if not isinstance(item, dict):
            return False, f"unexpected answer {str(item)[:100]}"
        if "choices" in item:
            continue
        ids = item.get("output_ids")
        if not isinstance(ids, list):
            return False, f"no output_ids (keys {sorted(item)[:8]})"
        bad = [t for t in ids if not isinstance(t, int) or not 0 <= t < vocab_size]
        if bad:
            return False, f"output ids out of range: {bad[:3]}"
    return True, f"{len(items)} result(s) with valid output ids"


def judge(expect: str, status: Optional[int], payload: Any, text: str, transport_error: str,
          vocab_size: int) -> Verdict:
    """The verdict on one answer (see the module docstring)."""
    if status is None:
        return Verdict(False, "no answer", transport_error[:300])
    msg = " ".join(error_message(payload, text).split())[:300]
    if 400 <= status < 500:
        return Verdict(bool(msg), f"refused (HTTP {status})", msg or "(empty body)")
    if status >= 500:
        return Verdict(False, f"server error (HTTP {status})", msg)
    if isinstance(payload, dict) and "error" in payload:
        return Verdict(True, f"refused (HTTP {status} with an error object)", msg)
    if expect == "error":
        return Verdict(False, f"accepted (HTTP {status}) although it should be refused", text[:200])
    ok, why = _served_ok(payload, vocab_size)
    return Verdict(ok, f"served (HTTP {status})" if ok else f"bad answer (HTTP {status})", why)
