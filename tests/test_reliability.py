"""``bench reliability`` on a CPU: the case list, the request builders (each body is what its name claims), the
verdicts, the results rows, the CLI, and the suite's HTTP client end to end against ``tests/fake_sglang_server.py``.

The fake server and the tiny ``http.server`` handlers below are test doubles for the TRANSPORT only (real sockets,
real HTTP, real timeouts and dropped connections); whether SGLang and qwen1m survive the cases is what the GPU run
(``scripts/gpu/README.md``) measures.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sgl_qwen1m.bench import reliability as rel
from sgl_qwen1m.bench import results
from sgl_qwen1m.bench.reliability_cases import BAD_ID_POSITION, CUSTOM_KINDS, Sizes, build_cases, judge, normal_body

ROOT = Path(__file__).resolve().parents[1]
SIZES = Sizes()


def _cases() -> dict:
    return {c.name: c for c in build_cases(SIZES)}


def test_case_list_has_at_least_15_named_cases_and_every_kind() -> None:
    cases = build_cases(SIZES)
    names = [c.name for c in cases]
    assert len(names) >= 15 and len(set(names)) == len(names)
    kinds = {c.kind for c in cases}
    assert set(CUSTOM_KINDS) <= kinds and "simple" in kinds
    assert {"ids_eq_vocab", "ids_huge", "ids_negative", "completions_ids_eq_vocab", "ids_as_strings", "ids_floats",
            "ids_nested_mixed", "ids_as_dict", "sampling_params_string", "max_new_tokens_huge",
            "max_new_tokens_negative", "over_context", "over_pool_under_context", "empty_input_ids", "malformed_json",
            "body_not_object", "stream_drop_mid_prefill", "abort_queued", "concurrent_over_pool",
            "radix_prefix_dense", "radix_prefix_sparse"} <= set(names)
    assert all(c.budget_s > 0 and c.what for c in cases)


def test_out_of_range_id_bodies_hold_the_id_they_name() -> None:
    c = _cases()
    ids = {n: c[n].payload()["input_ids"] for n in ("ids_eq_vocab", "ids_huge", "ids_beyond_int64", "ids_negative")}
    assert ids["ids_eq_vocab"][BAD_ID_POSITION] == SIZES.vocab_size == 152064
    assert ids["ids_huge"][BAD_ID_POSITION] == 2**40
    assert ids["ids_beyond_int64"][BAD_ID_POSITION] > 2**63
    assert ids["ids_negative"][BAD_ID_POSITION] == -1
    for v in ids.values():  # only that one id is bad
        assert sum(not 0 <= x < SIZES.vocab_size for x in v) == 1
    comp = c["completions_ids_eq_vocab"]
    assert comp.path == "/v1/completions" and comp.payload()["prompt"][BAD_ID_POSITION] == SIZES.vocab_size
    assert all(c[n].expect == "error" for n in ids) and comp.expect == "error"


def test_wrong_type_bodies_are_the_wrong_type() -> None:
    c = _cases()
    assert all(isinstance(x, str) and x.isdigit() for x in c["ids_as_strings"].payload()["input_ids"])
    assert all(isinstance(x, float) and not x.is_integer() for x in c["ids_floats"].payload()["input_ids"])
    nested = c["ids_nested_mixed"].payload()["input_ids"]
    assert isinstance(nested[1][1], list)
    assert isinstance(c["ids_as_dict"].payload()["input_ids"], dict)
    assert isinstance(c["sampling_params_string"].payload()["sampling_params"], str)
    assert c["max_new_tokens_string"].payload()["sampling_params"]["max_new_tokens"] == "lots"
    assert c["max_new_tokens_huge"].payload()["sampling_params"]["max_new_tokens"] == 10**9
    assert c["max_new_tokens_negative"].payload()["sampling_params"]["max_new_tokens"] == -1
    assert c["empty_input_ids"].payload()["input_ids"] == []
    assert "input_ids" not in c["no_prompt"].payload() and "text" not in c["no_prompt"].payload()
    assert c["malformed_json"].payload() is None and c["malformed_json"].body.startswith(b"{")
    assert isinstance(c["body_not_object"].payload(), list)


def test_length_cases_sit_where_they_claim() -> None:
    c = _cases()
    over_ctx = c["over_context"]
    assert len(over_ctx.payload()["input_ids"]) == over_ctx.prompt_tokens > SIZES.context_length
    pool = c["over_pool_under_context"]
    assert SIZES.max_total_tokens < len(pool.payload()["input_ids"]) == pool.prompt_tokens < SIZES.context_length
    assert "over_pool_under_context" not in {x.name for x in build_cases(Sizes(context_length=100_000))}
    assert c["concurrent_over_pool"].prompt_tokens * SIZES.concurrent > SIZES.max_total_tokens
    assert SIZES.sparse_threshold < c["stream_drop_mid_prefill"].prompt_tokens < SIZES.context_length
    dense, sparse = c["radix_prefix_dense"], c["radix_prefix_sparse"]
    for case in (dense, sparse):
        assert case.params["prefix_tokens"] % SIZES.chunk == 0  # same chunk boundaries cached and uncached
    assert dense.prompt_tokens <= SIZES.sparse_threshold < sparse.prompt_tokens
    assert SIZES.backend_for(dense.prompt_tokens) == "qwen1m-dense"
    assert SIZES.backend_for(sparse.prompt_tokens) == "qwen1m-sparse"
    body = normal_body(SIZES, 3, "r1")
    assert len(body["input_ids"]) == SIZES.normal_tokens and body["rid"] == "r1"
    assert body["sampling_params"] == {"max_new_tokens": SIZES.new_tokens, "temperature": 0.0, "ignore_eos": True}


def test_judge_verdicts() -> None:
    err = {"error": {"message": "input_ids[5] = 152064 is outside [0, 152064)"}}
    v = judge("error", 400, err, json.dumps(err), "", 10)
    assert v.ok and v.outcome == "refused (HTTP 400)" and "152064" in v.detail
    assert judge("error", 422, {"detail": [{"msg": "bad"}]}, "", "", 10).ok
    assert not judge("error", 200, {"output_ids": [1]}, "", "", 10).ok  # served a request that must be refused
    assert judge("either", 200, {"output_ids": [1, 2]}, "", "", 10).ok
    assert judge("either", 200, [{"output_ids": [1]}, {"output_ids": [3]}], "", "", 10).ok  # a batch
    assert not judge("either", 200, {"output_ids": [99]}, "", "", 10).ok  # id out of range in the output
    assert judge("error", 200, err, "", "", 10).ok  # 200 carrying an error object (a stream's error chunk)
    assert not judge("error", 500, None, "Internal Server Error", "", 10).ok
    v = judge("error", None, None, "", "timeout after 5s", 10)
    assert not v.ok and v.outcome == "no answer" and "timeout" in v.detail
    assert not judge("error", 400, None, "", "", 10).ok  # a refusal must say something


class _Slow(BaseHTTPRequestHandler):
    """Answers /slow after 5 s, /drop by closing the socket without a word, /json at once."""

    def log_message(self, *a: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(5)
        if self.path == "/drop":
            self.connection.close()
            return
        data = b'{"a": 1}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@pytest.fixture()
def slow_server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Slow)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_http_client_times_out_reports_drops_and_refusals(slow_server: str) -> None:
    """Real sockets: a slow answer is a timeout, a dropped connection and a closed port are errors, never raised."""
    ok = rel.http_call(slow_server, "GET", "/json", timeout=5)
    assert ok.status == 200 and ok.payload == {"a": 1}
    t0 = time.monotonic()
    slow = rel.http_call(slow_server, "GET", "/slow", timeout=0.5)
    assert slow.status is None and "timeout" in slow.error and time.monotonic() - t0 < 3
    drop = rel.http_call(slow_server, "GET", "/drop", timeout=5)
    assert drop.status is None and drop.error
    closed = rel.http_call(f"http://127.0.0.1:{rel.free_port()}", "GET", "/health", timeout=2)
    assert closed.status is None and "Refused" in closed.error
    assert rel.kv_state(slow_server) is None  # no load endpoint: None, not an exception
    with pytest.raises(ValueError, match="loopback"):
        rel.http_call("http://10.0.0.1:80", "GET", "/", timeout=1)


def test_threads_and_idle_wait_are_bounded(slow_server: str) -> None:
    t0 = time.monotonic()
    replies = rel.in_threads([lambda: rel.http_call(slow_server, "GET", "/json", timeout=5),
                              lambda: (time.sleep(10), rel.Reply(200))[1]], timeout_s=1.0)
    assert replies[0].status == 200 and replies[1].status is None and "still waiting" in replies[1].error
    idle, detail, waited = rel.wait_idle(slow_server, {"used": 0}, timeout_s=1.0)
    assert not idle and "not idle" in detail and time.monotonic() - t0 < 6


def test_cli_parses_reliability_options() -> None:
    from sgl_qwen1m.bench.cli import reliability_options
    from sgl_qwen1m.cli import build_parser

    ns = build_parser().parse_args(["bench", "reliability", "--size", "concurrent=2", "--max-restarts", "0"])
    opts = reliability_options(ns)
    assert opts.sizes == {"concurrent": 2} and opts.max_restarts == 0
    assert opts.context_length == 245760 and opts.max_total_tokens == 204800 and opts.deadline_s == 500
    assert opts.out == "benchmarks/results/reliability-h200/reliability_h200.json"
    assert opts.backend == "qwen1m-sparse" and opts.chunked_prefill_size == 8192 and opts.max_running_requests == 4
    from sgl_qwen1m.args import CommandError

    with pytest.raises(CommandError, match="nonsense"):
        reliability_options(build_parser().parse_args(["bench", "reliability", "--size", "nonsense=3"]))


def _fake_sglang(tmp_path: Path) -> Path:
    pkg = tmp_path / "sglang"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    shutil.copy(ROOT / "tests" / "fake_sglang_server.py", pkg / "launch_server.py")
    return tmp_path


def test_a_server_that_never_starts_gives_rows_not_a_traceback(tmp_path: Path) -> None:
    out = tmp_path / "rel.json"
    env = {"PYTHONPATH": f"{_fake_sglang(tmp_path)}:{ROOT}", "PATH": "/usr/bin:/bin", "FAKE_EXIT_AT_START": "1"}
    proc = subprocess.run([sys.executable, "-m", "sgl_qwen1m", "bench", "reliability", "--out", str(out),
                           "--work-dir", str(tmp_path / "w"), "--start-timeout-s", "20"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert results.validate(data) == []
    rows = [r for r in data["rows"] if r["metric"] == "survived"]
    assert len(rows) >= 15 and all(r["value"] is None and "server exited" in r["error"] for r in rows)
    assert "CUDA out of memory (fake)" in data["backends"]["qwen1m-sparse"]["server_log_tail"]


_SMALL = ["--context-length", "4000", "--max-total-tokens", "3000", "--chunked-prefill-size", "256",
          "--size", "stream_drop_tokens=2500", "--size", "queued_long_tokens=700", "--size", "concurrent_tokens=1200",
          "--size", "normal_tokens=32", "--size", "sparse_threshold=600", "--size", "radix_suffix_tokens=64"]


@pytest.mark.slow
def test_suite_end_to_end_against_the_fake_server(tmp_path: Path) -> None:
    """The whole command against tests/fake_sglang_server.py (a transport double that dies on the id 2**40, as
    an unpatched SGLang does): every other case survives, the dead one scores 0, the server is restarted, rows
    validate, the table prints, the log lands beside the JSON."""
    out = tmp_path / "res" / "rel.json"
    env = {"PYTHONPATH": f"{_fake_sglang(tmp_path)}:{ROOT}", "PATH": "/usr/bin:/bin", "FAKE_DIE_ON_HUGE_ID": "1",
           "FAKE_MS_PER_TOKEN": "1.5"}
    argv = [sys.executable, "-m", "sgl_qwen1m", "bench", "reliability", "--out", str(out), "--work-dir",
            str(tmp_path / "work"), "--start-timeout-s", "30", "--idle-timeout-s", "15", "--deadline-s", "400",
            *_SMALL]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log  # one case killed the (fake) server
    data = json.loads(out.read_text())
    assert results.validate(data) == [], log
    rows = {r["case"]: r for r in data["rows"] if r["metric"] == "survived"}
    assert len(rows) >= 15 and set(rows) == set(data["reliability_config"]["cases"])
    dead = rows.pop("ids_huge")
    assert dead["value"] == 0 and dead["server_alive"] is False and dead["outcome"] == "no answer"
    failed = {k: (r.get("outcome"), r.get("response"), r.get("idle_detail"))
              for k, r in rows.items() if r["value"] != 1}
    assert not failed, log
    for r in rows.values():
        assert r["next_request_ok"] is True and r["mem_back_to_idle"] is True and r["backend"].startswith("qwen1m-")
    assert rows["ids_eq_vocab"]["outcome"] == "refused (HTTP 400)" and "152064" in rows["ids_eq_vocab"]["response"]
    assert rows["ids_as_strings"]["outcome"].startswith("served")
    assert rows["malformed_json"]["outcome"] == "refused (HTTP 422)"
    assert rows["stream_drop_mid_prefill"]["dropped_in_flight"] is True
    assert rows["abort_queued"]["queued_aborted"] is True, rows["abort_queued"]
    assert rows["concurrent_over_pool"]["served"] == 4
    assert rows["radix_prefix_sparse"]["cached_output_ids"] == rows["radix_prefix_sparse"]["uncached_output_ids"]
    assert rows["radix_prefix_sparse"]["backend"] == "qwen1m-sparse"
    assert data["backends"]["qwen1m-sparse"]["server_starts"] == 2
    assert "device-side assert triggered (fake)" in (out.parent / "rel.server.log").read_text()
    assert "cases survived" in proc.stdout and "ids_huge" in proc.stdout
