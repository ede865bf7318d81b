"""Offline accuracy harness: RULER-style tasks generated locally, runners for every way to decode, results JSON.

* ``tasks``: passkey, NIAH single / multi-key / multi-value, variable tracking, built in token-id space with the
  bundled tokenizer at an exact prompt length (deterministic from a seed); scoring;
* ``runners``: ``TorchRunner`` (pure-torch reference, CPU or CUDA), ``EngineRunner`` (in-process ``sglang.Engine``),
  ``HttpRunner`` (a running server's ``/generate``); all send token ids and decode greedily;
* ``harness``: samples per (task, length multiple), evaluation, accuracy / agreement rows, results files;
* ``demo``: ``python -m sgl_qwen1m demo``; ``python -m sgl_qwen1m.evals`` runs or compares backends.

Nothing here imports SGLang at import time.
"""
