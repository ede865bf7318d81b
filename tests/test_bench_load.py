"""``bench load`` on CPU against an in-process stand-in server: a TEST DOUBLE FOR THE TRANSPORT ONLY (stdlib
``ThreadingHTTPServer`` streaming ``/generate`` in SGLang's SSE shape with controlled delays). It checks the client's
bookkeeping (windows, gaps, percentiles, TTFTs, rows, CLI) against injected timings; it proves nothing about SGLang."""

from __future__ import annotations

import itertools
import json
import threading
import time
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sgl_qwen1m.bench.load import (LoadOptions, StreamTrace, chat_ttfts, gap_stats, percentile, run_load,
                                   summary_from_timeline, window_gaps)
from sgl_qwen1m.bench.results import validate

MS_PER_PROMPT_TOKEN = 2.0  # prefill delay
GAP_S = 0.02  # decode gap of every chat
STALL_S = 0.25  # one injected stall of chat stream 0, 0.1 s after the long prompt arrives
LONG = 300  # tokens: 0.6 s prefill


class _State:
    """Per-test knobs of the stand-in (reset by the ``server`` fixture)."""

    long_at = None
    stalled = False
    stall_s = STALL_S  # how long chat stream 0 (first id 0) stalls, once
    silent_s = None  # a request whose first id is 5 waits this long, then ends with no token (None: served as usual)
    longs = 0  # long prompts seen
    fail_long_from = None  # the long prompts from this one on get HTTP 500 (None: never)

    @classmethod
    def reset(cls):
        cls.long_at, cls.stalled, cls.stall_s, cls.silent_s = None, False, STALL_S, None
        cls.longs, cls.fail_long_from = 0, None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):  # quiet
        pass

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        ids, n_new = req["input_ids"], req["sampling_params"]["max_new_tokens"]
        if len(ids) >= LONG:
            _State.long_at = time.monotonic()
            _State.longs += 1
            if _State.fail_long_from is not None and _State.longs >= _State.fail_long_from:
                self.send_response(500)
                self.send_header("Content-Length", "4")
                self.end_headers()
                self.wfile.write(b"boom")
                return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        time.sleep(len(ids) * MS_PER_PROMPT_TOKEN / 1e3)
        if _State.silent_s is not None and ids[0] == 5:
            time.sleep(_State.silent_s)
            try:
                self.wfile.write(b"data: [DONE]\n\n")
            except OSError:
                pass
            return
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
                time.sleep(_State.stall_s if stall else GAP_S)
            self.wfile.write(b"data: [DONE]\n\n")
        except OSError:
            pass  # the client closed the stream (abort)


@pytest.fixture()
def server():
    _State.reset()
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


def test_window_gaps_censor_the_streams_still_open_at_the_window_end():
    """(start, end] = (10, 20]: gaps whose later event is inside, plus ``end - last event`` of each stream still
    open at ``end``; a stream that ended by itself or failed by ``end`` adds none."""
    done = StreamTrace("done", 0.0, [(11.0, 1), (12.0, 2)], ended=12.5)  # ended before end: no open gap
    failed = StreamTrace("failed", 0.0, [(11.0, 1), (11.5, 2)], error="boom", error_at=13.0)
    failed_untimed = StreamTrace("failed2", 0.0, [(11.0, 1)], error="boom")  # error time unknown: as before end
    open_ = StreamTrace("open", 0.0, [(11.0, 1), (14.0, 2), (25.0, 3)])  # its next token after end: censored at 20
    stalled = StreamTrace("stalled", 0.0, [(5.0, 1), (6.0, 2), (30.0, 3)])  # last event before start: counted whole
    late_end = StreamTrace("late", 0.0, [(19.0, 1)], ended=21.0, error="x", error_at=22.0)  # both after end: open
    no_token = StreamTrace("none", 15.0)  # no first token: not a gap (a TTFT)
    assert done.open_gap(20.0) is None and failed.open_gap(20.0) is None and failed_untimed.open_gap(20.0) is None
    assert no_token.open_gap(20.0) is None
    assert open_.open_gap(20.0) == pytest.approx(6.0) and stalled.open_gap(20.0) == pytest.approx(14.0)
    assert late_end.open_gap(20.0) == pytest.approx(1.0)
    gaps, cut = window_gaps([done, failed, failed_untimed, open_, stalled, late_end, no_token], 10.0, 20.0)
    assert cut == 3
    assert sorted(gaps) == pytest.approx(sorted([1.0, 0.5, 3.0, 6.0, 14.0, 1.0]))
    # without censoring the stalled stream would have counted nothing
    assert stalled.gaps(10.0, 20.0) == []
    # chat TTFTs: real when a first token came (even after end), end - sent when none, left out when failed by end
    ttfts, cut = chat_ttfts([StreamTrace("a", 12.0, [(13.0, 1)]), StreamTrace("b", 14.0, [(26.0, 1)]),
                             StreamTrace("c", 16.0), StreamTrace("d", 17.0, error="x", error_at=18.0),
                             StreamTrace("e", 18.0, error="x", error_at=21.0)], 20.0)
    assert ttfts == pytest.approx([1.0, 12.0, 4.0, 2.0]) and cut == 2


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
    from sgl_qwen1m.scheduler.profile import Profile

    # the profile derived from committed rows (stored before the 2026-12-08 refit; kept beside the refit's inputs)
    kept = Path("benchmarks/results/scheduler-h100/profiles/h100_from_committed_rows.json")
    assert Profile.load(out) == Profile.load(kept)
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


def test_a_stall_across_the_long_prompts_first_token_is_counted(server, tmp_path, monkeypatch):
    """Chat 0 stalls 1.5 s from 0.1 s after the long prompt arrives (its prefill: 0.6 s), so its next token comes
    after the long prompt's first token, when the chats are closed: the stall still shows in ``itl_max_ms`` as a
    censored gap (t_end - its last token, about 0.5 s), not as the 20 ms decode gap. The chats arriving during the
    prefill get no token before t_end: their TTFT is t_end - sent, censored."""
    from sgl_qwen1m.bench import load

    _State.stall_s, _State.silent_s = 1.5, 1.0
    real = load.make_prompt

    def prompt(n, seed=0):  # chat0 (seed 100) stalls, the arrivals (seeds from 1000) stay silent
        return ([0] if seed == 100 else [5] if seed >= 1000 else [7]) + real(n, seed)[1:]

    monkeypatch.setattr(load, "make_prompt", prompt)
    out = tmp_path / "load.json"
    o = LoadOptions(url=server, out=str(out), long_tokens=LONG, streams=3, chat_prompt=10, chat_rate=4.0,
                    chat_new_tokens=10_000, timeout_s=30, plot=False, scenario="s", skip_idle=True)
    s = run_load(o, ["load"])
    assert not s["errors"] and s["chats_started"] >= 1
    tl = json.loads((tmp_path / "load.s.timeline.json").read_text())
    t_end = tl["prefill_ms"][1] / 1e3
    ts, _ = load._events(next(x for x in tl["streams"] if x["name"] == "chat0"))
    censored = t_end - max(t for t in ts if t <= t_end)
    assert 0.3 < censored < 1.0 and any(t > t_end for t in ts)  # the stall ended after t_end
    assert s["itl_max_ms"] == pytest.approx(censored * 1e3, abs=3)  # ms rounding of the timeline
    assert s["gaps_censored"] == 3  # the three chats were open at t_end; the silent arrivals had no token
    # the old rule (only gaps ending inside the window) saw the 20 ms decode gaps only
    old = []
    for x in tl["streams"]:
        t = load._events(x)[0]
        old += [b - a for a, b in itertools.pairwise(t) if 0 < b <= t_end]
    assert max(old) < 0.1
    assert s["chat_ttft_censored"] == s["chats_started"]
    first_new = min(x["sent_ms"] for x in tl["streams"] if x["name"].startswith("new")) / 1e3
    assert s["chat_ttft_s"] == pytest.approx(t_end - first_new, abs=0.003)
    data = json.loads(out.read_text())
    assert validate(data) == []
    rows = {r["metric"]: r for r in data["rows"]}
    assert all(rows[m]["censored"] == 3 for m in ("itl_p50_ms", "itl_p99_ms", "itl_max_ms"))
    assert rows["chat_ttft_s"]["censored"] == s["chats_started"] and len(rows["chat_ttft_s"]["samples"]) == \
        s["chats_started"]
    silent = [x for x in tl["streams"] if x["name"].startswith("new")]
    assert all(not x["dt_ms"] and x["ended_ms"] > tl["prefill_ms"][1] for x in silent)  # ended by the server, later
    # the same summary from the saved timeline (to the ms)
    again = summary_from_timeline(tl)
    assert again["itl_max_ms"] == pytest.approx(s["itl_max_ms"], abs=3) and again["gaps_censored"] == 3
    assert again["chat_ttft_censored"] == s["chats_started"]
    assert again["chat_ttft_s"] == pytest.approx(s["chat_ttft_s"], abs=0.003)


def test_a_run_cut_short_keeps_its_idle_ttft(server, tmp_path):
    """The 2026-12-08 H100 policy run was killed by the chain's timeout during its loaded phase and left no row at
    all; the idle TTFT is now saved as soon as it is measured, and a failed loaded phase is recorded."""
    _State.fail_long_from = 2  # the idle long prompt is served, the one under load fails
    out = tmp_path / "cut.json"
    o = LoadOptions(url=server, out=str(out), long_tokens=LONG, streams=1, chat_prompt=10, chat_rate=0.0,
                    chat_new_tokens=50, timeout_s=30, plot=False, scenario="cut")
    with pytest.raises(RuntimeError, match="under load failed"):
        run_load(o, ["load"])
    data = json.loads(out.read_text())
    assert validate(data) == []
    (row,) = data["rows"]
    assert row["metric"] == "ttft_idle_s" and row["scenario"] == "cut"
    assert row["value"] == pytest.approx(LONG * MS_PER_PROMPT_TOKEN / 1e3, abs=0.15)
    assert "under load failed" in data["backends"]["qwen1m-sparse"]["error"]
