"""Attention operators, one folder each, with the plain-torch planning and fp32 oracles beside the kernels.

* :mod:`sgl_qwen1m.ops.dca`: exact Dual Chunk Attention (``plan`` -> ``run``): ``plan.py`` (positions, YaRN scale,
  segment planning, ``DCAShape``), ``indices.py`` (segments -> paged index tensors), ``attention.py``
  (``DCAAttention`` on FlashInfer), ``rope.py`` (fused DCA RoPE, Triton), ``reference.py`` (fp32 oracles).
* :mod:`sgl_qwen1m.ops.sparse`: vertical-slash sparse prefill (``plan`` -> ``estimate`` -> ``select`` ->
  ``attend``): ``plan.py`` (host planning, constants, per-batch state), ``estimate.py`` / ``select.py`` /
  ``attention.py`` (Triton), ``prefill.py`` (``SparsePrefill``), ``reference.py`` (fp32 oracles and the torch
  selection path).

Dimension legend used in every docstring: T = tokens in a batch (token-major, requests back to back),
B = requests, H = query heads, Hkv = KV heads, G = H / Hkv, D = head dim, L = a request's sequence length,
C = DCA chunk length ``chunk_size - local_size``. LSEs from FlashInfer are base 2; the references use natural log.

``plan``, ``indices`` and ``reference`` modules are plain torch (CPU-testable); only the kernel modules
(``attention``, ``rope``, ``estimate``, ``select``, ``_triton``) and ``triton_interpreter`` import FlashInfer/Triton.
"""
