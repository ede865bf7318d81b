"""The notebook-first API (sgl_qwen1m.api): memory planner, Engine arguments, progress estimate. CPU only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgl_qwen1m import api
from sgl_qwen1m.api import engine_kwargs_for, plan_for_serve_config, plan_memory_for, prefill_eta_s, prefill_progress
from sgl_qwen1m import sizing
from sgl_qwen1m.bench.results import Results

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "benchmarks" / "results"


def _measured(name: str, metric: str) -> tuple[float, dict]:
    data = Results.load(RES / f"{name}.json")
    (row,) = [r for r in data["rows"] if r["metric"] == metric]
    return row["value"], data


@pytest.mark.parametrize("name,gpu", [("serve_smoke_600k_h100", "h100"), ("serve_smoke_1m_h200", "h200")])
def test_planner_reproduces_the_measured_serve_runs(name: str, gpu: str) -> None:
    peak, data = _measured(name, "peak_mem_gib")
    cfg = data["serve_config"]
    a = plan_for_serve_config(cfg, gpu)
    assert a.fits
    assert a.context_length == cfg["context_length"]  # same rounding as the benchmark
    assert a.predicted_peak_gib == pytest.approx(peak, abs=0.5)
    assert a.engine_kwargs()["mem_fraction_static"] == cfg["mem_fraction_static"]


def test_e2e_peak_is_reproduced_too() -> None:
    data = Results.load(RES / "e2e_7b_h100.json")
    peak = max(r["value"] for r in data["rows"] if r["metric"] == "peak_mem_gib" and r["backend"] == "qwen1m-dense")
    cfg = data["config"]
    a = plan_memory_for(
        262_144, gpu_gib="h100", new_tokens=cfg["decode_tokens"] + 1, mem_fraction_static=cfg["mem_fraction_static"],
        chunked_prefill_size=cfg["chunked_prefill_size"], max_total_tokens=cfg["context_length"],
    )
    assert a.predicted_peak_gib == pytest.approx(peak, abs=0.5)


def test_kv_bytes_per_token_7b() -> None:
    a = plan_memory_for(600_000, gpu_gib="h100", new_tokens=32)
    assert sizing.QWEN25_7B.kv_bytes_per_token() == 57_344
    assert a.kv_gib == pytest.approx(602_112 * 57_344 / 2**30)
    assert "57,344 B/token" in a.explanation
    fp8 = plan_memory_for(600_000, gpu_gib="h100", new_tokens=32, kv_dtype="fp8")
    assert fp8.kv_gib == pytest.approx(a.kv_gib / 2)
    assert any("FP8" in w for w in fp8.warnings) and fp8.engine_kwargs()["kv_cache_dtype"] == "fp8_e4m3"


@pytest.mark.parametrize("gpu", ["h100", "h200"])
@pytest.mark.parametrize("n", [131_072, 262_144, 600_000, 1_000_000])
def test_recommendations_for_7b_are_consistent(gpu: str, n: int) -> None:
    a = plan_memory_for(n, gpu_gib=gpu)
    assert a.fits
    assert a.min_mem_fraction_static <= a.mem_fraction_static <= min(a.max_mem_fraction_static, api.MFS_CAP)
    assert a.kv_pool_tokens >= a.context_length >= n + a.new_tokens
    assert a.headroom_gib >= api.SAFETY_GIB
    assert a.chunked_prefill_size == (16384 if gpu == "h200" else 8192)
    assert a.predicted_peak_gib == pytest.approx(a.weights_gib + a.req_to_token_gib + a.kv_pool_gib + a.overhead_gib)
    assert a.explanation.splitlines()[0].endswith("FITS")


def test_fits_boundary_on_h100() -> None:
    # 14B bf16: weights 27.5 GiB + 196,608 B/token; an 80 GB card holds ~220K tokens, not 262K.
    assert plan_memory_for(200_000, "qwen2.5-14b-1m", gpu_gib="h100").fits
    no = plan_memory_for(262_144, "qwen2.5-14b-1m", gpu_gib="h100")
    assert not no.fits and "DOES NOT FIT" in no.explanation and "KV pool holds" in no.explanation
    # Bisect the largest 7B prompt on a 60 GiB card and check both sides of it.
    lo, hi = 1, 1_000_000
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if plan_memory_for(mid, gpu_gib=60.0).fits else (lo, mid)
    assert 500_000 < lo < 900_000
    assert not plan_memory_for(hi, gpu_gib=60.0).fits


def test_user_setting_with_too_little_headroom_does_not_fit() -> None:
    a = plan_memory_for(131_072, gpu_gib="h100", mem_fraction_static=0.97)
    assert not a.fits and "too little left" in a.explanation


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(prompt_tokens=1_010_000), r"prompt_tokens=1,010,000 \+ new_tokens=512 = 1,010,512 exceeds max_position_embeddings=1,010,000"),
        (dict(prompt_tokens=0), "prompt_tokens must be a positive integer, got 0"),
        (dict(prompt_tokens=1000, kv_dtype="int4"), "kv_dtype must be one of .* got 'int4'"),
        (dict(prompt_tokens=1000, gpu_gib="a100"), "gpu_gib='a100' is not a known GPU"),
        (dict(prompt_tokens=1000, gpu_gib=-1), "gpu_gib must be a positive number"),
        (dict(prompt_tokens=1000, max_running_requests=0), "max_running_requests must be an integer >= 1, got 0"),
        (dict(prompt_tokens=1000, mem_fraction_static=1.2), r"mem_fraction_static must be in \(0, 1\), got 1.2"),
        (dict(prompt_tokens=1000, model="llama-9"), "model='llama-9' is neither a known model"),
    ],
)
def test_errors_name_the_value_and_the_limit(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        plan_memory_for(**kwargs)


def test_model_from_config_dir_and_hf_id(tmp_path: Path) -> None:
    by_dir = plan_memory_for(100_000, ROOT / "benchmarks" / "models" / "qwen2.5-14b-1m-shape", gpu_gib="h200")
    by_name = plan_memory_for(100_000, "Qwen/Qwen2.5-14B-Instruct-1M", gpu_gib="h200")
    assert by_dir.kv_gib == pytest.approx(by_name.kv_gib) and by_dir.weights_gib == pytest.approx(by_name.weights_gib)
    small = json.loads((ROOT / "benchmarks" / "models" / "qwen2.5-7b-shape" / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(small))
    with pytest.raises(ValueError, match=f"exceeds max_position_embeddings={small['max_position_embeddings']:,}"):
        plan_memory_for(small["max_position_embeddings"], tmp_path, gpu_gib="h100")


def test_engine_kwargs_and_launch(monkeypatch: pytest.MonkeyPatch) -> None:
    kw = engine_kwargs_for("Qwen/Qwen2.5-7B-Instruct-1M", 600_000, gpu_gib="h100", log_level="info")
    assert kw["model_path"] == "Qwen/Qwen2.5-7B-Instruct-1M" and kw["attention_backend"] == "qwen1m"
    assert kw["context_length"] >= 600_512 and kw["chunked_prefill_size"] == 8192 and kw["log_level"] == "info"
    full = engine_kwargs_for("qwen2.5-7b-1m", gpu_gib="h200")
    assert full["context_length"] == 1_010_000
    with pytest.raises(ValueError, match="does not fit"):
        engine_kwargs_for("qwen2.5-14b-1m", 600_000, gpu_gib="h100")
    with pytest.raises(ValueError, match="FP8 KV cache"):
        engine_kwargs_for("qwen2.5-7b-1m", 100_000, gpu_gib="h100", kv_dtype="fp8")

    import sgl_qwen1m.adapter.engine as eng

    seen = {}
    monkeypatch.setattr(eng, "start_engine", lambda **k: seen.update(k) or "engine")
    assert api.launch_engine("qwen2.5-7b-1m", 131_072, gpu_gib="h100", mem_fraction_static=0.6) == "engine"
    assert seen["mem_fraction_static"] == 0.6 and seen["attention_backend"] == "qwen1m"


def test_prefill_estimate_matches_measured_ttft() -> None:
    for name in ("serve_smoke_600k_h100", "serve_smoke_1m_h200"):
        ttft, data = _measured(name, "ttft_s")
        assert prefill_eta_s(data["serve_config"]["prompt_tokens"]) == pytest.approx(ttft, rel=0.1)


def test_prefill_progress_completes_and_is_labelled_an_estimate() -> None:
    import io

    out = io.StringIO()
    with prefill_progress(1000, eta_s=0.05, interval_s=0.01, file=out) as bar:
        assert "estimate" in bar.desc
        import time

        time.sleep(0.1)
        assert bar.n <= 990  # never claims completion before the block ends
    assert bar.n == 1000
    assert "estimate" in out.getvalue()
