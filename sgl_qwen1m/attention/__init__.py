"""Attention math and kernels.

Dimension legend used in every docstring: T = tokens in a batch (token-major, requests back to back),
B = requests, H = query heads, Hkv = KV heads, G = H / Hkv, D = head dim, L = a request's sequence length,
C = DCA chunk length ``chunk_size - local_size``. LSEs from FlashInfer are base 2; the references use natural log.

``dca``, ``indices`` and ``reference`` are plain torch (CPU-testable); ``wrapper`` is the only module here that
imports FlashInfer.
"""
