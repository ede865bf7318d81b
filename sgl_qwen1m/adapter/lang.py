"""SGLang frontend-language backend that runs ``sgl.function`` programs on an in-process engine.

SGLang 0.5.17 runs frontend programs only against a server (``RuntimeEndpoint``, HTTP). :class:`EngineBackend`
keeps ``RuntimeEndpoint``'s request shaping (sampling parameters, logprob options, choice scoring) and sends each
request to an ``sgl.Engine`` (or :class:`sgl_qwen1m.frontend.ReferenceEngine`) in this process instead of over HTTP.
"""

from __future__ import annotations

import threading
from typing import Any, Iterator

from sglang.lang.backend.runtime_endpoint import RuntimeEndpoint
from sglang.lang.chat_template import get_chat_template, get_chat_template_by_model_path

from sgl_qwen1m.adapter.compat import global_config as _global_config

global_config = _global_config()  # sglang.global_config (0.5.17) / sglang.lang.global_config (0.5.18+)

__all__ = ["EngineBackend"]


class EngineBackend(RuntimeEndpoint):
    """``sgl.set_default_backend(EngineBackend(engine))``; ``engine.generate`` must accept SGLang's keyword
    arguments (``prompt``/``input_ids``, ``sampling_params``, ``return_logprob``, ..., ``stream``)."""

    def __init__(self, engine: Any, model_path: str, chat_template_name: str | None = None) -> None:
        # RuntimeEndpoint.__init__ would query a server; set what its methods read instead.
        self.support_concate_and_append = False
        self.base_url = "engine://in-process"
        self.api_key = None
        self.verify = None
        self.engine = engine
        self.model_info = {"model_path": model_path}
        # The frontend runs forks and run_batch items in threads; sgl.Engine.generate drives one asyncio loop with
        # run_until_complete, which fails ("this event loop is already running") when two threads enter it.
        self._lock = threading.Lock()
        self.chat_template = (
            get_chat_template(chat_template_name) if chat_template_name else get_chat_template_by_model_path(model_path)
        )

    # every request of the parent class funnels through here
    def _generate_http_request(self, s, data: dict) -> Any:
        self._add_images(s, data)
        return self._call(data)

    def _call(self, data: dict) -> Any:
        kw = dict(data)
        if "text" in kw:
            kw["prompt"] = kw.pop("text")
        with self._lock:
            out = self.engine.generate(**kw)
            return list(out) if kw.get("stream") else out

    def flush_cache(self) -> None:
        self.engine.flush_cache()

    def get_server_info(self) -> dict:
        return self.engine.get_server_info()

    def cache_prefix(self, prefix_str: str) -> None:
        self._call({"text": prefix_str, "sampling_params": {"max_new_tokens": 0}})

    def commit_lazy_operations(self, s) -> None:
        self._generate_http_request(s, {"text": s.text_, "sampling_params": {"max_new_tokens": 0}})

    def _request(self, s, sampling_params) -> dict:
        self._handle_dtype_to_regex(sampling_params)
        data = {
            "text": s.text_,
            "sampling_params": {
                "skip_special_tokens": global_config.skip_special_tokens_in_output,
                "spaces_between_special_tokens": global_config.spaces_between_special_tokens_in_out,
                **sampling_params.to_srt_kwargs(),
            },
        }
        for item in ("return_logprob", "logprob_start_len", "top_logprobs_num", "return_text_in_logprobs"):
            value = getattr(sampling_params, item, None)
            if value is not None:
                data[item] = value
        return data

    def generate(self, s, sampling_params):
        obj = self._generate_http_request(s, self._request(s, sampling_params))
        return obj["text"], obj["meta_info"]

    def generate_stream(self, s, sampling_params) -> Iterator[tuple[str, dict]]:
        data = self._request(s, sampling_params)
        data["stream"] = True
        self._add_images(s, data)
        text = ""
        for chunk in self._call(data):
            new = chunk["text"]
            piece = new[len(text):] if new.startswith(text) else new  # cumulative or incremental chunks
            text = new if new.startswith(text) else text + new
            yield piece, chunk["meta_info"]

    def concatenate_and_append(self, src_rids, dst_rid):
        raise NotImplementedError("EngineBackend does not support concatenate_and_append")

    def shutdown(self) -> None:
        self.engine.shutdown()
