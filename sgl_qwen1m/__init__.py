"""sgl_qwen1m: million-token serving for Qwen2.5-1M-style models (Dual Chunk Attention + sparse prefill) on SGLang.

Importing this package is cheap: it imports neither SGLang, Triton nor FlashInfer. The SGLang plugin lives in
``sgl_qwen1m.adapter`` and is loaded by SGLang through the ``sglang.srt.plugins`` entry point.
"""

__version__ = "0.1.0"
