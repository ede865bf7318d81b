"""Offline accuracy harness: RULER-style tasks (:mod:`sgl_qwen1m.model.tasks`), runners for every way to decode,
results JSON.

* ``runners``: ``TorchRunner`` (pure-torch reference, CPU or CUDA), ``EngineRunner`` (in-process ``sglang.Engine``),
  ``HttpRunner`` (a running server's ``/generate``); all send token ids and decode greedily;
* ``harness``: samples per (task, length multiple), evaluation, accuracy / agreement rows, results files;
* ``demo``: ``python -m sgl_qwen1m demo``; ``cli``: that verb and ``python -m sgl_qwen1m eval {run,agree}``, which runs
  or compares backends.

Nothing here imports SGLang at import time.
"""
