"""CPU tests of sgl_qwen1m.bench: argument parsing, results schema and merging, FLOP floor, plot, helpers.

Nothing here needs a GPU or SGLang: two slow tests run the real e2e orchestrator/worker and serve-smoke code against
a fake ``sglang.Engine`` and a fake ``sglang.launch_server`` written into a temp dir; the real ones run on the GPU host.
"""

from __future__ import annotations

import json
import shutil
import os
import math
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from sgl_qwen1m import cli, sizing
from sgl_qwen1m.bench import backends, common, e2e, results
from sgl_qwen1m.bench import cli as bench_cli
from sgl_qwen1m.bench.gpu_mem import GpuMemSampler

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "benchmarks" / "models"
DCA_DIR = MODELS / "qwen2.5-7b-1m-shape"
SHAPE_DIR = MODELS / "qwen2.5-7b-shape"


# ---------------------------------------------------------------- argument parsing


def test_e2e_defaults_and_options() -> None:
    ns = cli.build_parser().parse_args(["bench", "e2e"])
    opts = bench_cli.e2e_options(ns)
    assert opts.backends == ["flashinfer", "qwen1m-dense"]
    assert opts.lengths == [131072, 262144] and opts.decode_at == [262144] and opts.decode_tokens == 32
    assert opts.chunked_prefill_size == 8192 and opts.mem_fraction_static == 0.80
    assert Path(opts.model_shape) == SHAPE_DIR and Path(opts.model_dca) == DCA_DIR
    assert opts.out.startswith("benchmarks/results/") and opts.out.endswith(".json")


def test_e2e_brief_command_line() -> None:
    argv = [
        "e2e",
        "--backends",
        "flashinfer,qwen1m-dense",
        "--lengths",
        "131072,262144",
        "--decode-at",
        "262144",
        "--out",
        "benchmarks/results/x.json",
        "--engine-arg",
        "disable_overlap_schedule=true",
        "--engine-arg",
        "attention-backend-extra=abc",
        "--deadline-s",
        "500",
    ]
    opts = bench_cli.e2e_options(cli.build_parser().parse_args(["bench", *argv]))
    assert opts.engine_args == {"disable_overlap_schedule": True, "attention_backend_extra": "abc"}
    assert opts.deadline_s == 500 and opts.out == "benchmarks/results/x.json"
    back = e2e.E2EOptions.from_json(opts.to_json())
    assert back == opts


def test_unknown_backend_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.build_parser().parse_args(["bench", "e2e", "--backends", "flashinfer,fa3"])
    assert exc.value.code == 2
    assert "unknown backend 'fa3'" in capsys.readouterr().err


def test_help_hides_worker(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["bench", "--help"])
    text = capsys.readouterr().out
    assert "e2e" in text and "serve-smoke" in text and "_worker" not in text


def test_serve_smoke_options_and_command() -> None:
    from sgl_qwen1m.bench.serve import server_command

    ns = cli.build_parser().parse_args(
        ["bench", "serve-smoke", "--prompt-tokens", "600000", "--new-tokens", "32", "--server-arg=--enable-metrics"]
    )
    opts = bench_cli.serve_options(ns)
    assert opts.prompt_tokens == 600_000 and opts.new_tokens == 32 and opts.backend == "qwen1m-sparse"
    cmd = server_command(opts, DCA_DIR, 602112, 31000)
    joined = " ".join(cmd)
    assert cmd[1:3] == ["-m", "sglang.launch_server"]
    for flag in (
        "--load-format dummy",
        "--skip-tokenizer-init",
        "--attention-backend qwen1m",
        "--context-length 602112",
        "--max-total-tokens 602112",
        "--port 31000",
        "--cuda-graph-backend-decode disabled",
        "--mem-fraction-static 0.7",
    ):
        assert flag in joined, flag
    assert cmd[-1] == "--enable-metrics"


def test_context_length_auto() -> None:
    opts = e2e.E2EOptions(backends=["flashinfer"], lengths=[131072, 262144], out="x.json", decode_at=[262144])
    assert e2e.context_length_for(opts) == 266240  # 262144 + 33 + 1024 -> next multiple of 4096
    opts.context_length = 300000
    assert e2e.context_length_for(opts) == 300000


def test_engine_kwargs() -> None:
    from sgl_qwen1m.bench.engine_worker import engine_kwargs

    opts = e2e.E2EOptions(backends=["qwen1m-dense"], lengths=[131072], out="x.json", engine_args={"foo": 1})
    kw = engine_kwargs(opts, backends.SPECS["qwen1m-dense"], DCA_DIR)
    assert kw["attention_backend"] == "qwen1m" and kw["load_format"] == "dummy" and kw["skip_tokenizer_init"]
    assert kw["disable_radix_cache"] is False and kw["cuda_graph_backend_decode"] == "disabled"
    assert kw["max_total_tokens"] == kw["context_length"] and kw["foo"] == 1
    opts.max_total_tokens, opts.cuda_graph = 0, True
    kw = engine_kwargs(opts, backends.SPECS["flashinfer"], SHAPE_DIR)
    assert "max_total_tokens" not in kw and "cuda_graph_backend_decode" not in kw


# ---------------------------------------------------------------- results file


def test_results_schema_upsert_and_merge(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    r = results.Results.open(path, "python -m sgl_qwen1m.bench e2e", "H100", {"sglang": "0.5.17"})
    r.upsert("ttft_s", "flashinfer", 131072, 8.3, samples=[8.3])
    r.upsert("ttft_s", "flashinfer", 131072, 8.1)  # same key: replaced
    r.upsert("ttft_s", "qwen1m-dense", 262144, None, error="OOM")
    r.backend_info("qwen1m-dense", checked=False, error="OOM")
    data = json.loads(path.read_text())
    assert results.validate(data) == []
    assert [row["value"] for row in data["rows"]] == [8.1, None]
    assert set(data) >= {"command", "gpu", "versions", "date", "rows"}

    r2 = results.Results.open(path, "second command", "H100", {})  # a second invocation merges
    r2.upsert("decode_step_ms", "flashinfer", 262144, 12.5)
    data = json.loads(path.read_text())
    assert len(data["rows"]) == 3 and len(data["runs"]) == 2 and data["command"] == "second command"
    assert data["backends"]["qwen1m-dense"]["error"] == "OOM"
    assert not list(tmp_path.glob("*.tmp*"))


def test_results_null_value_needs_error(tmp_path: Path) -> None:
    r = results.Results.open(tmp_path / "r.json", "cmd", "gpu", {})
    with pytest.raises(ValueError):
        r.upsert("ttft_s", "flashinfer", 1, None)


def test_validate_reports_problems() -> None:
    assert results.validate([]) != []
    bad = {
        "command": "c",
        "gpu": "g",
        "versions": {},
        "date": "d",
        "rows": [
            {"metric": "ttft_s", "backend": "b", "prompt_tokens": 1, "value": "fast"},
            {"metric": "ttft_s", "backend": "b", "prompt_tokens": 1, "value": None},
        ],
    }
    errs = results.validate(bad)
    assert any("number or null" in e for e in errs) and any("duplicates" in e for e in errs)
    assert any("no 'error'" in e for e in errs)


def test_command_line_and_versions() -> None:
    assert results.command_line(["e2e", "--lengths", "1,2"]).endswith(" -m sgl_qwen1m.bench e2e --lengths 1,2")
    v = results.collect_versions(with_torch_cuda=False)
    assert v["sgl_qwen1m"] and v["python"]


# ---------------------------------------------------------------- FLOP floor and memory arithmetic


def test_shape_from_config_matches_constant() -> None:
    shape = sizing.ModelShape.from_dir(SHAPE_DIR)
    assert shape == sizing.QWEN25_7B == sizing.ModelShape.from_dir(DCA_DIR)
    assert shape.linear_flops_per_token == pytest.approx(13.05e9, rel=1e-3)
    assert shape.weight_bytes() == pytest.approx(15.2e9, rel=0.01)
    assert shape.kv_bytes_per_token() == 57_344


@pytest.mark.parametrize(
    "tokens,dense_s,sparse_s", [(131072, 6.4, 2.9), (262144, 21.5, 5.8), (524288, 77.5, 11.6), (1048576, 293.0, 23.2)]
)
def test_floor_matches_gpu_readme(tokens: int, dense_s: float, sparse_s: float) -> None:
    shape = sizing.QWEN25_7B
    assert sizing.prefill_floor_s(shape, tokens, 800.0) == pytest.approx(dense_s, rel=0.02)
    keys = sizing.mean_keys_per_query(json.loads((DCA_DIR / "sparse_attention_config.json").read_text()))
    assert keys == pytest.approx(11_600, rel=0.01)
    assert sizing.prefill_floor_s(shape, tokens, 800.0, keys) == pytest.approx(sparse_s, rel=0.02)


def test_floor_scales_with_peak() -> None:
    a = sizing.prefill_floor_s(sizing.QWEN25_7B, 65536, 400.0)
    assert a == pytest.approx(2 * sizing.prefill_floor_s(sizing.QWEN25_7B, 65536, 800.0))
    with pytest.raises(ValueError):
        sizing.prefill_floor_s(sizing.QWEN25_7B, 1, 0.0)


def test_memory_plan_600k_fits_h100() -> None:
    plan = sizing.plan_memory(sizing.QWEN25_7B, 79.1, 0.70, sizing.auto_context_length(600_000, 32), 4)
    assert plan.fits and plan.headroom_gib > 20 and plan.req_to_token_gib < 0.1
    default_rows = sizing.plan_memory(sizing.QWEN25_7B, 79.1, 0.70, 602112, 2048)
    assert default_rows.req_to_token_gib == pytest.approx(4.6, rel=0.05)  # SGLang's 2048-row floor
    assert not sizing.plan_memory(sizing.QWEN25_7B, 79.1, 0.80, 1_052_672, 4).fits


# ---------------------------------------------------------------- plot


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_plot_small_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from sgl_qwen1m.bench.plot import plot_ttft

    r = results.Results.open(tmp_path / "r.json", "cmd", "NVIDIA H100 80GB HBM3, 81559 MiB", {})
    for backend, ts in (("flashinfer", (2.61, 8.32, 30.74)), ("qwen1m-sparse", (1.5, 3.0, 7.0))):
        for n, t in zip((65536, 131072, 262144), ts):
            r.upsert("ttft_s", backend, n, t)
    r.upsert("ttft_s", "qwen1m-dense", 262144, None, error="OOM")
    r.data["config"] = {"keys_per_query": 11570.0}
    png = plot_ttft(r.data, tmp_path / "r.png")
    w, h = _png_size(png)
    assert (w, h) == (600, 400)
    assert 0 < png.stat().st_size < 100 * 1024


# ---------------------------------------------------------------- helpers


def test_make_prompt_deterministic_and_valid() -> None:
    a = common.make_prompt(5000, seed=1)
    assert a == common.make_prompt(5000, seed=1) and a != common.make_prompt(5000, seed=2)
    assert len(a) == 5000 and 0 <= min(a) and max(a) < common.REGULAR_VOCAB
    assert max(common.make_prompt(2000, vocab_size=100)) < 100


def test_check_output() -> None:
    good = {
        "output_ids": [1, 2, 3],
        "meta_info": {"finish_reason": {"type": "length"}, "output_token_logprobs": [[-1.0, 1, None]] * 3},
    }
    assert common.check_output(good, 3, 152064).ok
    assert not common.check_output(good, 4, 152064).ok
    assert not common.check_output({"output_ids": [1, 999999]}, 2, 152064).ok
    nan = {"output_ids": [1], "meta_info": {"output_token_logprobs": [[math.nan, 1, None]]}}
    assert "non-finite" in common.check_output(nan, 1, 152064).detail
    abort = {"output_ids": [], "meta_info": {"finish_reason": {"type": "abort", "message": "too long"}}}
    assert "aborted" in common.check_output(abort, 1, 152064).detail
    assert not common.check_output({"text": "x"}, 1, 152064).ok


def test_prepare_model_dir(tmp_path: Path) -> None:
    specs = backends.SPECS
    assert backends.prepare_model_dir(specs["flashinfer"], SHAPE_DIR, DCA_DIR, tmp_path) == SHAPE_DIR
    assert backends.prepare_model_dir(specs["qwen1m-sparse"], SHAPE_DIR, DCA_DIR, tmp_path) == DCA_DIR
    dense = backends.prepare_model_dir(specs["qwen1m-dense"], SHAPE_DIR, DCA_DIR, tmp_path)
    cfg = json.loads((dense / "config.json").read_text())
    assert cfg["dual_chunk_attention_config"]["sparse_attention_enabled"] is False
    assert not (dense / "sparse_attention_config.json").exists()
    from sgl_qwen1m.config import DCAConfig

    assert DCAConfig.from_hf_config(cfg).sparse_attention_enabled is False
    intree = backends.prepare_model_dir(specs["dual_chunk_flash_attn"], SHAPE_DIR, DCA_DIR, tmp_path)
    cfg = json.loads((intree / "config.json").read_text())["dual_chunk_attention_config"]
    assert cfg["sparse_attention_threshold"] == 0  # every chunk sparse: the in-tree dense path needs FA3
    assert (intree / "sparse_attention_config.json").read_text() == (DCA_DIR / "sparse_attention_config.json").read_text()
    local = backends.prepare_model_dir(specs["qwen1m-sparse-local"], SHAPE_DIR, DCA_DIR, tmp_path)
    assert local == DCA_DIR and specs["qwen1m-sparse-local"].weights == "local"
    with pytest.raises(ValueError):
        backends.prepare_model_dir(specs["flashinfer"], DCA_DIR, DCA_DIR, tmp_path)
    no_budgets = tmp_path / "dca-without-budgets"
    no_budgets.mkdir()
    shutil.copy(MODELS / "qwen2.5-14b-1m-shape" / "config.json", no_budgets / "config.json")
    with pytest.raises(ValueError, match="needs the sparse budgets"):
        backends.prepare_model_dir(specs["qwen1m-sparse"], SHAPE_DIR, no_budgets, tmp_path)


def test_gpu_mem_sampler_windows() -> None:
    values = iter([100.0, 300.0, 200.0, 150.0, 120.0, 110.0])
    s = GpuMemSampler(query=lambda: next(values, None))
    s.reset()  # 100
    s.sample()  # 300
    assert s.window() == 300.0  # + 200
    s.reset()  # 150
    assert s.window() == 150.0 and s.peak_mib == 300.0  # + 120
    assert GpuMemSampler(query=lambda: None).window() is None


def test_orchestrator_records_failure_and_continues(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "e2e.json"
    calls: list[str] = []

    def fake_worker(opts: e2e.E2EOptions, name: str, opts_path: Path, log: object) -> object:
        calls.append(name)
        r = results.Results.open(opts.out)
        if name == "flashinfer":
            r.backend_info(name, checked=True, error=None)
            r.upsert("ttft_s", name, 131072, 8.3)
            return None
        return "worker exited with code -9"  # crashed before writing anything

    monkeypatch.setattr(e2e, "_run_worker", fake_worker)
    monkeypatch.setattr(e2e, "gpu_name", lambda: "fake GPU")
    monkeypatch.setattr(e2e, "collect_versions", lambda: {"sglang": "0.5.17"})
    opts = e2e.E2EOptions(
        backends=["qwen1m-dense", "flashinfer"],
        lengths=[131072],
        out=str(out),
        model_shape=str(SHAPE_DIR),
        model_dca=str(DCA_DIR),
        plot=False,
        work_dir=str(tmp_path),
    )
    assert e2e.run_e2e(opts, ["e2e"]) == 1
    data = json.loads(out.read_text())
    assert calls == ["qwen1m-dense", "flashinfer"]
    assert data["backends"]["qwen1m-dense"]["error"] == "worker exited with code -9"
    assert data["backends"]["flashinfer"]["checked"] is True
    assert data["config"]["context_length"] == sizing.auto_context_length(131072, 33)
    assert results.validate(data) == []
    assert any("flashinfer" in line and "8.30" in line for line in e2e.summary_lines(data))


def test_import_is_cheap() -> None:
    code = (
        "import sys, sgl_qwen1m.cli, sgl_qwen1m.bench, sgl_qwen1m.bench.cli, sgl_qwen1m.bench.e2e, sgl_qwen1m.bench.serve, "
        "sgl_qwen1m.bench.engine_worker, sgl_qwen1m.bench.plot; "
        "print(sorted(m for m in ('sglang', 'torch', 'matplotlib', 'flashinfer') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "[]"


def test_plan_command_runs(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bench", "plan", "--lengths", "128K,256K"]) == 0
    text = capsys.readouterr().out
    assert "6.45" in text and "21.52" in text and "57344 B/token" in text


_FAKE_SGLANG = '''
"""A stand-in for sglang.Engine: the shapes of its results, no GPU."""
import math, time

class _Flush:
    success = True

class Engine:
    def __init__(self, **kw):
        self.kw = kw
        assert kw["load_format"] == "dummy" and kw["skip_tokenizer_init"]
    def _out(self, n, p, logprob):
        meta = {"finish_reason": {"type": "length", "length": n}, "prompt_tokens": p, "cached_tokens": 0}
        if logprob:
            meta["output_token_logprobs"] = [[-1.5, 7, None]] * n
        return {"output_ids": [7] * n, "meta_info": meta}
    def generate(self, input_ids=None, sampling_params=None, return_logprob=False, stream=False):
        n, p = sampling_params["max_new_tokens"], len(input_ids)
        if self.kw["attention_backend"] == "qwen1m" and p > 6000:
            raise RuntimeError("CUDA out of memory (fake)")
        time.sleep(p * 1e-7)
        if not stream:
            return self._out(n, p, return_logprob)
        def chunks():
            for i in range(1, n + 1):
                time.sleep(0.001)
                yield self._out(i, p, False)
        return chunks()
    def flush_cache(self):
        return _Flush()
    def update_weights_from_tensor(self, named_tensors, load_format=None, flush_cache=True):
        names = [n for n, _ in named_tensors]
        assert all(n.endswith(("q_proj.bias", "k_proj.bias")) for n in names), names
        return True, f"{len(names)} tensors"
    def get_server_info(self):
        return {"max_total_num_tokens": 12345, "internal_states": [{"memory_usage": {"weight": 14.2}}]}
    def shutdown(self):
        pass
'''


@pytest.mark.slow
def test_e2e_with_fake_engine(tmp_path: Path) -> None:
    """The whole e2e path (orchestrator, one worker process per backend) against a fake sglang.Engine."""
    (tmp_path / "sglang").mkdir()
    (tmp_path / "sglang" / "__init__.py").write_text(_FAKE_SGLANG)
    out = tmp_path / "e2e.json"
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""}
    argv = [
        sys.executable,
        "-m",
        "sgl_qwen1m.bench",
        "e2e",
        "--backends",
        "flashinfer,qwen1m-dense,dual_chunk_flash_attn,qwen1m-sparse-local",
        "--lengths",
        "4K,8K",
        "--decode-at",
        "4K",
        "--decode-tokens",
        "4",
        "--check-tokens",
        "512",
        "--warmup-tokens",
        "2048",
        "--no-plot",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # qwen1m-dense fails its 8K prefill
    data = json.loads(out.read_text())
    assert results.validate(data) == [], data
    rows = {(r["metric"], r["backend"], r["prompt_tokens"]): r for r in data["rows"]}
    assert rows[("ttft_s", "flashinfer", 8192)]["value"] > 0
    assert rows[("decode_step_ms", "flashinfer", 4096)]["value"] > 0
    assert rows[("decode_step_ms", "flashinfer", 4096)]["steps"] == 4
    assert rows[("tflops", "flashinfer", 4096)]["value"] > 0
    assert "out of memory" in rows[("ttft_s", "qwen1m-dense", 8192)]["error"]
    assert rows[("ttft_s", "qwen1m-dense", 4096)]["value"] > 0
    assert rows[("ttft_s", "dual_chunk_flash_attn", 4096)]["value"] > 0  # threshold 0: every chunk sparse
    assert rows[("decode_step_ms", "dual_chunk_flash_attn", 4096)]["error"].startswith("skipped")
    be = data["backends"]
    assert be["flashinfer"]["checked"] is True and be["flashinfer"]["error"] is None
    assert be["flashinfer"]["max_total_num_tokens"] == 12345
    assert be["dual_chunk_flash_attn"]["check"]["prompt_tokens"] == 512
    assert be["dual_chunk_flash_attn"]["fa3_import_stub"] is True
    assert be["dual_chunk_flash_attn"]["engine_args"]["disable_overlap_schedule"] is True
    assert "disable_overlap_schedule" not in be["flashinfer"]["engine_args"]
    assert be["qwen1m-sparse-local"]["weights"] == {
        "kind": "local", "recipe": "qwen2-bias", "amplitude": 1.5, "zeroed_high_frequency_pairs": 16,
        "tensors": 56, "updates": 1,
    }
    assert rows[("ttft_s", "qwen1m-sparse-local", 4096)]["value"] > 0
    assert be["qwen1m-dense"]["engine_args"]["attention_backend"] == "qwen1m"
    assert "sparse_attention_enabled" in (Path(be["qwen1m-dense"]["model_path"]) / "config.json").read_text()
    assert "ttft 8192" in proc.stdout and "[" in proc.stdout


_FAKE_LAUNCH_SERVER = '''
"""A stand-in for `python -m sglang.launch_server`: /health after a short start, streamed /generate."""
import argparse, json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ap = argparse.ArgumentParser()
ap.add_argument("--port", type=int)
ap.add_argument("--host")
args, rest = ap.parse_known_args()
assert "--skip-tokenizer-init" in rest and "dummy" in rest, rest
print("fake server starting", rest, flush=True)
T0 = time.time()

class H(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass
    def do_GET(self):
        self.send_response(200 if time.time() - T0 > 1.0 else 503)
        self.end_headers()
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        n, p = body["sampling_params"]["max_new_tokens"], len(body["input_ids"])
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        for i in range(1, n + 1):
            meta = {"prompt_tokens": p, "completion_tokens": i, "finish_reason": None}
            self.wfile.write(b"data: " + json.dumps({"output_ids": [5] * i, "meta_info": meta}).encode() + b"\\n\\n")
            self.wfile.flush()
            time.sleep(0.002)
        self.wfile.write(b"data: [DONE]\\n\\n")
        print(f"served {p} tokens", flush=True)

ThreadingHTTPServer((args.host, args.port), H).serve_forever()
'''


@pytest.mark.slow
def test_serve_smoke_with_fake_server(tmp_path: Path) -> None:
    """serve-smoke end to end against a fake launch_server (health wait, streamed request, kill, log tail)."""
    (tmp_path / "sglang").mkdir()
    (tmp_path / "sglang" / "__init__.py").write_text("")
    (tmp_path / "sglang" / "launch_server.py").write_text(_FAKE_LAUNCH_SERVER)
    out = tmp_path / "serve.json"
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "PATH": "/usr/bin:/bin"}
    argv = [
        sys.executable,
        "-m",
        "sgl_qwen1m.bench",
        "serve-smoke",
        "--prompt-tokens",
        "20000",
        "--new-tokens",
        "8",
        "--out",
        str(out),
        "--work-dir",
        str(tmp_path / "work"),
        "--start-timeout-s",
        "60",
    ]
    proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads(out.read_text())
    assert results.validate(data) == []
    rows = {(r["metric"], r["prompt_tokens"]): r for r in data["rows"]}
    assert rows[("output_tokens", 20000)]["value"] == 8
    assert rows[("ttft_s", 20000)]["value"] > 0 and rows[("e2e_latency_s", 20000)]["value"] > 0
    assert rows[("decode_step_ms", 20000)]["value"] > 0
    info = data["backends"]["qwen1m-sparse"]
    assert info["checked"] is True and info["error"] is None
    assert "served 20000 tokens" in info["server_log_tail"]
    assert "--attention-backend qwen1m" in info["server_command"]


def test_fa3_stub_only_for_intree_workers_and_only_when_flash_ops_is_missing(tmp_path: Path) -> None:
    """The shim makes ``from sgl_kernel import flash_ops`` import an empty module, never shadowing a real one."""
    import subprocess
    import sys

    from sgl_qwen1m.bench.e2e import worker_env

    stub = worker_env(backends.SPECS["dual_chunk_flash_attn"])["PYTHONPATH"].split(os.pathsep)[0]
    assert stub.endswith("fa3_stub")
    assert "fa3_stub" not in worker_env(backends.SPECS["qwen1m-sparse"]).get("PYTHONPATH", "")
    pkg = tmp_path / "sgl_kernel"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    probe = "from sgl_kernel import flash_ops; print(getattr(flash_ops, 'SGL_QWEN1M_FA3_STUB', False))"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([stub, str(tmp_path)]))

    def run() -> str:
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout

    assert run().strip() == "True"
    (pkg / "flash_ops.py").write_text("")  # a real FA3 library wins
    assert run().strip() == "False"
    env["PYTHONPATH"] = str(tmp_path)
    (pkg / "flash_ops.py").unlink()
    with pytest.raises(subprocess.CalledProcessError):
        run()  # without the shim the import fails, as on the GPU bundle


def test_local_weights_make_top_diagonals_contiguous() -> None:
    """The ``-local`` biases concentrate the top diagonals into a band; dummy-scale biases (flat softmax) do not."""
    import torch

    from sgl_qwen1m.bench import local_weights as lw

    named = lw.local_attention_biases(num_layers=2, num_heads=28, num_kv_heads=4, head_dim=128)
    assert [n for n, _ in named][:2] == ["model.layers.0.self_attn.q_proj.bias", "model.layers.0.self_attn.k_proj.bias"]
    assert named[0][1].shape == (28 * 128,) and named[1][1].shape == (4 * 128,) and len(named) == 4
    v = lw.local_bias_vector(128)
    assert v[:16].abs().sum() == 0 and v[64:80].abs().sum() == 0 and float(v[16]) == lw.DEFAULT_AMPLITUDE
    touched, minimum = lw.slash_spread(v, 16384, 1000)
    assert touched <= 1.25 * minimum, (touched, minimum)
    touched, minimum = lw.slash_spread(torch.full((128,), 3e-4), 16384, 1000)  # SGLang dummy scale
    assert touched >= 3 * minimum, (touched, minimum)
    with pytest.raises(ValueError, match="skip_high_pairs"):
        lw.local_bias_vector(128, skip_high_pairs=64)
    with pytest.raises(ValueError, match="bad shape"):
        lw.local_attention_biases(2, 28, 5, 128)


def test_merge_rows_first_file_wins() -> None:
    a = {"gpu": "A", "rows": [{"metric": "ttft_s", "backend": "flashinfer", "prompt_tokens": 1, "value": 1.0}]}
    b = {
        "gpu": "B",
        "rows": [
            {"metric": "ttft_s", "backend": "flashinfer", "prompt_tokens": 1, "value": 9.0},
            {"metric": "ttft_s", "backend": "qwen1m-sparse", "prompt_tokens": 1, "value": 2.0},
        ],
    }
    merged = results.merge_rows([a, b])
    assert merged["gpu"] == "A" and [r["value"] for r in merged["rows"]] == [1.0, 2.0]
    with pytest.raises(ValueError):
        results.merge_rows([])


def test_rows_carry_the_model_label_of_their_shape_directory(tmp_path):
    from sgl_qwen1m.bench.backends import SPECS, default_model_dirs, model_label, source_dir

    dirs = default_model_dirs()
    assert model_label(source_dir(SPECS["qwen1m-sparse"], dirs["shape"], dirs["dca"])) == "qwen2.5-7b-1m"
    assert model_label(source_dir(SPECS["flashinfer"], dirs["shape"], dirs["dca"])) == "qwen2.5-7b"
    res = results.Results.open(tmp_path / "r.json", command="x", gpu="g", versions={})
    res.row_defaults["model"] = "qwen2.5-7b-1m"
    assert res.upsert("ttft_s", "qwen1m-sparse", 1024, 1.0)["model"] == "qwen2.5-7b-1m"
    assert res.upsert("ttft_s", "flashinfer", 1024, 1.0, model="qwen2.5-7b")["model"] == "qwen2.5-7b"
    assert results.Results.load(tmp_path / "r.json")["rows"][0]["model"] == "qwen2.5-7b-1m"
    from sgl_qwen1m.bench.backends import kv_dtype_label

    assert kv_dtype_label(None, dirs["dca"]) == kv_dtype_label("auto", dirs["dca"]) == "bf16"
    assert kv_dtype_label("fp8_e4m3", dirs["dca"]) == "fp8_e4m3"


def test_a_memory_budget_is_on_every_row_and_each_peak_says_whether_it_held(tmp_path):
    from sgl_qwen1m.bench.common import EngineOptions, budget_defaults, peak_fields

    assert budget_defaults(EngineOptions()) == {} and "within_budget" not in peak_fields(50.0, EngineOptions())
    opts = EngineOptions(mem_budget_gib=48.0)
    res = results.Results.open(tmp_path / "r.json", command="x", gpu="g", versions={})
    res.row_defaults.update(budget_defaults(opts))
    assert res.upsert("ttft_s", "qwen1m-sparse", 1_000_000, 60.0)["mem_budget_gib"] == 48.0
    assert res.upsert("peak_mem_gib", "qwen1m-sparse", 1_000_000, 47.5, **peak_fields(47.5, opts))["within_budget"]
    assert not res.upsert("peak_mem_gib", "qwen1m-sparse", 2_000, 48.5, **peak_fields(48.5, opts))["within_budget"]
    assert results.validate(results.Results.load(tmp_path / "r.json")) == []


def test_plan_sizes_an_fp8_pool_at_one_byte_per_element(capsys):
    from sgl_qwen1m.cli import main

    args = ["plan", "--lengths", "1000000", "--gpu-gib", "139.8", "--mem-fraction-static", "0.9"]
    assert main(args) == 0
    bf16 = capsys.readouterr().out
    assert main(args + ["--kv-cache-dtype", "fp8_e4m3"]) == 0
    fp8 = capsys.readouterr().out
    assert "KV 57344 B/token" in bf16 and "KV 28672 B/token (fp8_e4m3)" in fp8


def test_decode_timing_at_several_lengths_or_none() -> None:
    parse = lambda *a: bench_cli.e2e_options(cli.build_parser().parse_args(["bench", "e2e", *a]))  # noqa: E731
    assert parse("--decode-at", "256K,1000000").decode_at == [262144, 1000000]
    assert parse("--decode-at", "0").decode_at == []


def test_every_committed_results_file_follows_the_schema():
    """Every JSON under benchmarks/results/ validates (training-argument dumps, a trained model's own files kept in a
    ``model/`` folder beside its results, and scheduler step-time profiles kept in a ``profiles/`` folder are not
    results files)."""
    root = Path(__file__).resolve().parents[1] / "benchmarks" / "results"
    files = [f for f in sorted(root.rglob("*.json")) if not f.name.endswith(".training_args.json")
             and not {"model", "profiles"} & set(f.relative_to(root).parts[:-1])]
    assert len(files) > 30
    bad = {f.relative_to(root).as_posix(): results.validate(json.loads(f.read_text())) for f in files}
    assert not {k: v for k, v in bad.items() if v}
