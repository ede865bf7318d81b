"""The chunked-prefill scheduler's brain, in plain Python (no SGLang, no torch): a cost model of one forward step
(:mod:`.cost`), per-GPU coefficients fitted from measured timings (:mod:`.profile`, stored under ``profiles/``;
the H100 one derived from committed benchmark rows by :mod:`.calibrate`), the per-step policy (:mod:`.policy`) and
predicted timelines (:mod:`.simulate`), and its side of a running server (:mod:`.serving`: settings, profile lookup,
one plan per SGLang pass). The SGLang hooks that call it: ``sgl_qwen1m/adapter/scheduler_hook.py``
(``docs/scheduler.md``).
"""
