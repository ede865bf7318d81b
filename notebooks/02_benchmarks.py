# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Benchmarks: what we measured, and what the planner predicts
#
# Every number here is read from the committed result files `benchmarks/results/<experiment>/*.json` (each records its
# command, GPU and versions); nothing is re-measured on CPU. The floors are FLOP arithmetic
# (`sgl_qwen1m.sizing`). The last section is the memory planner (`sgl_qwen1m.api.plan_memory_for`), checked
# against the measured peaks. With `GPU = True` the final cell times one prefill through the API.
#
# Stored as a jupytext percent-format `.py` file; `tests/test_notebooks.py` executes it in CI.

# %%
import os
from pathlib import Path

import matplotlib

if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from sgl_qwen1m.api import GPUS, PREFILL_EFFICIENCY, plan_for_serve_config, plan_memory_for, prefill_eta_s
from sgl_qwen1m.sizing import QWEN25_7B, prefill_floor_s
from sgl_qwen1m.bench.results import Results

GPU = torch.cuda.is_available()
ROOT = Path.cwd() if (Path.cwd() / "pyproject.toml").exists() else Path.cwd().parent
RES = ROOT / "benchmarks" / "results"
# Figures land in benchmarks/results/notebooks/; CI points SGL_QWEN1M_FIG_DIR at a temporary folder instead.
FIG_DIR = Path(os.environ.get("SGL_QWEN1M_FIG_DIR") or RES / "notebooks")
FIG_DIR.mkdir(parents=True, exist_ok=True)


def save(fig, name):
    path = FIG_DIR / f"{name}.png"
    fig.savefig(path, dpi=72, bbox_inches="tight")
    print(f"saved {path.name} ({path.stat().st_size // 1024} KB)")


def rows(name, metric):
    """Rows of ``metric`` with a value in ``benchmarks/results/<name>.json`` (name: "<experiment>/<file stem>")."""
    data = Results.load(RES / f"{name}.json")
    return [r for r in data["rows"] if r["metric"] == metric and r.get("value") is not None], data


e2e_ttft, e2e = rows("e2e-dense-7b-h100/e2e_7b_h100", "ttft_s")
s600_ttft, s600 = rows("serve-smoke/serve_smoke_600k_h100", "ttft_s")
s1m_ttft, s1m = rows("serve-smoke/serve_smoke_1m_h200", "ttft_s")
for d in (e2e, s600, s1m):
    print(f"{d['gpu']:45s} {d['date']}  {d['command'][:90]}...")
print("GPU mode:", GPU)

# %% [markdown]
# ## Time to first token vs prompt length
# 7B-1M shape, dummy weights, batch 1. `flashinfer` is SGLang's backend on the 7B shape without DCA; `qwen1m-dense`
# is this plugin. The dashed line is the dense FLOP floor at 800 TFLOP/s; the dotted one divides it by the measured
# efficiency (0.70) that `prefill_progress` uses for its estimate.

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for backend, color in (("flashinfer", "C7"), ("qwen1m-dense", "C0")):
    pts = sorted((r["prompt_tokens"], r["value"]) for r in e2e_ttft if r["backend"] == backend)
    ax.plot(*zip(*pts), "o-", color=color, label=f"{backend} (H100, Engine)")
for data_rows, marker, label in ((s600_ttft, "s", "qwen1m 600K (H100, server)"), (s1m_ttft, "D", "qwen1m 1M (H200, server)")):
    ax.plot([r["prompt_tokens"] for r in data_rows], [r["value"] for r in data_rows], marker, color="C3", label=label)
xs = [2**i for i in range(16, 21)] + [1_000_000]
ax.plot(xs, [prefill_floor_s(QWEN25_7B, x) for x in xs], "--", color="0.4", lw=1, label="dense floor, 800 TFLOP/s")
ax.plot(xs, [prefill_eta_s(x) for x in xs], ":", color="0.4", lw=1, label=f"floor / {PREFILL_EFFICIENCY} (estimate)")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("prompt tokens")
ax.set_ylabel("TTFT (s)")
ax.set_title("Qwen2.5-7B-1M shape: time to first token")
ax.legend(fontsize=7)
ax.grid(alpha=0.3, which="both")
save(fig, "ttft_vs_length")
plt.show()

for r in sorted(e2e_ttft + s600_ttft + s1m_ttft, key=lambda r: (r["prompt_tokens"], r["backend"])):
    floor = prefill_floor_s(QWEN25_7B, r["prompt_tokens"])
    print(f"{r['backend']:13s} {r['prompt_tokens']:>9,} tokens: TTFT {r['value']:7.1f} s, floor {floor:6.1f} s, "
          f"efficiency {floor / r['value']:.2f}")

# %% [markdown]
# ## Sparse prefill: speed-up over dense FlashInfer
# Same 7B-1M shape, real 7B budgets, chunked prefill 16,384. *uniform*: SGLang's dummy weights (flat attention, the
# selected diagonals scatter). *local*: the same weights with q/k biases that make attention decay with distance
# (`sgl_qwen1m/bench/local_weights.py`), the regime of trained models. The in-tree `dual_chunk_flash_attn` ran
# prefill-only (every chunk sparse; its dense path and decode need FA3, absent from the GPU bundle). Each bar is
# flashinfer's TTFT over the backend's, from the same run except where the code says otherwise.

# %%
def speedups(name, backend, baseline=None):
    """{prompt_tokens: flashinfer TTFT / backend TTFT}; flashinfer from ``baseline`` (default: the same file)."""
    got, _ = rows(name, "ttft_s")
    ref, _ = rows(baseline or name, "ttft_s")
    base = {r["prompt_tokens"]: r["value"] for r in ref if r["backend"] == "flashinfer"}
    return {r["prompt_tokens"]: base[r["prompt_tokens"]] / r["value"] for r in got
            if r["backend"] == backend and r["prompt_tokens"] in base}


# 512K: flashinfer and qwen1m-sparse in separate calls; 128K/256K: one run with the in-tree backend
uniform = speedups("sparse-e2e-h100/sparse_e2e_h100", "qwen1m-sparse")
uniform.update(speedups("sparse-vs-intree-h100/sparse_e2e_uniform_h100", "qwen1m-sparse"))
series = [
    ("qwen1m-sparse, uniform", "C3", uniform),
    ("qwen1m-sparse, local", "C1", speedups("sparse-e2e-h100/sparse_e2e_local_h100", "qwen1m-sparse-local")),
    ("in-tree, uniform", "C7", speedups("sparse-vs-intree-h100/sparse_e2e_uniform_h100", "dual_chunk_flash_attn")),
    # the in-tree local run has no flashinfer of its own: the local run's flashinfer (same GPU model, weights-blind)
    ("in-tree, local", "0.55", speedups("sparse-vs-intree-h100/sparse_e2e_intree_h100", "dual_chunk_flash_attn-local",
                                        "sparse-e2e-h100/sparse_e2e_local_h100")),
]
lengths = sorted({n for _, _, sp in series for n in sp})
_, sp_local_d = rows("sparse-e2e-h100/sparse_e2e_local_h100", "ttft_s")
fig, ax = plt.subplots(figsize=(6, 3.6))
width = 0.2
for i, (label, color, sp) in enumerate(series):
    xs_ = [j + (i - 1.5) * width for j, n in enumerate(lengths) if n in sp]
    ys_ = [sp[n] for n in lengths if n in sp]
    ax.bar(xs_, ys_, width, color=color, label=label)
    for x, y in zip(xs_, ys_):
        ax.text(x, y + 0.05, f"{y:.1f}", ha="center", fontsize=6)
ax.axhline(1.0, color="0.3", lw=0.8)
ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" for n in lengths])
ax.set_ylabel("speed-up over flashinfer (TTFT)")
ax.set_title(f"Sparse prefill, {sp_local_d['gpu'].split(',')[0]}", fontsize=9)
ax.legend(fontsize=7)
ax.grid(alpha=0.3, axis="y")
save(fig, "sparse_speedup")
plt.show()
for label, _, sp in series:
    print(f"{label:24s} " + "  ".join(f"{n // 1024}K x{sp[n]:.2f}" for n in lengths if n in sp))

# %% [markdown]
# At 1M tokens (one H200) and against the in-tree backend, local weights, read from the files. At chunk 8,192 (SGLang's
# H100 default) both backends ran in one invocation, twice (second time in the other order); the chunk-16,384 pair
# is an older tree (a887831), from separate invocations on one lease.

# %%
m1, m1_d = rows("sparse-e2e-1m-h200/sparse_e2e_1m_h200_measured", "ttft_s")
t1m = {r["backend"]: r["value"] for r in m1 if r["prompt_tokens"] == 1_000_000}
print(f"{m1_d['gpu'].split(',')[0]}, 1,000,000 tokens: flashinfer {t1m['flashinfer']:.1f} s, "
      f"qwen1m-sparse-local {t1m['qwen1m-sparse-local']:.1f} s -> x{t1m['flashinfer'] / t1m['qwen1m-sparse-local']:.2f}")
for name, chunk in (("sparse_e2e_intree_local_8192_h100", 8192), ("sparse_e2e_intree_local_8192_repeat_h100", 8192),
                    ("sparse_e2e_ab_h100", 16384)):
    got, _ = rows(f"sparse-vs-intree-h100/{name}", "ttft_s")
    t = {(r["backend"], r["prompt_tokens"]): r["value"] for r in got}
    for n in (131072, 262144):
        ours, theirs = t[("qwen1m-sparse-local", n)], t[("dual_chunk_flash_attn-local", n)]
        print(f"chunk {chunk:>6,}, {n // 1024}K: in-tree {theirs:5.2f} s, qwen1m-sparse-local {ours:5.2f} s -> "
              f"x{theirs / ours:.2f}")

# %% [markdown]
# ## Decode step
# One decode step of the whole model (batch 1) at the given context, from streaming (`e2e`, `serve-smoke`), and the
# attention alone (28 layers in a CUDA graph, `decode_ops_h100.json`).

# %%
dec_e2e, _ = rows("e2e-dense-7b-h100/e2e_7b_h100", "decode_step_ms")
dec_600, _ = rows("serve-smoke/serve_smoke_600k_h100", "decode_step_ms")
dec_1m, _ = rows("serve-smoke/serve_smoke_1m_h200", "decode_step_ms")
ops, _ = rows("decode-ops-h100/decode_ops_h100", "decode_attn_ms")
labels, values, colors = [], [], []
for r in dec_e2e:
    labels.append(f"{r['backend']}\n{r['prompt_tokens'] // 1024}K H100")
    values.append(r["value"])
    colors.append("C7" if r["backend"] == "flashinfer" else "C0")
for r, gpu in ((dec_600[0], "H100"), (dec_1m[0], "H200")):
    labels.append(f"qwen1m\n{r['prompt_tokens'] // 1000}K {gpu}")
    values.append(r["value"])
    colors.append("C3")
fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.2), gridspec_kw={"width_ratios": [2, 1.3]})
a1.bar(range(len(values)), values, color=colors)
a1.set_xticks(range(len(values)), labels, fontsize=7)
a1.set_ylabel("ms / step (whole model)")
a1.set_title("decode step, end to end")
for backend, color in (("flashinfer", "C7"), ("qwen1m-dense", "C0")):
    pts = sorted((r["prompt_tokens"], r["value"]) for r in ops if r["backend"] == backend)
    a2.plot([p[0] // 1024 for p in pts], [p[1] for p in pts], "o-", color=color, label=backend)
a2.set_xlabel("context (K tokens)")
a2.set_ylabel("ms (attention, 28 layers)")
a2.set_title("decode attention, H100")
a2.legend(fontsize=7)
fig.tight_layout()
save(fig, "decode_step")
plt.show()

# %% [markdown]
# ## Memory planner vs measured peaks
# Each serve run fixed `mem_fraction_static` and `max_total_tokens`; the planner predicts the device-wide peak for
# the same settings. Then the planner's own recommendations for 7B and 14B on H100 80GB and H200.

# %%
checks = [
    ("serve-smoke/serve_smoke_600k_h100", "h100"),
    ("serve-smoke/serve_smoke_1m_h200", "h200"),
]
for name, gpu in checks:
    peak_rows, data = rows(name, "peak_mem_gib")
    cfg = data["serve_config"]
    advice = plan_for_serve_config(cfg, gpu)
    print(f"{name}: measured peak {peak_rows[0]['value']:.1f} GiB, planner {advice.predicted_peak_gib:.1f} GiB "
          f"(mem_fraction_static {cfg['mem_fraction_static']}, context {cfg['context_length']:,})")

# %%
LENGTHS = (131_072, 262_144, 600_000, 1_000_000)
table = []
for model in ("qwen2.5-7b-1m", "qwen2.5-14b-1m"):
    for gpu in ("h100", "h200"):
        for kv in ("bf16", "fp8"):
            for n in LENGTHS:
                a = plan_memory_for(n, model, gpu_gib=gpu, kv_dtype=kv)
                table.append(a)
header = f"{'model':15s} {'GPU':5s} {'KV':4s} {'prompt':>9s} {'fits':5s} {'mfs':>5s} {'chunk':>6s} {'KV GiB':>7s} {'peak':>6s} {'free':>6s}"
print(header)
for a in table:
    gpu = "H100" if a.gpu_gib < 100 else "H200"
    print(f"{a.model:15s} {gpu:5s} {a.kv_dtype:4s} {a.prompt_tokens:>9,} {str(a.fits):5s} {a.mem_fraction_static:5.2f} "
          f"{a.chunked_prefill_size:6d} {a.kv_gib:7.1f} {a.predicted_peak_gib:6.1f} {a.headroom_gib:6.1f}")
print("fp8 KV rows are arithmetic only: qwen1m serves bf16/fp16 KV caches today.")

# %%
from sgl_qwen1m.api import MODELS
from sgl_qwen1m.sizing import GIB, prefill_overhead_gib

fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), sharey=True)
xs = list(range(32_768, 1_010_001, 32_768))
for ax, model in zip(axes, ("qwen2.5-7b-1m", "qwen2.5-14b-1m")):
    shape = MODELS[model].shape
    base = shape.weight_bytes() / GIB + prefill_overhead_gib(shape, 8192)
    for kv, nbytes, style in (("bf16", 2, "-"), ("fp8", 1, "-.")):
        ax.plot([x / 1000 for x in xs], [base + x * shape.kv_bytes_per_token(nbytes) / GIB for x in xs], style,
                color="0.2", lw=1.2, label=f"weights + {kv} KV + activations")
    for gpu, color in (("h100", "C0"), ("h200", "C1")):
        ax.axhline(GPUS[gpu], color=color, ls="--", lw=1, label=f"{gpu.upper()} {GPUS[gpu]:.0f} GiB")
    ax.set_title(model)
    ax.set_xlabel("context (K tokens)")
    ax.set_ylim(0, 260)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("predicted peak (GiB)")
axes[0].legend(fontsize=7)
fig.tight_layout()
save(fig, "memory_planner")
plt.show()

# %% [markdown]
# ## GPU mode: one long prefill through the API
# Starts an Engine with planner defaults and times one prefill with the estimate bar. Not executed in CI.

# %%
if GPU:
    import random

    from sgl_qwen1m.api import launch_engine, prefill_progress

    MODEL = os.environ.get("SGL_QWEN1M_MODEL", "Qwen/Qwen2.5-7B-Instruct-1M")
    N = int(os.environ.get("SGL_QWEN1M_PROMPT_TOKENS", "131072"))
    engine = launch_engine(MODEL, prompt_tokens=N)
    ids = [random.randrange(1000, 30000) for _ in range(N)]
    with prefill_progress(N):
        out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 1})
    print(out["meta_info"])
    engine.shutdown()
else:
    print("no CUDA GPU: skipped the Engine cell")
