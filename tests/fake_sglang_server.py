"""A stand-in for ``python -m sglang.launch_server`` used by tests/test_reliability.py: a TEST DOUBLE FOR THE
TRANSPORT ONLY. It answers the few endpoints the reliability suite uses the way SGLang 0.5.17 does (status codes,
JSON shapes of ``/generate``, ``/v1/loads``, ``/abort_request``, ``/flush_cache``, SSE streaming) so that the suite's
real HTTP client, threads, timeouts, connection drops, idle polling and server restarts are exercised on a CPU.
It proves nothing about SGLang or qwen1m: the GPU run of the suite does that.

One request "runs" at a time (a lock stands for the GPU); a request costs ``FAKE_MS_PER_TOKEN`` ms per prompt token
while it holds ``len(prompt)`` KV tokens. With ``FAKE_DIE_ON_HUGE_ID=1`` the id 2**40 kills the process, as an
out-of-range id kills an unpatched SGLang server.
"""

import argparse
import collections
import json
import os
import select
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int)
ap.add_argument("--host")
ap.add_argument("--context-length", type=int)
ap.add_argument("--max-total-tokens", type=int)
args, rest = ap.parse_known_args()
assert "--skip-tokenizer-init" in rest and "dummy" in rest and "qwen1m" in rest, rest
print("fake server starting", rest, flush=True)
if os.environ.get("FAKE_EXIT_AT_START"):
    print("torch.OutOfMemoryError: CUDA out of memory (fake)", flush=True)
    sys.exit(1)
T0 = time.time()
VOCAB = 152064
MS = float(os.environ.get("FAKE_MS_PER_TOKEN", "1.0"))
GPU = threading.Condition()  # FIFO turns, as SGLang's waiting queue
TURNS = collections.deque()
BUSY = [False]
STATE = {"used": 0, "running": 0, "waiting": 0, "aborted": set(), "cache": []}
STATE_LOCK = threading.Lock()


class Refuse(Exception):
    def __init__(self, status, message):
        super().__init__(message)
        self.status = status


def check_ids(ids):
    if isinstance(ids, list) and ids and all(isinstance(x, list) for x in ids):
        return [check_ids(x)[0] for x in ids]
    if not isinstance(ids, list):
        raise Refuse(422, "input_ids: Input should be a valid list")
    out = []
    for i, x in enumerate(ids):
        if isinstance(x, str) and x.lstrip("-").isdigit():
            x = int(x)  # pydantic's lax mode
        if isinstance(x, float) and x.is_integer():
            x = int(x)
        if not isinstance(x, int) or isinstance(x, bool):
            raise Refuse(422, f"input_ids.{i}: Input should be a valid integer")
        if os.environ.get("FAKE_DIE_ON_HUGE_ID") and x == 2**40:
            print("device-side assert triggered (fake)", flush=True)
            os._exit(3)
        if not 0 <= x < VOCAB:
            raise Refuse(400, f"input_ids[{i}] = {x} is outside [0, {VOCAB})")
        out.append(x)
    if not out:
        raise Refuse(400, "input_ids is empty")
    return [out]


def lcp(a, b):
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class H(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def reply(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        path = urlsplit(self.path).path
        if path == "/health":
            return self.reply(200 if time.time() - T0 > 0.5 else 503, {})
        if path == "/v1/loads":
            with STATE_LOCK:
                d = {"num_used_tokens": STATE["used"], "num_running_reqs": STATE["running"],
                     "num_waiting_reqs": STATE["waiting"]}
            return self.reply(200, {"loads": [d]})
        self.reply(404, {"detail": "Not Found"})

    def disconnected(self):
        r, _, _ = select.select([self.connection], [], [], 0)
        if not r:
            return False
        try:
            return self.connection.recv(1, socket.MSG_PEEK) == b""
        except OSError:
            return True

    def run(self, ids, n, rid, stream):
        """Queue for the GPU, hold len(ids) KV tokens for len(ids) * MS ms, then answer n ids."""
        with STATE_LOCK:
            STATE["waiting"] += 1
        ticket = object()
        with GPU:
            TURNS.append(ticket)
            while TURNS[0] is not ticket or BUSY[0]:
                if rid in STATE["aborted"] or self.disconnected():
                    TURNS.remove(ticket)
                    GPU.notify_all()
                    with STATE_LOCK:
                        STATE["waiting"] -= 1
                    return {"output_ids": [], "meta_info": {"finish_reason": {"type": "abort",
                                                                              "message": "Abort in waiting queue"}}}
                GPU.wait(0.01)
            TURNS.popleft()
            BUSY[0] = True
        try:
            with STATE_LOCK:
                STATE["waiting"] -= 1
                STATE["running"] += 1
                STATE["used"] += len(ids)
                cached = max([lcp(ids, c) for c in STATE["cache"]] or [0])
            t_end = time.time() + (len(ids) - cached) * MS / 1000
            while time.time() < t_end:
                if stream and self.disconnected():
                    print("client disconnected: abort", flush=True)
                    return None
                time.sleep(0.005)
            out = [(sum(ids[-4:]) + 7 * i) % 1000 for i in range(n)]
            with STATE_LOCK:
                STATE["cache"].append(list(ids))
            return {"output_ids": out, "meta_info": {"prompt_tokens": len(ids), "cached_tokens": cached,
                                                     "finish_reason": {"type": "length", "length": n},
                                                     "output_token_logprobs": [[-1.0, t, None] for t in out]}}
        finally:
            with STATE_LOCK:
                STATE["running"] -= 1
                STATE["used"] -= len(ids)
            with GPU:
                BUSY[0] = False
                GPU.notify_all()

    def do_POST(self):
        path = urlsplit(self.path).path
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            if path == "/flush_cache":
                STATE["cache"].clear()
                return self.reply(200, {})
            try:
                body = json.loads(raw)
            except ValueError:
                raise Refuse(422, "JSON decode error")
            if not isinstance(body, dict):
                raise Refuse(422, "Input should be a valid dictionary")
            if path == "/abort_request":
                STATE["aborted"].add(body.get("rid"))
                return self.reply(200, {})
            if path == "/v1/completions":
                batch = check_ids(body.get("prompt"))
                return self.reply(200, {"choices": [{"text": "", "index": 0}]})
            if path != "/generate":
                raise Refuse(404, "Not Found")
            sp = body.get("sampling_params", {})
            if not isinstance(sp, dict):
                raise Refuse(422, "sampling_params: Input should be a valid dictionary")
            if "text" in body:
                raise Refuse(400, "text prompts need a tokenizer (server started with --skip-tokenizer-init)")
            if "input_ids" not in body:
                raise Refuse(400, "Either text, input_ids or input_embeds should be provided.")
            batch = check_ids(body["input_ids"])
            n = sp.get("max_new_tokens", 128)
            if not isinstance(n, int):
                raise Refuse(400, f"max_new_tokens must be an integer, got {n!r}")
            if n < 0:
                raise Refuse(400, f"max_new_tokens must be at least 0, got {n}.")
            for ids in batch:
                if len(ids) >= args.context_length:
                    raise Refuse(400, f"The input ({len(ids)} tokens) is longer than the model's context length")
                if len(ids) + n > args.context_length:
                    raise Refuse(400, "Requested token count exceeds the model's maximum context length")
                if len(ids) >= args.max_total_tokens:
                    raise Refuse(400, f"Input length ({len(ids)} tokens) exceeds the maximum allowed length")
        except Refuse as e:
            key = "detail" if e.status == 422 else "error"
            return self.reply(e.status, {key: str(e)} if key == "detail" else {"error": {"message": str(e)}})
        rid = body.get("rid")
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            out = self.run(batch[0], n, rid, stream=True)
            try:
                if out is not None:
                    self.wfile.write(b"data: " + json.dumps(out).encode() + b"\n\ndata: [DONE]\n\n")
            except OSError:
                pass
            self.close_connection = True
            return
        outs = [self.run(ids, n, rid, stream=False) for ids in batch]
        self.reply(200, outs if len(outs) > 1 else outs[0])


ThreadingHTTPServer.daemon_threads = True
ThreadingHTTPServer((args.host, args.port), H).serve_forever()
