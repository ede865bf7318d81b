"""Benchmarks of the ``qwen1m`` attention backend against SGLang's own, on dummy weights.

``python -m sgl_qwen1m bench e2e`` (TTFT / decode step / peak memory through ``sgl.Engine``), ``serve-smoke`` (one
long request through ``sglang.launch_server``), ``reliability`` (hostile requests against one server, each followed
by a normal one), ``ops-decode`` / ``ops-sparse`` (kernel timings), ``plot`` and
``plan`` (FLOP floor and memory arithmetic of :mod:`sgl_qwen1m.sizing`, no GPU). The backends are
:data:`sgl_qwen1m.bench.backends.SPECS`; results follow one schema (:mod:`sgl_qwen1m.bench.results`).
``python -m sgl_qwen1m.bench ...`` is the same command line (committed result files record that spelling).

Importing this package is cheap: SGLang, torch and matplotlib are imported lazily inside the functions that need
them.
"""

from .results import METRICS, Results, validate

__all__ = ["METRICS", "Results", "validate"]
