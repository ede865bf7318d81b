"""Run a script in Triton's CPU interpreter in a fresh process (a helper for kernel tests; no conftest needed, so the
GPU host's ``--noconftest`` runs can import it too)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run_in_triton_interpreter(script: str) -> None:
    """``script`` in a fresh interpreter with ``TRITON_INTERPRET=1`` (read when a kernel is defined) must exit 0 and
    print ``ok`` last. Skips without Triton or NumPy (the interpreter needs both)."""
    pytest.importorskip("triton")
    pytest.importorskip("numpy")
    env = dict(os.environ, TRITON_INTERPRET="1")
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
