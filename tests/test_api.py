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
# The committed peaks that floor.prefill_overhead_gib (OVERHEAD_FIXED_GIB and its per-token term) was fitted to:
# qwen1m-dense at 600K on H100 and 1M on H200 (serve smoke) and at 128K/256K on H100 (e2e, chunk 8192).
CALIBRATION_FILES = {"serve_smoke_600k_h100.json", "serve_smoke_1m_h200.json", "e2e_7b_h100.json"}


def _result_file(name: str) -> Path:
    """A committed results file by name, wherever it sits under benchmarks/results (flat or in folders)."""
    (path,) = sorted(RES.rglob(name))
    return path


def _measured(name: str, metric: str) -> tuple[float, dict]:
    data = Results.load(_result_file(name))
    (row,) = [r for r in data["rows"] if r["metric"] == metric]
    return row["value"], data


# ---------------------------------------------------------------------------------------------------------------
# Calibration: these only show that the fit still reproduces the points it was fitted to.
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name,gpu", [("serve_smoke_600k_h100", "h100"), ("serve_smoke_1m_h200", "h200")])
def test_planner_reproduces_its_calibration_points_serve(name: str, gpu: str) -> None:
    peak, data = _measured(f"{name}.json", "peak_mem_gib")
    cfg = data["serve_config"]
    a = plan_for_serve_config(cfg, gpu)
    assert a.fits
    assert a.context_length == cfg["context_length"]  # same rounding as the benchmark
    assert a.predicted_peak_gib == pytest.approx(peak, abs=0.5)
    assert a.engine_kwargs()["mem_fraction_static"] == cfg["mem_fraction_static"]


def test_planner_reproduces_its_calibration_points_e2e() -> None:
    data = Results.load(_result_file("e2e_7b_h100.json"))
    peak = max(r["value"] for r in data["rows"] if r["metric"] == "peak_mem_gib" and r["backend"] == "qwen1m-dense")
    cfg = data["config"]
    a = plan_memory_for(
        262_144, gpu_gib="h100", new_tokens=cfg["decode_tokens"] + 1, mem_fraction_static=cfg["mem_fraction_static"],
        chunked_prefill_size=cfg["chunked_prefill_size"], max_total_tokens=cfg["context_length"],
    )
    assert a.predicted_peak_gib == pytest.approx(peak, abs=0.5)


# ---------------------------------------------------------------------------------------------------------------
# Held out: every other committed peak of the qwen1m backend (dense or sparse) that the fit never saw: other runs,
# chunk 16384 on H100, a 528K-token pool on H100, sparse prefill, prefill CUDA graphs, 128K-1M prompts on H200.
# ---------------------------------------------------------------------------------------------------------------

# sparse_e2e_h100.json merges three calls; its "config" is the last one's (dual_chunk_flash_attn, chunk 8192), not
# the qwen1m-sparse call's (chunk 16384, see its "runs"), so its rows have no recorded settings to plan from.
NO_SETTINGS_FILES = {"sparse_e2e_h100.json"}


def _held_out_peaks() -> list[tuple[str, str, dict, dict]]:
    out = []
    for path in sorted(RES.rglob("*.json")):
        if path.name in CALIBRATION_FILES | NO_SETTINGS_FILES:
            continue
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("config"), dict) or "gpu" not in data:
            continue
        model_dir = Path(data["config"].get("model_dca") or "qwen2.5-7b-1m-shape").name
        if model_dir != "qwen2.5-7b-1m-shape":  # the planner's activation term is fitted on this shape only
            continue
        for row in data.get("rows", []):
            if row.get("metric") == "peak_mem_gib" and str(row.get("backend", "")).startswith("qwen1m"):
                out.append((path.name, data["gpu"], data["config"], row))
    return out


def test_planner_predicts_measured_peaks_it_was_not_fitted_to() -> None:
    rows = _held_out_peaks()
    gpus = {"h200" if "H200" in gpu else "h100" for _, gpu, _, _ in rows}
    chunks_h100 = {cfg["chunked_prefill_size"] for _, gpu, cfg, _ in rows if "H100" in gpu}
    # The held-out set must reach beyond the calibration settings (else this test proves nothing new).
    assert len(rows) >= 20 and gpus == {"h100", "h200"} and chunks_h100 == {8192, 16384}, (len(rows), gpus, chunks_h100)
    off = []
    for name, gpu, cfg, row in rows:
        a = plan_memory_for(
            row["prompt_tokens"], gpu_gib="h200" if "H200" in gpu else "h100", new_tokens=cfg["decode_tokens"] + 1,
            mem_fraction_static=cfg["mem_fraction_static"], max_running_requests=cfg["max_running_requests"],
            chunked_prefill_size=cfg["chunked_prefill_size"], max_total_tokens=cfg["context_length"],
            kv_dtype="fp8" if str(row.get("kv_dtype", "bf16")).startswith("fp8") else "bf16",
        )
        assert a.kv_pool_tokens == cfg["context_length"]  # the benchmark caps the pool at its context length
        if abs(a.predicted_peak_gib - row["value"]) > 0.5:
            off.append(f"{name} {row['backend']} {row['prompt_tokens']}: measured {row['value']:.2f} "
                       f"predicted {a.predicted_peak_gib:.2f} GiB")
    assert not off, "\n".join(off)


def test_kv_bytes_per_token_7b() -> None:
    a = plan_memory_for(600_000, gpu_gib="h100", new_tokens=32)
    assert sizing.QWEN25_7B.kv_bytes_per_token() == 57_344
    assert a.kv_gib == pytest.approx(602_112 * 57_344 / 2**30)
    assert "57,344 B/token" in a.explanation
    fp8 = plan_memory_for(600_000, gpu_gib="h100", new_tokens=32, kv_dtype="fp8")
    assert fp8.kv_gib == pytest.approx(a.kv_gib / 2)
    assert fp8.engine_kwargs()["kv_cache_dtype"] == "fp8_e4m3"


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


# A made-up Qwen2-shaped model small enough to do its arithmetic by hand (values in the comments of the test).
TINY_CONFIG = {
    "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16,
    "intermediate_size": 128, "vocab_size": 100, "max_position_embeddings": 100_000,
}


@pytest.fixture
def tiny_model(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps(TINY_CONFIG))
    return tmp_path


def test_planner_arithmetic_by_hand_for_a_tiny_shape(tiny_model: Path) -> None:
    a = plan_memory_for(
        10_000, tiny_model, gpu_gib=8.0, new_tokens=100, max_running_requests=1, chunked_prefill_size=2048,
        mem_fraction_static=0.125,
    )
    # KV: K and V x 2 layers x 2 KV heads x head_dim 16 x 2 bytes = 256 B/token.
    # context: 10,000 + 100 + 1,024 margin = 11,124, rounded up to 4096s = 12,288 tokens -> 3 MiB of KV.
    assert a.context_length == 12_288
    assert a.kv_gib * 2**30 == pytest.approx(12_288 * 256)
    assert "256 B/token" in a.explanation
    # weights (bf16): per layer q,k,v,o 64*(64+32+32) + 64*64 = 12,288, MLP 3*64*128 = 24,576, qkv bias 128 and
    # two norms 128 -> 37,120; 2 layers + embedding and LM head 2*100*64 + final norm 64 = 87,104 params = 174,208 B.
    assert a.weights_gib * 2**30 == pytest.approx(174_208)
    # req_to_token: int32 (1 + 1 requests) x (12,288 + 4) = 98,336 B.
    assert a.req_to_token_gib * 2**30 == pytest.approx(98_336)
    # static pool 8 GiB x 0.125 = 1 GiB; the KV pool is what weights and req_to_token leave of it.
    assert a.kv_pool_gib * 2**30 == pytest.approx(2**30 - 174_208 - 98_336)
    assert a.kv_pool_tokens == (2**30 - 174_208 - 98_336) // 256 == 4_193_239
    # outside the pool: 2.1 GiB fixed + 2048 tokens x 2 B x (3*128 + 5*4*16 + 2*2*16 + 6*64 = 1,152) = 4.5 MiB.
    assert a.overhead_gib == pytest.approx(2.1 + 2048 * 2304 / 2**30)
    assert a.predicted_peak_gib == pytest.approx(1.0 + 2.1 + 4.5 / 1024)
    assert a.headroom_gib == pytest.approx(8.0 - a.predicted_peak_gib)
    assert a.fits and a.engine_kwargs()["context_length"] == 12_288
    # A pool capped by max_total_tokens holds exactly that many tokens: peak = weights + r2t + 3 MiB + overhead.
    capped = plan_memory_for(
        10_000, tiny_model, gpu_gib=8.0, new_tokens=100, max_running_requests=1, chunked_prefill_size=2048,
        mem_fraction_static=0.125, max_total_tokens=12_288,
    )
    assert capped.kv_pool_tokens == 12_288
    assert capped.predicted_peak_gib * 2**30 == pytest.approx(174_208 + 98_336 + 12_288 * 256 + 2.1 * 2**30 + 2048 * 2304)
    # fp8 halves the KV bytes per token and nothing else.
    fp8 = plan_memory_for(10_000, tiny_model, gpu_gib=8.0, new_tokens=100, kv_dtype="fp8")
    assert fp8.kv_gib * 2**30 == pytest.approx(12_288 * 128) and "128 B/token" in fp8.explanation


def test_tiny_model_is_refused_on_a_gpu_smaller_than_its_overhead(tiny_model: Path) -> None:
    # 2.1 GiB fixed overhead + 2 GiB safety cannot fit in 3 GiB, whatever the fraction: the planner says so.
    a = plan_memory_for(1_000, tiny_model, gpu_gib=3.0)
    assert not a.fits and "DOES NOT FIT" in a.explanation and a.headroom_gib < api.SAFETY_GIB
    with pytest.raises(ValueError, match="does not fit"):
        engine_kwargs_for(tiny_model, 1_000, gpu_gib=3.0)


@pytest.mark.parametrize("model,gpu", [("qwen2.5-7b-1m", "h100"), ("qwen2.5-7b-1m", "h200"), ("qwen2.5-14b-1m", "h200")])
def test_planner_is_monotone_in_prompt_length(model: str, gpu: str) -> None:
    lengths = [1, 4_096, 50_000, 131_072, 200_000, 262_144, 400_000, 600_000, 800_000, 1_000_000]
    plans = [plan_memory_for(n, model, gpu_gib=gpu) for n in lengths]
    for short, long in zip(plans, plans[1:]):
        assert short.context_length <= long.context_length
        assert short.kv_gib <= long.kv_gib and short.min_mem_fraction_static <= long.min_mem_fraction_static
        assert short.req_to_token_gib <= long.req_to_token_gib
        assert short.fits or not long.fits  # once a prompt does not fit, no longer one does
    # the same holds at a fixed user setting, where the pool is fixed and only the request grows
    fixed = [plan_memory_for(n, model, gpu_gib=gpu, mem_fraction_static=0.8) for n in lengths]
    assert all(a.kv_pool_gib == pytest.approx(fixed[0].kv_pool_gib, rel=1e-3) for a in fixed)
    assert [a.fits for a in fixed] == sorted((a.fits for a in fixed), reverse=True)


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
        (dict(prompt_tokens=1000, mem_fraction_static=5), r"mem_fraction_static must be in \(0, 1\), got 5"),
        (dict(prompt_tokens=1000, mem_fraction_static=0), r"mem_fraction_static must be in \(0, 1\), got 0"),
        (dict(prompt_tokens=1000, mem_fraction_static=float("nan")), r"mem_fraction_static must be in \(0, 1\), got nan"),
        (dict(prompt_tokens=1000, mem_fraction_static="0.5"), r"mem_fraction_static must be in \(0, 1\), got '0.5'"),
        (dict(prompt_tokens=-5), "prompt_tokens must be a positive integer, got -5"),
        (dict(prompt_tokens=1000.0), "prompt_tokens must be a positive integer, got 1000.0"),
        (dict(prompt_tokens=1000, new_tokens=-1), "new_tokens must be a positive integer, got -1"),
        (dict(prompt_tokens=1000, new_tokens=True), "new_tokens must be a positive integer, got True"),
        (dict(prompt_tokens=1000, gpu_gib=float("inf")), "gpu_gib must be a finite number of GiB, got inf"),
        (dict(prompt_tokens=1000, gpu_gib=float("nan")), "gpu_gib must be a positive number"),
        (dict(prompt_tokens=1000, chunked_prefill_size=0), "chunked_prefill_size must be a positive integer, got 0"),
        (dict(prompt_tokens=1000, chunked_prefill_size=-8192), "chunked_prefill_size must be a positive integer, got -8192"),
        (dict(prompt_tokens=1000, chunked_prefill_size=8192.5), "chunked_prefill_size must be a positive integer, got 8192.5"),
        (dict(prompt_tokens=1000, safety_gib=-3), "safety_gib must be a finite number >= 0, got -3"),
        (dict(prompt_tokens=1000, safety_gib=float("nan")), "safety_gib must be a finite number >= 0, got nan"),
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
    assert engine_kwargs_for("qwen2.5-7b-1m", 100_000, gpu_gib="h100", kv_dtype="fp8")["kv_cache_dtype"] == "fp8_e4m3"

    import sgl_qwen1m.adapter.engine as eng

    seen = {}
    monkeypatch.setattr(eng, "start_engine", lambda **k: seen.update(k) or "engine")
    assert api.launch_engine("qwen2.5-7b-1m", 131_072, gpu_gib="h100", mem_fraction_static=0.6) == "engine"
    assert seen["mem_fraction_static"] == 0.6 and seen["attention_backend"] == "qwen1m"


def test_prefill_estimate_reproduces_its_calibration_ttfts() -> None:
    # PREFILL_EFFICIENCY (0.70) was read off these two runs (api.py), so this is a calibration check too.
    for name in ("serve_smoke_600k_h100", "serve_smoke_1m_h200"):
        ttft, data = _measured(f"{name}.json", "ttft_s")
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
