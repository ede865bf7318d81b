"""Where a result came from: the header every results file carries (``command``, ``gpu``, ``versions``, ``date``).

One place for it, below ``bench``, ``evals`` and ``refine`` (which may not import each other):

* :func:`collect_versions` -- installed versions from package metadata (nothing imported; torch's CUDA on request);
* :func:`gpu_name` -- ``name, memory.total, driver`` of the first visible GPU from ``nvidia-smi`` (no CUDA context);
* :func:`header` -- the four fields, in the results format's order.

Nothing here imports SGLang; torch only when asked for its CUDA version or a device's name.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
from importlib import metadata as _md
from typing import Any, Optional, Sequence

__all__ = ["PACKAGES", "collect_versions", "gpu_name", "short_gpu_name", "now_iso", "header"]

PACKAGES = ("sglang", "flashinfer-python", "torch", "sglang-kernel", "sgl-kernel", "triton", "transformers",
            "tokenizers")


def collect_versions(with_torch_cuda: bool = True, packages: Sequence[str] = PACKAGES) -> dict[str, Optional[str]]:
    """Installed versions of ``packages`` that are present, plus ``sgl_qwen1m``, ``python`` and (optional) torch's
    CUDA (``None`` when torch is missing or broken)."""
    versions: dict[str, Optional[str]] = {}
    for pkg in packages:
        try:
            versions[pkg] = _md.version(pkg)
        except _md.PackageNotFoundError:
            continue
    from sgl_qwen1m import __version__

    versions["sgl_qwen1m"] = __version__
    versions["python"] = sys.version.split()[0]
    if with_torch_cuda:
        try:
            import torch

            versions["cuda"] = torch.version.cuda
        except Exception:  # torch missing or broken: record what we know
            versions["cuda"] = None
    return versions


def gpu_name() -> str:
    """``name, memory.total, driver`` of the first visible GPU from nvidia-smi, or ``"unknown"``."""
    idx = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"
    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", idx, "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.strip()
        return out.splitlines()[0] if out else "unknown"
    except (OSError, subprocess.SubprocessError, IndexError):
        return "unknown"


def short_gpu_name(device: Any = None) -> str:
    """The GPU's name alone (``NVIDIA H100 80GB HBM3``): of torch ``device`` when it is a CUDA device, ``"cpu"`` for
    a CPU device, else of nvidia-smi's first visible GPU (``"cpu"`` when it finds none)."""
    if device is not None:
        if getattr(device, "type", str(device)) != "cuda":
            return "cpu"
        import torch

        return torch.cuda.get_device_name(device)
    name = gpu_name().split(",")[0].strip()
    return "cpu" if name == "unknown" else name


def now_iso(utc: bool = True) -> str:
    """The time to the second: UTC (``+00:00``) or local with its offset."""
    now = _dt.datetime.now(_dt.timezone.utc) if utc else _dt.datetime.now().astimezone()
    return now.isoformat(timespec="seconds")


def header(command: str, gpu: Optional[str] = None, versions: Optional[dict[str, Optional[str]]] = None,
           **extra: Any) -> dict[str, Any]:
    """``{"command", "gpu", "versions", "date", **extra}``: ``gpu`` default :func:`short_gpu_name`, ``versions``
    default :func:`collect_versions`."""
    return {"command": command, "gpu": short_gpu_name() if gpu is None else gpu,
            "versions": collect_versions() if versions is None else versions, "date": now_iso(), **extra}
