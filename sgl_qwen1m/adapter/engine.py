"""Start an in-process SGLang ``Engine`` with this plugin loaded (the one place outside the backend that imports SGLang).

Benchmarks, the accuracy harness and notebooks call :func:`start_engine` instead of importing SGLang themselves.
``sgl.Engine`` loads the ``sglang.srt.plugins`` entry points before it parses its arguments, so ``qwen1m`` is a valid
``attention_backend`` here. SGLang spawns its scheduler, so scripts must call this under ``if __name__ == "__main__":``.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = ["start_engine"]


def start_engine(**kwargs: Any) -> Any:
    """``sglang.Engine(**kwargs)``; sets ``SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK=1`` unless already set."""
    os.environ.setdefault("SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK", "1")
    import sglang as sgl

    return sgl.Engine(**kwargs)
