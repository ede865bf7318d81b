"""``sgl_qwen1m.ops.triton_interpreter.install_scalar_index_shim``: version-guarded, idempotent, and it makes a
loaded scalar usable as a loop bound in Triton's interpreter (run in a fresh interpreter with ``TRITON_INTERPRET=1``,
which Triton reads when a kernel is defined)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sgl_qwen1m.ops import triton_interpreter

ROOT = Path(__file__).resolve().parents[1]

_KERNEL = """
import json, os, sys
sys.path.insert(0, {root!r})
from sgl_qwen1m.ops.triton_interpreter import install_scalar_index_shim
first = install_scalar_index_shim()
second = install_scalar_index_shim()
import torch, triton, triton.language as tl

@triton.jit
def _sum_first(X, N, OUT):
    n = tl.load(N)
    acc = tl.zeros([], tl.float32)
    for i in range(0, n):
        acc += tl.load(X + i)
    tl.store(OUT, acc)

x = torch.arange(10, dtype=torch.float32)
out = torch.zeros(1)
_sum_first[(1,)](x, torch.tensor([4], dtype=torch.int32), out)
print(json.dumps({{"first": first, "second": second, "sum": float(out[0])}}))
"""


def test_loaded_scalar_bounds_a_loop_in_the_interpreter():
    triton = pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-c", _KERNEL.format(root=str(ROOT))], env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    known = ".".join(triton.__version__.split(".")[:2]) in triton_interpreter.KNOWN_VERSIONS
    assert got["first"] is known and got["second"] is known  # idempotent: the second call reports the same
    assert got["sum"] == 0 + 1 + 2 + 3


def test_no_patch_on_unknown_version_or_without_the_interpreter(monkeypatch):
    triton = pytest.importorskip("triton")
    from triton.runtime import interpreter

    before = interpreter._patch_lang_tensor
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", "99.1.0")
    assert triton_interpreter.install_scalar_index_shim() is False
    assert interpreter._patch_lang_tensor is before
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert triton_interpreter.install_scalar_index_shim() is False
    assert interpreter._patch_lang_tensor is before


def test_no_patch_when_the_private_function_changed(monkeypatch):
    triton = pytest.importorskip("triton")
    from triton.runtime import interpreter

    def other(tensor, scope, extra):  # a future signature
        pass

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    monkeypatch.setattr(interpreter, "_patch_lang_tensor", other)
    assert triton_interpreter.install_scalar_index_shim() is False
    assert interpreter._patch_lang_tensor is other
    monkeypatch.delattr(interpreter, "_patch_lang_tensor")
    assert triton_interpreter.install_scalar_index_shim() is False
