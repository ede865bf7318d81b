"""Start an in-process SGLang ``Engine`` with this plugin loaded, and update a running server's weights from tensors
(the one place outside the backend that imports SGLang for the tools).

Benchmarks, the accuracy harness and notebooks call :func:`start_engine` instead of importing SGLang themselves.
``sgl.Engine`` loads the ``sglang.srt.plugins`` entry points before it parses its arguments, so ``qwen1m`` is a valid
``attention_backend`` here. SGLang spawns its scheduler, so scripts must call this under ``if __name__ == "__main__":``.

:func:`update_weights_over_http` is ``Engine.update_weights_from_tensor`` for a server started with
``python -m sglang.launch_server`` on the same machine (the load benchmarks' distance-decaying weights).
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from typing import Any, Sequence

__all__ = ["start_engine", "serialize_named_tensors", "update_weights_over_http"]


def start_engine(**kwargs: Any) -> Any:
    """``sglang.Engine(**kwargs)``; sets ``SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK=1`` unless already set."""
    os.environ.setdefault("SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK", "1")
    import sglang as sgl

    return sgl.Engine(**kwargs)


def serialize_named_tensors(named_tensors: Sequence[tuple[str, Any]]) -> str:
    """SGLang's ``MultiprocessingSerializer`` payload (base64) of CPU ``(name, tensor)`` pairs, readable by an
    unrelated process on this machine.

    torch shares CPU storages through file descriptors by default, which only processes of one family can fetch (the
    sender's resource sharer checks its authkey); a server started separately cannot. The ``file_system`` strategy
    names the shared-memory segment instead, so any local process can map it. Tensors must stay alive until the
    receiver has copied them.
    """
    import torch.multiprocessing as tmp
    from sglang.srt.utils.common import MultiprocessingSerializer

    old = tmp.get_sharing_strategy()
    tmp.set_sharing_strategy("file_system")
    try:
        return MultiprocessingSerializer.serialize(list(named_tensors), output_str=True)
    finally:
        tmp.set_sharing_strategy(old)


def update_weights_over_http(
    url: str, named_tensors: Sequence[tuple[str, Any]], *, tp_size: int = 1, flush_cache: bool = True,
    timeout_s: float = 600.0,
) -> tuple[bool, str]:
    """POST ``/update_weights_from_tensor`` of a loopback server: ``(success, message)``.

    One payload per tensor-parallel rank, as ``Engine.update_weights_from_tensor`` sends (fields of SGLang's
    ``UpdateWeightsFromTensorReqInput``). A refused update (HTTP 400) returns ``(False, message)``.
    """
    payload = serialize_named_tensors(named_tensors)
    body = json.dumps({"serialized_named_tensors": [payload] * tp_size, "flush_cache": flush_cache}).encode()
    req = urllib.request.Request(url.rstrip("/") + "/update_weights_from_tensor", data=body,
                                 headers={"Content-Type": "application/json"}, method="POST")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: never through a proxy
    try:
        with opener.open(req, timeout=timeout_s) as r:
            out = json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        out = json.loads(e.read() or b"{}") if e.code == 400 else {"success": False, "message": f"HTTP {e.code}"}
    return bool(out.get("success")), str(out.get("message", ""))
