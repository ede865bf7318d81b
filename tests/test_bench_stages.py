"""``bench stages``: kernel names to stages, sums and GPU-busy time of a chrome trace, the results rows and plot,
and the whole ``--url`` path against a stand-in HTTP server that writes a torch-profiler-style trace on
``/stop_profile`` (SGLang's server cannot run on a CPU host; the GPU run uses the real one)."""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sgl_qwen1m.bench.results import validate
from sgl_qwen1m.bench.stages import STAGES, busy_seconds, kernel_events, stage_of, stage_summary, top_other

NAMES = {
    "_est_lse_kernel": "estimation", "_est_scores_kernel": "estimation",
    "_hist_kernel": "selection", "_count_kernel": "selection", "_write_kernel": "selection",
    "_pattern_kernel": "selection", "_vs_attn_kernel": "sparse_attention",
    "void flashinfer::BatchPrefillWithPagedKVCacheKernel<...>": "dense_attention",
    "void flashinfer::BatchDecodeWithPagedKVCacheKernel<...>": "dense_attention",
    "void flashinfer::MergeStatesKernel<...>": "merge", "_dca_rope_kernel": "rope",
    "nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN": "linear", "sm90_xmma_gemm_bf16bf16_bf16f32": "linear",
    "fused_moe_kernel": "linear", "moe_align_block_size_kernel": "moe_routing",
    "void flashinfer::norm::FusedAddRMSNormKernel<...>": "norm_activation", "act_and_mul_kernel": "norm_activation",
    "void at::native::vectorized_elementwise_kernel<4, ...>": "other",
}


@pytest.mark.parametrize("name", sorted(NAMES))
def test_kernel_names_map_to_their_stage(name):
    assert stage_of(name) == NAMES[name]


def _trace(kernels, path=None):
    """A torch-profiler-style chrome trace: kernels as (name, ts_us, dur_us), plus CPU ops that must be ignored."""
    ev = [{"ph": "X", "cat": "kernel", "name": n, "ts": ts, "dur": d, "pid": 0, "tid": 7} for n, ts, d in kernels]
    ev += [{"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 10**6},
           {"ph": "i", "cat": "kernel", "name": "marker", "ts": 5}]
    doc = {"traceEvents": ev, "displayTimeUnit": "ms"}
    if path is not None:
        with gzip.open(path, "wt") as f:
            json.dump(doc, f)
    return doc


def test_sums_shares_and_busy_time_are_exact(tmp_path):
    kernels = [("_est_lse_kernel", 0, 300), ("_est_scores_kernel", 300, 500), ("_vs_attn_kernel", 1000, 2000),
               ("nvjet_x", 2500, 1000),  # overlaps the attention by 500 us (another stream)
               ("copy_kernel", 5000, 100)]
    ev = kernel_events(_trace(kernels, tmp_path / "t.trace.json.gz"))
    assert ev == kernel_events(tmp_path / "t.trace.json.gz") and len(ev) == 5
    s = stage_summary(ev)
    assert list(s) == [n for n, _ in STAGES] + ["other"]
    assert s["estimation"]["ms"] == pytest.approx(0.8) and s["estimation"]["kernels"] == 2
    assert s["sparse_attention"]["ms"] == pytest.approx(2.0) and s["linear"]["ms"] == pytest.approx(1.0)
    assert s["other"]["ms"] == pytest.approx(0.1) and s["selection"]["kernels"] == 0
    assert sum(x["share"] for x in s.values()) == pytest.approx(1.0)
    assert s["sparse_attention"]["share"] == pytest.approx(2.0 / 3.9)
    assert busy_seconds(ev) == pytest.approx((800 + 2500 + 100) / 1e6)  # union: 0-800, 1000-3500, 5000-5100
    assert top_other(ev) == [("copy_kernel", pytest.approx(0.1))]


class _Srv(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    out_dir = None

    def log_message(self, *a):
        pass

    def _reply(self, body=b"ok", ctype="text/plain"):
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/start_profile":
            assert req["activities"] == ["GPU"]
            type(self).out_dir = req["output_dir"]
            return self._reply()
        if self.path == "/stop_profile":
            _trace([("_est_lse_kernel", 0, 1000), ("_vs_attn_kernel", 1000, 3000)],
                   Path(type(self).out_dir) / "stages-400-TP-0.trace.json.gz")
            return self._reply()
        assert self.path == "/generate" and len(req["input_ids"]) == 400
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        chunk = {"output_ids": [1], "meta_info": {"completion_tokens": 1}}
        self.wfile.write(f"data: {json.dumps(chunk)}\n\ndata: [DONE]\n\n".encode())


def test_url_path_writes_rows_and_the_stacked_plot(tmp_path, capsys):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Srv)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        from sgl_qwen1m.cli import main

        out = tmp_path / "stages.json"
        url = f"http://127.0.0.1:{srv.server_address[1]}"
        assert main(["bench", "stages", "--url", url, "--long-tokens", "400", "--trace-dir", str(tmp_path / "tr"),
                     "--variant", "before", "--out", str(out)]) == 0
    finally:
        srv.shutdown()
    data = json.loads(out.read_text())
    assert validate(data) == []
    rows = {r.get("stage", r["metric"]): r for r in data["rows"]}
    assert rows["estimation"]["value"] == pytest.approx(1.0) and rows["sparse_attention"]["value"] == pytest.approx(3.0)
    assert rows["gpu_busy_s"]["value"] == pytest.approx(0.004) and rows["ttft_s"]["value"] > 0
    assert all(r["variant"] == "before" and r["prompt_tokens"] == 400 for r in data["rows"])
    # the same trace summarised offline gives the same stage rows
    trace = next((tmp_path / "tr").glob("*.trace.json.gz"))
    assert main(["bench", "stages", "--trace", str(trace), "--long-tokens", "400", "--variant", "again",
                 "--out", str(tmp_path / "again.json")]) == 0
    again = {r.get("stage"): r["value"] for r in json.loads((tmp_path / "again.json").read_text())["rows"]}
    assert again["estimation"] == rows["estimation"]["value"]
    pytest.importorskip("matplotlib")
    png = tmp_path / "stages.png"
    assert main(["bench", "plot", "--kind", "stages", str(out), str(tmp_path / "again.json"), "--out", str(png)]) == 0
    assert png.stat().st_size > 3000


@pytest.mark.parametrize("args,message", [
    (["--trace", "{tmp}/missing.trace.json.gz"], "No such file"),
    (["--trace", "{tmp}/not-json.json"], "Expecting value"),
    (["--trace", "{tmp}/no-kernels.json"], "no GPU kernel events"),
    (["--url", "http://10.0.0.1:30000"], "loopback"),
])
def test_bad_inputs_are_clear_errors(tmp_path, capsys, args, message):
    from sgl_qwen1m.cli import main

    (tmp_path / "not-json.json").write_text("not json")
    (tmp_path / "no-kernels.json").write_text(json.dumps({"traceEvents": [{"ph": "X", "cat": "cpu_op"}]}))
    argv = [a.format(tmp=tmp_path) for a in args]
    assert main(["bench", "stages", *argv, "--out", str(tmp_path / "s.json")]) == 1
    assert message in capsys.readouterr().err and not (tmp_path / "s.json").exists()
