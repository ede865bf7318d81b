"""Things that turn prompts (token ids) into greedy continuations (token ids).

* :class:`TorchRunner`: the pure-torch reference (:class:`sgl_qwen1m.model.torch_qwen2.TinyQwen2`), CPU or CUDA.
* :class:`EngineRunner`: an in-process ``sglang.Engine`` via :func:`sgl_qwen1m.adapter.engine.start_engine`
  (SGLang imported lazily, GPU host only).
* :class:`HttpRunner`: a running SGLang server's native ``/generate`` endpoint (stdlib ``urllib``).

All send token ids, never text, so every runner sees exactly the same prompt, and all decode greedily
(temperature 0) up to EOS (``<|endoftext|>``) or ``max_new_tokens``.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Optional, Protocol, Sequence, Union

from tqdm.auto import tqdm

from sgl_qwen1m.model.vocab import EOS_ID

__all__ = ["Runner", "TorchRunner", "EngineRunner", "HttpRunner", "EOS_ID"]


class Runner(Protocol):
    """``generate(prompts, max_new_tokens)`` -> one list of output ids per prompt."""

    name: str

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int]) -> list[list[int]]: ...

    def close(self) -> None: ...


class TorchRunner:
    """Greedy decoding through the fp32 torch reference, one prompt at a time (with a KV cache).

    ``use_dca=None`` follows the model's config; ``False`` forces plain RoPE on a DCA model (RoPE baseline).
    """

    def __init__(
        self,
        model_dir: Union[str, Path, None] = None,
        device: str = "cpu",
        use_dca: Optional[bool] = None,
        model: Any = None,
        name: Optional[str] = None,
        impl: str = "auto",
        progress: bool = True,
    ) -> None:
        from sgl_qwen1m.model.torch_qwen2 import TinyQwen2

        if model is None:
            if model_dir is None:
                raise ValueError("TorchRunner needs model_dir or model")
            model = TinyQwen2.from_pretrained(model_dir, device=device, use_dca=use_dca)
        self.model = model
        self.impl = impl
        self.progress = progress
        self.name = name or ("reference-dca" if model.dca is not None else "reference-rope")

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int]) -> list[list[int]]:
        bar = tqdm(list(zip(prompts, max_new_tokens)), desc=self.name, unit="prompt", disable=not self.progress)
        return [self.model.generate(p, n, stop_ids=(EOS_ID,), impl=self.impl) for p, n in bar]

    def close(self) -> None:
        pass


def _sampling(n: int) -> dict[str, Any]:
    return {"temperature": 0.0, "max_new_tokens": int(n), "stop_token_ids": [EOS_ID]}


class EngineRunner:
    """An ``sglang.Engine`` on ``model_dir`` with ``attention_backend``; started on first use, closed by ``close``.

    Must be used from a script guarded by ``if __name__ == "__main__":`` (SGLang spawns its scheduler).
    Prompts go in batches of ``batch_size``; extra keyword arguments go to ``sglang.Engine`` (e.g.
    ``mem_fraction_static``, ``chunked_prefill_size``, ``disable_cuda_graph``).
    """

    def __init__(
        self,
        model_dir: Union[str, Path],
        attention_backend: str,
        name: Optional[str] = None,
        batch_size: int = 8,
        **kw: Any,
    ) -> None:
        self.model_dir, self.backend, self.batch_size = str(model_dir), attention_backend, batch_size
        self.name = name or attention_backend
        self.kw = {"mem_fraction_static": 0.5, "context_length": 131072, "log_level": "error", **kw}
        self._engine: Any = None

    def _start(self) -> Any:
        if self._engine is None:
            from sgl_qwen1m.adapter.engine import start_engine  # the one place that imports SGLang

            self._engine = start_engine(model_path=self.model_dir, attention_backend=self.backend, **self.kw)
        return self._engine

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int]) -> list[list[int]]:
        engine = self._start()
        out: list[list[int]] = []
        with tqdm(total=len(prompts), desc=self.name, unit="prompt") as bar:
            for s in range(0, len(prompts), self.batch_size):
                ps, ns = prompts[s : s + self.batch_size], max_new_tokens[s : s + self.batch_size]
                res = engine.generate(input_ids=[list(p) for p in ps], sampling_params=[_sampling(n) for n in ns])
                out += [list(r["output_ids"]) for r in res]
                bar.update(len(ps))
        return out

    def close(self) -> None:
        if self._engine is not None:
            self._engine.shutdown()
            self._engine = None


class HttpRunner:
    """POSTs ``{"input_ids", "sampling_params"}`` to ``{url}/generate`` of a running SGLang server."""

    def __init__(self, url: str = "http://127.0.0.1:30000", name: str = "http", timeout: float = 3600.0) -> None:
        self.url, self.name, self.timeout = url.rstrip("/"), name, timeout

    def check_reachable(self, timeout: float = 10.0) -> None:
        """Raise :class:`sgl_qwen1m.args.CommandError` naming the URL unless ``{url}/health`` answers 200."""
        from sgl_qwen1m.args import CommandError

        hint = "start one (python -m sglang.launch_server --model-path ... --attention-backend qwen1m) or fix --url"
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=timeout) as resp:
                if resp.status == 200:
                    return
                raise CommandError(f"the SGLang server at {self.url} answered /health with HTTP {resp.status}")
        except urllib.error.HTTPError as e:
            raise CommandError(f"the SGLang server at {self.url} answered /health with HTTP {e.code}: {hint}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise CommandError(f"cannot reach an SGLang server at {self.url} ({reason}): {hint}") from None

    def generate(self, prompts: Sequence[Sequence[int]], max_new_tokens: Sequence[int]) -> list[list[int]]:
        out: list[list[int]] = []
        for p, n in tqdm(list(zip(prompts, max_new_tokens)), desc=self.name, unit="prompt"):
            body = json.dumps({"input_ids": list(p), "sampling_params": _sampling(n)}).encode()
            req = urllib.request.Request(f"{self.url}/generate", body, {"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    res = json.loads(resp.read())
            except urllib.error.HTTPError as e:
                from sgl_qwen1m.args import CommandError

                detail = e.read()[:300].decode("utf-8", "replace")
                raise CommandError(f"{self.url}/generate answered HTTP {e.code}: {detail}") from None
            except (urllib.error.URLError, OSError) as e:
                from sgl_qwen1m.args import CommandError

                raise CommandError(f"lost the SGLang server at {self.url} ({getattr(e, 'reason', e)})") from None
            if "output_ids" not in res:
                raise RuntimeError(f"{self.url}/generate returned no output_ids: keys {sorted(res)}")
            out.append(list(res["output_ids"]))
        return out

    def close(self) -> None:
        pass
