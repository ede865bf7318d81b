"""Shared test setup: import path, deterministic seeding, hypothesis profile."""

from __future__ import annotations

import importlib
import os
import random
import sys
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from sgl_qwen1m.ops.triton_interpreter import install_scalar_index_shim  # noqa: E402

# CI-friendly: no per-example deadline (CPU torch start-up is noisy), fixed example budget.
settings.register_profile(
    "sgl_qwen1m", deadline=None, max_examples=120, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "sgl_qwen1m"))

# Tests use tiny tensors; intra-op threads only add OpenMP spin-wait overhead, which explodes (>10x) when the
# CPU is shared with other jobs. Override with SGL_QWEN1M_TEST_THREADS.
torch.set_num_threads(int(os.environ.get("SGL_QWEN1M_TEST_THREADS", "1")))

# Without a GPU, Triton kernels run in Triton's CPU interpreter (read when a kernel is first defined, so set it
# before any test module imports Triton).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# In the interpreter, let loaded scalars bound loops (a no-op when compiling, or on an unknown Triton version).
install_scalar_index_shim()


@pytest.fixture(autouse=True)
def _seed() -> None:
    """Every test starts from the same RNG state, so random tensors are reproducible."""
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture
def gen() -> torch.Generator:
    """A private seeded generator for tests that draw many tensors."""
    return torch.Generator().manual_seed(1234)


@pytest.fixture(scope="module")
def sglang():
    """The installed SGLang; tests that need it skip without it, except in a venv built by scripts/setup-cpu.sh
    (it leaves ``sgl_qwen1m-expects-sglang`` in the prefix), where a missing SGLang is a setup bug and fails."""
    if (Path(sys.prefix) / "sgl_qwen1m-expects-sglang").exists():
        return importlib.import_module("sglang")
    return pytest.importorskip("sglang")
