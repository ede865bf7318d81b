"""Triton helpers shared by the sparse estimation (``estimate.py``) and attention (``attention.py``) kernels."""

from __future__ import annotations

import os
from typing import Optional

import triton
import triton.language as tl

__all__ = ["LOG2E", "_tuned", "_load_q", "_load_kv"]

LOG2E = 1.4426950408889634


def _tuned(stages: tuple[int, ...], reset: Optional[list[str]] = None):
    """Autotune ``num_stages`` (4 warps: one warpgroup per 64-row tile) once per head shape; plain in the interpreter.

    Measured on H100 (benchmarks/results/sparse-ab-h100/tune_sparse_h100.log): 4 warps beat 8, and deeper pipelines hide the
    latency of the slot-table -> K/V gather chain (2 stages 21.6 ms, 4 stages 13.0 ms for one 16K-query chunk).
    """

    def wrap(fn):
        if os.environ.get("TRITON_INTERPRET") == "1":
            return fn
        configs = [triton.Config({}, num_warps=4, num_stages=s) for s in stages]
        return triton.autotune(configs=configs, key=["D", "G", "DCA"], reset_to_zero=reset)(fn)

    return wrap


@triton.jit
def _load_q(Q, s_qt, s_qv, s_qh, trow, rmask, var, h, D: tl.constexpr):
    """``[BM, D]`` rows of query variant ``var`` of head ``h`` (unscaled: logits are scaled in fp32 after the dot)."""
    d = tl.arange(0, D)
    return tl.load(Q + trow[:, None] * s_qt + var * s_qv + h * s_qh + d[None, :], mask=rmask[:, None], other=0.0)


@triton.jit
def _load_kv(X, s_xn, kvoff, slots, cmask, D: tl.constexpr):
    d = tl.arange(0, D)
    return tl.load(X + slots[:, None] * s_xn + kvoff + d[None, :], mask=cmask[:, None], other=0.0)
