"""The reliability suite's HTTP side: one request with a timeout that never raises, concurrent requests in daemon
threads, and the server's KV-pool state (``/v1/loads``) polled until the pool is idle. Standard library only
(``http.client``), loopback only.
"""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional
from urllib.parse import urlsplit

from .gpu_mem import query_used_mib

__all__ = ["Reply", "connect", "http_call", "post", "kv_state", "wait_idle", "in_threads", "in_threads_async"]


@dataclass
class Reply:
    """One HTTP answer; ``status`` None when none came (``error`` says why)."""

    status: Optional[int]
    text: str = ""
    error: str = ""
    elapsed_s: float = 0.0

    @property
    def payload(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    def short(self) -> str:
        if self.status is None:
            return f"no answer: {self.error}"[:200]
        return f"HTTP {self.status}: {' '.join(self.text.split())[:160]}"


def connect(base: str, timeout: float) -> http.client.HTTPConnection:
    """A connection to ``base``, which must be on loopback (every bench client talks to a server on this host)."""
    u = urlsplit(base)
    if u.hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"bench clients talk to a server on this host (loopback) only, got {base}")
    return http.client.HTTPConnection(u.hostname, u.port or 80, timeout=timeout)


def http_call(base: str, method: str, path: str, body: Optional[bytes] = None, timeout: float = 30.0) -> Reply:
    """One request with a socket timeout; never raises for network trouble (the Reply says what happened)."""
    t0 = time.monotonic()
    conn = connect(base, timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        return Reply(resp.status, text, elapsed_s=time.monotonic() - t0)
    except (socket.timeout, TimeoutError):
        return Reply(None, error=f"timeout after {timeout:.0f}s", elapsed_s=time.monotonic() - t0)
    except (OSError, http.client.HTTPException) as e:
        return Reply(None, error=f"{type(e).__name__}: {e}", elapsed_s=time.monotonic() - t0)
    finally:
        conn.close()


def post(base: str, path: str, obj: Any, timeout: float) -> Reply:
    return http_call(base, "POST", path, json.dumps(obj).encode(), timeout)


def kv_state(base: str) -> Optional[dict[str, Any]]:
    """``{"used", "running", "waiting", "source"}`` from ``/v1/loads`` (or the older ``/get_load``); None if neither."""
    r = http_call(base, "GET", "/v1/loads?include=core", timeout=10)
    loads = r.payload.get("loads") if r.status == 200 and isinstance(r.payload, dict) else None
    if isinstance(loads, list) and loads and isinstance(loads[0], dict):
        d = loads[0]
        return {"used": int(d.get("num_used_tokens", 0)), "running": int(d.get("num_running_reqs", 0)),
                "waiting": int(d.get("num_waiting_reqs", 0)), "source": "/v1/loads"}
    r = http_call(base, "GET", "/get_load", timeout=10)
    if r.status == 200 and isinstance(r.payload, list) and r.payload and isinstance(r.payload[0], dict):
        d = r.payload[0]
        return {"used": int(d["num_tokens"]) - int(d["num_pending_tokens"]), "running": int(d["num_reqs"]) -
                int(d["num_waiting_reqs"]), "waiting": int(d["num_waiting_reqs"]), "source": "/get_load"}
    return None


def wait_idle(base: str, baseline: Optional[dict[str, Any]], timeout_s: float) -> tuple[bool, str, float]:
    """Poll until no request runs or waits and the KV pool is back at ``baseline['used']`` (or nvidia-smi within
    1 GiB of ``baseline['gpu_mib']`` when the server has no load endpoint). ``baseline`` None: only no requests."""
    t0, last = time.monotonic(), "no sample"
    while True:
        st = kv_state(base)
        if st is not None:
            idle_used = st["used"] if baseline is None else baseline.get("used", 0)  # None: no request left only
            last = f"kv used {st['used']} (idle {idle_used}), running {st['running']}, waiting {st['waiting']}"
            if st["running"] == 0 and st["waiting"] == 0 and st["used"] <= idle_used:
                return True, last, time.monotonic() - t0
        elif baseline and baseline.get("gpu_mib") is not None:
            mib = query_used_mib()
            last = f"nvidia-smi {mib} MiB (idle {baseline['gpu_mib']:.0f})"
            if mib is not None and mib <= baseline["gpu_mib"] + 1024:
                return True, last, time.monotonic() - t0
        if time.monotonic() - t0 > timeout_s:
            return False, f"not idle after {timeout_s:.0f}s: {last}", time.monotonic() - t0
        time.sleep(0.5)


def in_threads(calls: list[Callable[[], Reply]], timeout_s: float, stagger_s: float = 0.0) -> list[Reply]:
    """Run ``calls`` concurrently (daemon threads, so a stuck one never blocks exit); a call still running after
    ``timeout_s`` yields a Reply without status."""
    out: list[Optional[Reply]] = [None] * len(calls)

    def run(i: int) -> None:
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(len(calls))]
    t0 = time.monotonic()
    for t in threads:
        t.start()
        time.sleep(stagger_s)
    for t in threads:
        t.join(max(0.0, timeout_s - (time.monotonic() - t0)))
    return [r if r is not None else Reply(None, error=f"client still waiting after {timeout_s:.0f}s") for r in out]


def in_threads_async(call: Callable[[], Reply]) -> Callable[[float], Reply]:
    """Start ``call`` in a daemon thread; the returned function waits for it at most ``timeout`` seconds."""
    box: list[Reply] = []
    th = threading.Thread(target=lambda: box.append(call()), daemon=True)
    th.start()

    def wait(timeout: float) -> Reply:
        th.join(timeout)
        return box[0] if box else Reply(None, error=f"client still waiting after {timeout:.0f}s")

    return wait
