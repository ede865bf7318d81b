"""Device-wide GPU memory sampling with nvidia-smi.

SGLang's model runs in a scheduler *subprocess*, so ``torch.cuda.max_memory_allocated`` in the caller sees
nothing. ``nvidia-smi --query-gpu=memory.used`` sees every process on the device (the number includes the CUDA
contexts and PyTorch's cached-but-free blocks, i.e. what another process could not use). A daemon thread polls it;
``window()`` returns the peak since the last ``reset()``.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from typing import Callable, Optional

__all__ = ["query_used_mib", "GpuMemSampler"]


def _device_index() -> str:
    """nvidia-smi index of the first visible device (numeric ``CUDA_VISIBLE_DEVICES`` entry, else 0)."""
    first = (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip()
    return first if first.isdigit() else "0"


def query_used_mib(index: Optional[str] = None, timeout: float = 10.0) -> Optional[float]:
    """``memory.used`` in MiB of one GPU, or None when nvidia-smi is missing or fails."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "-i", index or _device_index(), "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=True,
        ).stdout.strip()
        return float(out.splitlines()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


class GpuMemSampler:
    """Poll ``memory.used`` every ``interval_s`` in a daemon thread; track the overall and windowed peak (MiB).

    ``query`` is injectable for tests. Stop the sampler before ``Engine.shutdown()``: that call kills every child
    process of the caller, nvidia-smi included (harmless, but the sample is lost).
    """

    def __init__(self, interval_s: float = 0.2, query: Optional[Callable[[], Optional[float]]] = None) -> None:
        self.interval_s = interval_s
        self._query = query or query_used_mib
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.peak_mib: Optional[float] = None
        self.window_peak_mib: Optional[float] = None
        self.last_mib: Optional[float] = None
        self.samples = 0

    @property
    def available(self) -> bool:
        """True once at least one sample came back."""
        return self.samples > 0

    def sample(self) -> Optional[float]:
        """Take one sample now and fold it into the peaks."""
        value = self._query()
        if value is None:
            return None
        with self._lock:
            self.samples += 1
            self.last_mib = value
            self.peak_mib = value if self.peak_mib is None else max(self.peak_mib, value)
            self.window_peak_mib = value if self.window_peak_mib is None else max(self.window_peak_mib, value)
        return value

    def _run(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - t0)))

    def start(self) -> "GpuMemSampler":
        """Start polling (idempotent)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="gpu-mem-sampler", daemon=True)
            self._thread.start()
        return self

    def reset(self) -> None:
        """Start a new window (e.g. one measurement)."""
        with self._lock:
            self.window_peak_mib = None
        self.sample()

    def window(self) -> Optional[float]:
        """Peak MiB since the last ``reset()``, including one final sample taken now."""
        self.sample()
        with self._lock:
            return self.window_peak_mib

    def stop(self) -> None:
        """Stop the thread (waits at most one interval plus one nvidia-smi call)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
