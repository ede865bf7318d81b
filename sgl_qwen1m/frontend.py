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
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = ["ReferenceEngine", "engine_backend"]


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

    def _one(self, prompt: Optional[str], ids: Optional[Sequence[int]], sp: dict) -> dict:
        from sgl_qwen1m.model.vocab import EOS_ID

        if sp.get("temperature", 0.0) != 0 and sp.get("top_k", -1) != 1:
            raise ValueError(
                f"ReferenceEngine decodes greedily only; got temperature={sp.get('temperature')}: "
                "pass temperature=0 to sgl.gen (the frontend's default is 1.0)"
            )
        ids = list(ids) if ids is not None else self.tokenizer.encode(prompt or "").ids
        n = int(sp.get("max_new_tokens", 16) or 0)
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
