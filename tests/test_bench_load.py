"""``bench load`` on CPU against an in-process stand-in server: a TEST DOUBLE FOR THE TRANSPORT ONLY (stdlib
``ThreadingHTTPServer`` streaming ``/generate`` in SGLang's SSE shape with controlled delays). It checks the client's
bookkeeping (windows, gaps, percentiles, TTFTs, rows, CLI) against injected timings; it proves nothing about SGLang."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sgl_qwen1m.bench.load import LoadOptions, StreamTrace, gap_stats, percentile, run_load
from sgl_qwen1m.bench.results import validate

MS_PER_PROMPT_TOKEN = 2.0  # prefill delay
GAP_S = 0.02  # decode gap of every chat
STALL_S = 0.25  # one injected stall of chat stream 0, 0.1 s after the long prompt arrives
LONG = 300  # tokens: 0.6 s prefill


class _State:
    long_at = None
    stalled = False


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ids, n_new = req["input_ids"], req["sampling_params"]["max_new_tokens"]
        if len(ids) >= LONG:
            _State.long_at = time.monotonic()
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(len(ids) * MS_PER_PROMPT_TOKEN / 1e3)
        try:
            for i in range(1, n_new + 1):
                chunk = {"output_ids": list(range(i)), "meta_info": {"completion_tokens": i}}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()
                if i == n_new:
                    break
                stall = (ids[0] == 0 and _State.long_at and not _State.stalled
                         and time.monotonic() > _State.long_at + 0.1)
                if stall:
                    _State.stalled = True
                time.sleep(STALL_S if stall else GAP_S)
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:
            pass  # the client closed the stream (abort)


@pytest.fixture()
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_percentiles_and_gap_stats_are_exact():
    gaps = [0.01] * 98 + [0.5, 1.0]
    s = gap_stats(gaps)
    assert s["itl_p50_ms"] == pytest.approx(10.0) and s["itl_max_ms"] == pytest.approx(1000.0)
    assert s["itl_p99_ms"] == pytest.approx(500.0 + 0.01 * 500.0)  # numpy linear: 0.5 + 0.01 * (1.0 - 0.5)
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    tr = StreamTrace("x", 0.0, [(1.0, 1), (1.5, 2), (3.0, 3), (3.1, 4)])
    assert tr.gaps() == pytest.approx([0.5, 1.5, 0.1]) and tr.gaps(1.2, 3.0) == pytest.approx([0.5, 1.5])


def test_load_run_end_to_end_against_a_stand_in_server(server, tmp_path, monkeypatch):
    import sgl_qwen1m.bench.load as load

    # first token of each chat is its seed id (make_prompt is random): give chat0 id 0 so the server stalls it once
    real = load.make_prompt
    monkeypatch.setattr(load, "make_prompt", lambda n, seed=0: ([0] if seed == 100 else [7]) + real(n, seed)[1:])
    out = tmp_path / "load.json"
    o = LoadOptions(url=server, out=str(out), long_tokens=LONG, streams=3, chat_prompt=10, chat_rate=4.0,
                    chat_new_tokens=10_000, timeout_s=30, plot=False, scenario="t", kv_dtype="fp8_e4m3")
    s = run_load(o, ["load"])
    assert s["ttft_idle_s"] == pytest.approx(LONG * MS_PER_PROMPT_TOKEN / 1e3, abs=0.15)
    assert s["ttft_ratio_vs_idle"] == pytest.approx(1.0, abs=0.3)
    assert s["itl_max_ms"] == pytest.approx(STALL_S * 1e3, abs=60)  # the injected stall
    assert s["itl_p50_ms"] == pytest.approx(GAP_S * 1e3, abs=10)
    assert s["chat_ttft_s"] == pytest.approx(10 * MS_PER_PROMPT_TOKEN / 1e3 + 0.0, abs=0.1)
    assert s["chats_started"] >= 1 and not s["errors"]
    data = json.loads(out.read_text())
    assert validate(data) == []
    metrics = {r["metric"] for r in data["rows"]}
    assert {"itl_p50_ms", "itl_p99_ms", "itl_max_ms", "chat_ttft_s", "ttft_ratio_vs_idle", "ttft_s"} <= metrics
    assert all(r["scenario"] == "t" and r["prompt_tokens"] == LONG and r["kv_dtype"] == "fp8_e4m3"
               for r in data["rows"])
    # the timeline beside the JSON: every stream, arrivals back to the same ms, the stall visible, plottable anywhere
    tl = json.loads((tmp_path / "load.t.timeline.json").read_text())
    assert s["timeline"] == str(tmp_path / "load.t.timeline.json")
    assert tl["prefill_ms"][1] - tl["prefill_ms"][0] == pytest.approx(s["ttft_s"] * 1e3, abs=2)  # ms rounding
    assert {x["name"] for x in tl["streams"]} >= {"chat0", "chat1", "chat2", "new0"}
    chat0 = next(x for x in tl["streams"] if x["name"] == "chat0")
    ts, ns = load._events(chat0)
    assert ns == list(range(1, len(ts) + 1)) and ts == sorted(ts)
    assert max(b - a for a, b in zip(ts, ts[1:])) == pytest.approx(STALL_S, abs=0.06)
    pytest.importorskip("matplotlib")
    from sgl_qwen1m.cli import main

    assert main(["bench", "plot", "--kind", "timeline", str(tmp_path / "load.t.timeline.json")]) == 0
    assert (tmp_path / "load.t.timeline.png").stat().st_size > 5000
    import gzip  # committed timelines are gzipped: the same plot from the .gz, PNG named without .gz

    gz = tmp_path / "gz" / "load.t.timeline.json.gz"
    gz.parent.mkdir()
    gz.write_bytes(gzip.compress((tmp_path / "load.t.timeline.json").read_bytes()))
    assert main(["bench", "plot", "--kind", "timeline", str(gz)]) == 0
    assert (gz.parent / "load.t.timeline.png").stat().st_size > 5000
    two = tmp_path / "two.png"  # scenarios side by side: one panel each
    assert main(["bench", "plot", "--kind", "timeline", str(gz), str(tmp_path / "load.t.timeline.json"),
                 "--out", str(two)]) == 0
    assert two.stat().st_size > 5000


def test_cli_parses_load_and_derives_the_committed_profile(tmp_path, capsys):
    from sgl_qwen1m.cli import main

    out = tmp_path / "h100.json"
    assert main(["bench", "profile", "--from-committed", "benchmarks/results", "--out", str(out)]) == 0
    from sgl_qwen1m.scheduler.profile import PROFILE_DIR, Profile

    assert Profile.load(out) == Profile.load(PROFILE_DIR / "h100.json")
    with pytest.raises(SystemExit):
        main(["bench", "load", "--long-tokens", "1M"])  # --url is required
    with pytest.raises(SystemExit):
        main(["bench", "profile", "--out", str(out)])  # --url or --from-committed


def test_local_weights_verb_parses():
    from sgl_qwen1m import cli

    ns = cli.build_parser().parse_args(["bench", "local-weights", "--url", "http://127.0.0.1:30000",
                                        "--model-dir", "benchmarks/models/qwen2.5-7b-1m-shape", "--tp-size", "2"])
    assert ns.tp_size == 2 and ns.handler.__name__ == "_run_local_weights"


def test_profile_probe_ladder_against_a_stand_in_server(server, tmp_path):
    """`bench profile --url`'s bookkeeping (never run on a GPU yet): every probe of the plan is sent and timed, a
    prefill probe's time is its TTFT (the stand-in: 2 ms per prompt token), a decode probe's is the median gap of
    its batch (the stand-in's 20 ms), and the fitted profile is written with the GPU name and its provenance."""
    from sgl_qwen1m.bench.load_cli import run_profile
    from sgl_qwen1m.scheduler.profile import Profile, measurement_plan

    chunks = [16, 32]
    prof, samples = run_profile(server, "benchmarks/models/qwen2.5-7b-1m-shape", 128, chunks, 30.0, "stand-in")
    plan = measurement_plan(128, chunks)
    assert len(samples) == len(plan) and any(p.kind == "decode" for p in plan)
    for p, s in zip(plan, samples):
        if p.kind == "prefill":
            assert s.source == f"prefill prefix={p.prefix} extend={p.extend}"
            assert s.seconds == pytest.approx((p.prefix + p.extend) * MS_PER_PROMPT_TOKEN / 1e3, abs=0.1)
        else:
            assert s.source == f"decode kv={p.prefix} batch={p.batch}"
            assert s.seconds == pytest.approx(GAP_S, abs=0.015)
    out = tmp_path / "stand-in.json"
    prof.save(out)
    back = Profile.load(out)
    assert back.gpu == "stand-in" and back.provenance["max_tokens"] == 128 and back.provenance["chunks"] == chunks
