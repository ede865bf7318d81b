"""Benchmarks of the ``qwen1m`` attention backend against SGLang's own, on dummy weights.

``python -m sgl_qwen1m.bench e2e`` (TTFT / decode step / peak memory through ``sgl.Engine``),
``serve-smoke`` (one long request through ``sglang.launch_server``), ``plot`` and ``plan`` (FLOP floor and memory
arithmetic, no GPU). Results follow one schema (:mod:`sgl_qwen1m.bench.results`).

Importing this package is cheap: SGLang, torch and matplotlib are imported lazily inside the functions that need
them.
"""

from .floor import QWEN25_7B, ModelShape, plan_memory, prefill_floor_s
from .results import BACKENDS, METRICS, Results, validate

__all__ = ["QWEN25_7B", "ModelShape", "plan_memory", "prefill_floor_s", "BACKENDS", "METRICS", "Results", "validate"]
