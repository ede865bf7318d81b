"""Sparsity refinement: raise per-head vertical/slash budgets until attention recall reaches a target.

    python -m sgl_qwen1m refine --model DIR --calib FILE_OR_GLOB --length N --target 0.95 \\
        --out DIR/sparse_attention_config.json [--budgets START.json] [--step 1.5] [--device cuda]

Qwen2.5-1M's report (Alg. 1) gives the metric, attention recall ``exp(lse_sparse - lse_full)`` per query, and the
loop ("if recall < threshold, add vertical and slash budget"), but no threshold, data or step. Ours:

* **What is measured.** Per layer and head, serving's own selection (``qwen1m``'s rules through the torch path:
  pieces = DCA chunks (and engine prefill chunks with ``--prefill-chunk``), scores from each piece's last
  ``sparse_attention_last_q`` queries with continuous-position critical variants, ``select_vertical_slash`` with
  sinks and local diagonals forced, 64x64 block diagonals, ``pattern_mask_ref``), against dense DCA attention with
  YaRN, both by the fp32 oracles (:mod:`sgl_qwen1m.ops.sparse.prompt_ref`). Activations are the dense model's
  (calibration never feeds sparse outputs forward). The evaluated queries are a sample per piece: its last
  ``--tail-rows`` (16) plus ``--random-rows`` (128) uniform others, seeded (:mod:`.recall`).
* **Threshold.** A head passes when the *mean* recall over its sampled queries (all calibration sequences) is
  ``>= --target`` (0.95); ``--stat min`` / ``p05`` make it stricter. The report carries mean, min and the statistic
  before and after for every head.
* **Data.** Sequences of exactly ``--length`` tokens (the length the budgets are for: recall falls with length at a
  fixed budget), cut from ``--calib`` (:mod:`.calib`): task prompts, held-out text, anything the model reads.
* **Step.** Each round, every failing head tries one multiplicative step on each axis separately
  (``b -> max(b + min_step, ceil(step * b))``, capped at the calibration length; defaults 1.5 and 64) and keeps the
  axis with the larger recall gain per added attended key (measured on the sampled queries: a slash line costs a
  64-key tile per row block, a column one key, so "per key" compares them fairly); if neither step alone raises
  recall, both are taken. Multiplicative steps reach any budget in O(log L) rounds and keep the relative overshoot
  <= 50%. Heads already at the target keep their budget. A head with both budgets at the cap keeps every diagonal,
  i.e. dense attention (recall 1), so the loop ends.
* **Cost.** Mean budget keys per query (``vertical + slash``, the input of :func:`sgl_qwen1m.sizing.prefill_floor_s`)
  and measured attended keys per query before/after, and the prefill FLOP floor dense / before / after.

Modules: ``recall`` (prepare a layer, evaluate budgets), ``search`` (the per-layer loop), ``calib`` (calibration
windows), ``tool`` (whole model, outputs), ``cli`` (the verb), ``maps`` (``--maps``: per-head score profiles);
``work`` + ``work_cli`` (``python -m sgl_qwen1m sparse-work``: the sparse kernel's share of dense work on a model's
attention and on the dummy-weight proxies); ``reuse*`` (pattern-reuse experiment). Imports ops, model, config,
sizing; never evals or bench.
"""
