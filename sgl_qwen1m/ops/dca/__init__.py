"""Exact Dual Chunk Attention: ``plan`` on host ints once per batch, ``run`` per layer (see :mod:`sgl_qwen1m.ops`)."""
