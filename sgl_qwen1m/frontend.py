"""Run SGLang frontend-language programs (``@sgl.function``) in a notebook without a server.

    import sglang as sgl
    from sgl_qwen1m.frontend import engine_backend, ReferenceEngine
    engine = sgl_qwen1m.api.launch_engine(model_path)            # GPU: sgl.Engine with --attention-backend qwen1m
    # engine = ReferenceEngine(model_dir)                        # CPU: the package's pure-torch reference model
    sgl.set_default_backend(engine_backend(engine, model_path))
    state = my_program.run(document=..., question=...)

:class:`ReferenceEngine` serves the bundled tiny model (or any model ``TinyQwen2`` loads) with the subset of
``sgl.Engine.generate`` that generation programs use: text or token prompts, greedy decoding, ``max_new_tokens``,
``stop`` strings and ``stop_token_ids``, batches, and ``max_new_tokens=0`` (prefix caching is a no-op).

Inputs are checked the way a server should check them, with a ``ValueError`` that names the problem: an empty
prompt; a token id that is not an int in ``[0, vocab_size)`` (position, value and vocabulary size); a negative or
non-integer ``max_new_tokens``; and any sampling parameter that would change the output but is not implemented
(sampling at ``temperature > 0`` unless ``top_k == 1``, penalties, ``min_new_tokens``, ``n > 1``, ``ignore_eos``,
regex/JSON constraints, ``logit_bias``, unknown keys). ``top_p``, ``top_k`` and ``min_p`` are accepted with
``temperature == 0``: greedy decoding keeps the arg-max token whatever they are, exactly as SGLang does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = ["ReferenceEngine", "engine_backend", "check_sampling_params", "check_token_ids"]

# Keys the reference implements, or that cannot change its (greedy) tokens.
_HANDLED = {"max_new_tokens", "temperature", "stop", "stop_token_ids", "top_p", "top_k", "min_p", "sampling_seed",
            "skip_special_tokens", "spaces_between_special_tokens", "no_stop_trim"}
# Keys that change the output unless they hold this neutral value.
_NEUTRAL: dict[str, Any] = {"min_new_tokens": 0, "n": 1, "frequency_penalty": 0.0, "presence_penalty": 0.0,
                            "repetition_penalty": 1.0, "ignore_eos": False}
# Keys that must be absent, None or empty.
_UNSUPPORTED_IF_SET = ("regex", "json_schema", "ebnf", "structural_tag", "stop_regex", "logit_bias", "custom_params")


def check_sampling_params(sp: dict) -> None:
    """``ValueError`` for a sampling parameter the greedy reference would silently ignore (see the module doc)."""
    temperature = sp.get("temperature", 0.0)
    if temperature is None:
        temperature = 0.0
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if temperature != 0 and sp.get("top_k", -1) != 1:
        raise ValueError(
            f"ReferenceEngine decodes greedily only; got temperature={temperature}: "
            "pass temperature=0 to sgl.gen (the frontend's default is 1.0)"
        )
    n = sp.get("max_new_tokens", 16)
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"max_new_tokens must be an integer >= 0, got {n!r}")
    for key, value in sp.items():
        if key in _HANDLED:
            continue
        if key in _NEUTRAL:
            if value is not None and value != _NEUTRAL[key]:
                raise ValueError(
                    f"ReferenceEngine does not implement {key}={value!r} (only {key}={_NEUTRAL[key]!r}); "
                    "use an sgl.Engine for it"
                )
        elif key in _UNSUPPORTED_IF_SET:
            if value not in (None, "", (), [], {}):
                raise ValueError(f"ReferenceEngine does not implement {key} (got {value!r}); use an sgl.Engine for it")
        elif value is not None:
            raise ValueError(f"ReferenceEngine does not know the sampling parameter {key!r} (= {value!r})")


def check_token_ids(ids: Sequence[Any], vocab_size: int) -> list[int]:
    """The ids as a list; ``ValueError`` naming the first id that is not an int in ``[0, vocab_size)``."""
    out = list(ids)
    if not out:
        raise ValueError("empty prompt: give at least one token (text or input_ids)")
    for pos, tok in enumerate(out):
        if isinstance(tok, bool) or not isinstance(tok, int) or not 0 <= tok < vocab_size:
            raise ValueError(
                f"input_ids[{pos}] = {tok!r} is not a token id: ids must be integers in [0, {vocab_size}) "
                f"(vocab_size {vocab_size})"
            )
    return out


def engine_backend(engine: Any, model_path: Union[str, Path], chat_template_name: Optional[str] = None) -> Any:
    """An SGLang frontend backend (``sgl.set_default_backend(...)``) that sends requests to ``engine`` in-process."""
    from sgl_qwen1m.adapter.lang import EngineBackend

    return EngineBackend(engine, str(model_path), chat_template_name)


class ReferenceEngine:
    """CPU stand-in for ``sgl.Engine`` backed by the fp32 torch reference model (greedy only)."""

    def __init__(self, model_dir: Union[str, Path, None] = None, device: str = "cpu") -> None:
        from tokenizers import Tokenizer

        from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR
        from sgl_qwen1m.model.torch_qwen2 import TinyQwen2

        self.model_dir = Path(model_dir or BUNDLED_MODEL_DIR)
        self.model = TinyQwen2.from_pretrained(self.model_dir, device=device)
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.requests = 0
        self.vocab_size = int(self.model.model.embed_tokens.num_embeddings)

    def _one(self, prompt: Optional[str], ids: Optional[Sequence[int]], sp: dict) -> dict:
        from sgl_qwen1m.model.vocab import EOS_ID

        check_sampling_params(sp)
        n = int(sp.get("max_new_tokens", 16) or 0)
        ids = list(ids) if ids is not None else self.tokenizer.encode(prompt or "").ids
        if ids or n > 0:  # an empty prompt is only fine when nothing is generated (the frontend's cache_prefix)
            ids = check_token_ids(ids, self.vocab_size)
        stop = sp.get("stop") or []
        stop = [stop] if isinstance(stop, str) else list(stop)
        stop_ids = tuple(sp.get("stop_token_ids") or ()) + (EOS_ID,)
        out: list[int] = []
        if n > 0:
            out = self.model.generate(ids, n, stop_ids=stop_ids)
        if out and out[-1] in stop_ids:
            out = out[:-1]
        text = self.tokenizer.decode(out)
        for s in stop:
            if s and s in text:
                text = text[: text.index(s)]
        self.requests += 1
        return {"text": text, "output_ids": out,
                "meta_info": {"id": f"ref-{self.requests}", "prompt_tokens": len(ids), "completion_tokens": len(out)}}

    def generate(self, prompt: Union[str, Sequence[str], None] = None, sampling_params: Optional[dict] = None,
                 input_ids: Optional[Sequence[Any]] = None, stream: bool = False, **kwargs: Any) -> Any:
        if kwargs.get("return_logprob"):
            raise NotImplementedError("ReferenceEngine does not return logprobs (sgl.select needs an sgl.Engine)")
        sp = dict(sampling_params or {})
        if isinstance(prompt, (list, tuple)) or (input_ids and isinstance(input_ids[0], (list, tuple))):
            items = prompt if prompt is not None else [None] * len(input_ids)
            ids = input_ids if input_ids is not None else [None] * len(items)
            res: Any = [self._one(p, i, sp) for p, i in zip(items, ids)]
        else:
            res = self._one(prompt, input_ids, sp)
        return iter([res]) if stream else res

    def flush_cache(self) -> None:
        pass

    def get_server_info(self) -> dict:
        return {"model_path": str(self.model_dir), "engine": "sgl_qwen1m ReferenceEngine (CPU)"}

    def shutdown(self) -> None:
        pass
