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
# # Vertical-slash sparse prefill on a real (tiny) model
#
# Qwen2.5-1M prefills long prompts with MInference-style sparse attention: each head keeps a few key **columns**
# (vertical lines: sinks, retrieved facts) and a few **diagonals** (slash lines: local context, periodic
# structure), chosen per prefill chunk from the chunk's last 64 queries. This notebook runs the bundled tiny DCA
# model on a passkey prompt four times its training length, captures its real queries and keys, and shows:
#
# 1. the vertical and slash scores the estimator sees, with the passkey's position marked;
# 2. the attention pattern the selection keeps;
# 3. **attention recall** (share of each query's softmax mass the kept keys capture) against the budget.
#
# Everything runs through `sgl_qwen1m`'s fp32 oracles on the CPU (the GPU path runs the same rules in Triton and
# is tested against them). Stored as a jupytext percent-format `.py` file; `tests/test_notebooks.py` executes it.

# %%
import os
from pathlib import Path

import matplotlib

if not os.environ.get("MPLBACKEND"):
    matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from sgl_qwen1m.ops.dca.plan import dca_positions, yarn_logit_scale
from sgl_qwen1m.ops.dca.reference import dca_attention_ref
from sgl_qwen1m.ops.sparse.plan import PAD, LayerBudget
from sgl_qwen1m.ops.sparse.reference import (
    attention_recall,
    block_pattern,
    estimate_vs_ref,
    pattern_mask_ref,
    select_vertical_slash,
)
from sgl_qwen1m.evals.harness import make_samples
from sgl_qwen1m.figures import save_png
from sgl_qwen1m.model.tasks import TaskBuilder
from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR, read_config, train_length
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2, apply_rope, rope_cos_sin

ROOT = Path.cwd() if (Path.cwd() / "pyproject.toml").exists() else Path.cwd().parent
FIG_DIR = Path(os.environ.get("SGL_QWEN1M_FIG_DIR") or ROOT / "benchmarks" / "results" / "notebooks")
FIG_DIR.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)


def save(fig, name):
    path = save_png(fig, FIG_DIR / f"{name}.png", dpi=72, bbox_inches="tight")  # palette PNG, small in the tree
    print(f"saved {path.name} ({path.stat().st_size // 1024} KB)")


# %% [markdown]
# ## Run the model once and keep every layer's queries and keys
# `TinyQwen2.prefill` is the package's pure-torch reference of the bundled model (DCA, YaRN). A small wrapper
# around its attention step records the unrotated queries and the cached (DCA-rotated) keys and values per layer.

# %%
model = TinyQwen2.from_pretrained(BUNDLED_MODEL_DIR)
cfg_json = read_config(BUNDLED_MODEL_DIR)
train_len = train_length(cfg_json)
builder = TaskBuilder()
(_, sample), = make_samples(["passkey"], [4.0], 1, train_len, seed=3, builder=builder)
ids = list(sample.prompt_ids)
answer = sample.answers[0]

captured = []
orig_attend = model._attend


def recording_attend(q, k_new, k, v, pos, scale_len, impl, layer=0):
    captured.append((q.detach().clone(), k.detach().clone(), v.detach().clone(), pos.clone(), scale_len))
    return orig_attend(q, k_new, k, v, pos, scale_len, impl, layer=layer)


model._attend = recording_attend
logits, _ = model.prefill(ids)
model._attend = orig_attend
dca = model.dca
L = len(ids)
print(f"prompt {L} tokens ({L / train_len:.0f}x the {train_len}-token training length), DCA chunk_len {dca.chunk_len}, "
      f"{len(captured)} layers captured; answer {answer!r}")

# where is the passkey? the first occurrence of the answer's digits in the prompt
digits = [i for i, t in enumerate(ids) if builder.decode([t]).strip() and builder.decode([t]).strip() in answer]
needle = digits[0] if digits else None
print("passkey tokens start at", needle)

# %% [markdown]
# ## The estimator's view
# For a prefill chunk, the last 64 queries score every key with one fp32 softmax. Keys in earlier DCA chunks are
# scored with the *continuous-position* query variants (`q_succ_critical`, `q_inter_critical`), so diagonals keep
# their true distance across chunk boundaries. Column sums are the vertical scores, diagonal sums the slash scores.

# %%
VARIANTS = ("q_intra", "q_succ", "q_inter", "q_succ_critical", "q_inter_critical")


def query_variants(q, pos):
    """``[T, 5, H, D]`` rotations of unrotated queries ``q [T, H, D]`` at absolute positions ``pos``."""
    dp = dca_positions(pos, dca)
    return torch.stack([apply_rope(q.float(), *rope_cos_sin(dp[n], model.head_dim, model.theta)) for n in VARIANTS], 1)


layer = 1
q, k, v, pos, scale_len = captured[layer]
q5 = query_variants(q, pos)
logit_scale = float(yarn_logit_scale(torch.tensor([scale_len]), dca)[0])
n_est = 64
vert, slash = estimate_vs_ref(q5[-n_est:], k, pos[-n_est:], dca.chunk_len, model.sm_scale, logit_scale)

fig, axes = plt.subplots(2, 1, figsize=(8, 4.6))
for h in range(vert.shape[0]):
    axes[0].semilogy(vert[h].clamp(min=1e-9).numpy(), lw=0.6, label=f"head {h}")
    axes[1].semilogy(slash[h].clamp(min=1e-9).numpy(), lw=0.6, label=f"head {h}")
if needle is not None:
    axes[0].axvline(needle, color="k", ls="--", lw=0.8, label="passkey")
for b in range(dca.chunk_len, L, dca.chunk_len):
    axes[0].axvline(b, color="0.7", lw=0.5)
axes[0].set(title=f"layer {layer}: vertical score per key (grey: DCA chunk boundaries)", xlabel="key position")
axes[1].set(title="slash score per diagonal", xlabel="distance query - key")
axes[0].legend(fontsize=7, loc="upper right")
fig.tight_layout()
save(fig, "sparse_scores")

# %% [markdown]
# ## What the selection keeps
# Each head keeps its top `vertical` columns and top `slash` diagonals (the first 30 columns and the 100 nearest
# diagonals are always in). Diagonals become 64x64 tiles on the GPU; the map shows the keys each query attends
# under that rule (downsampled 16x: a pixel is lit if any of its 16x16 pairs is kept).

# %%
def keep_mask(vertical_budget, slash_budget, q_pos):
    h = vert.shape[0]
    budget = LayerBudget(torch.full((h,), vertical_budget), torch.full((h,), slash_budget), vertical_budget,
                         slash_budget)
    v_idx, s_idx = select_vertical_slash(vert.clone()[None], slash.clone()[None], torch.tensor([L]), budget)
    cov, _ = block_pattern(s_idx, torch.zeros(1, dtype=torch.bool), -(-L // 64))
    return pattern_mask_ref(cov[0], v_idx[0], q_pos, L), v_idx[0]


rows = torch.arange(L)
mask, v_idx = keep_mask(128, 256, rows)
causal = rows[None, :] <= rows[:, None]
m = (mask[:, 0] & causal).float()
ds = torch.nn.functional.max_pool2d(m[None, None], 16)[0, 0]
fig, ax = plt.subplots(figsize=(4.6, 4.6))
ax.imshow(ds.numpy(), cmap="Greys", interpolation="nearest")
ax.set(title=f"head 0 keeps {float(m.sum() / causal.sum()):.1%} of causal pairs", xlabel="key / 16", ylabel="query / 16")
save(fig, "sparse_pattern_map")
kept = set(v_idx[0][v_idx[0] != PAD].tolist())
if needle is not None:
    print("passkey columns kept by head 0:", [i for i in range(needle, needle + 6) if i in kept])

# %% [markdown]
# ## Recall against budget
# Attention recall of a query is `exp(lse_sparse - lse_dense)`: the share of its softmax mass inside the kept keys
# (`sgl_qwen1m.ops.sparse.reference.attention_recall`; FlashInfer's LSE is base 2, pass `base=2` for it).
# The paper's *sparsity refinement* raises a head's budget until its recall on 1M-token calibration prompts passes
# a threshold; here we sweep one budget for all heads of this layer on the last 512 queries.

# %%
tail = rows[-512:]
qv = q5[-512:, :3]
dense_o, dense_lse = dca_attention_ref(qv, k, v, tail, dca.chunk_len, model.sm_scale, logit_scale)
sweep = [(16, 32), (32, 64), (64, 128), (128, 256), (256, 512), (512, 1024)]
points = []
for vb, sb in sweep:
    mk, _ = keep_mask(vb, sb, tail)
    _, lse = dca_attention_ref(qv, k, v, tail, dca.chunk_len, model.sm_scale, logit_scale, key_mask=mk)
    rec = attention_recall(lse, dense_lse)
    frac = float((mk & (torch.arange(L)[None, None, :] <= tail[:, None, None])).float().mean()
                 / (torch.arange(L)[None, :] <= tail[:, None]).float().mean())
    points.append((vb, sb, frac, float(rec.mean()), float(rec.min())))
    print(f"vertical {vb:4d} slash {sb:4d}: keeps {frac:6.1%} of causal keys, recall mean {rec.mean():.4f} "
          f"min {rec.min():.4f}")
fig, ax = plt.subplots(figsize=(5.5, 3.4))
ax.plot([p[2] for p in points], [p[3] for p in points], "o-", label="mean over queries and heads")
ax.plot([p[2] for p in points], [p[4] for p in points], "s--", label="worst query")
for vb, sb, frac, mean, _ in points:
    ax.annotate(f"{vb}/{sb}", (frac, mean), fontsize=7, textcoords="offset points", xytext=(3, -10))
ax.set(xscale="log", xlabel="share of causal keys kept", ylabel="attention recall", title=f"layer {layer}, {L} tokens")
ax.axhline(0.99, color="0.6", lw=0.6)
ax.legend(fontsize=8)
save(fig, "sparse_recall_vs_budget")
assert points[-1][3] > points[0][3], "recall must grow with the budget"

# %% [markdown]
# ## A model trained on real text
# The tiny model above attends to what its two templates taught. Issue 17's text LM (107M parameters, Qwen2 with
# plain RoPE, trained from scratch at 2,048 tokens on Python package sources; model card in
# `docs/text-lm-and-refinement.md`) shows real heads. Its GPU run wrote two small files that this section reads
# (CPU mode); with a GPU and the trained model in `runs/lm/model` (`scripts/gpu/lm_chain.sh data,train`), it
# recomputes them first (GPU mode):
#
# * `maps_32k_*.json.gz` (`refine --maps`): every head's estimator scores at 32K tokens (16x the training length),
#   summed in log-spaced bins of key position (vertical) and of diagonal offset (slash);
# * `model/refined_32k.report.json*` (`refine`): each head's recall and attended keys at every budget step of the
#   refinement search, from the start (128 columns / 256 diagonals) until the head's mean recall reaches 0.95
#   (each step raises the vertical or the slash budget, whichever gains more recall per key).

# %%
import glob
import subprocess
import sys

from sgl_qwen1m.jsonout import load as read_json


LM_DIR = ROOT / "runs" / "lm"
if torch.cuda.is_available() and (LM_DIR / "model" / "config.json").exists() and __name__ == "__main__":
    lm_out = FIG_DIR / "text-lm"
    subprocess.run([sys.executable, "-m", "sgl_qwen1m", "refine", "--model", str(LM_DIR / "model"), "--calib",
                    str(LM_DIR / "data" / "train.bin"), "--length", "32768", "--num-seqs", "2", "--target", "0.95",
                    "--out", str(lm_out / "sparse_attention_config.json"),
                    "--maps", str(lm_out / "maps_32k_gpu.json.gz"),
                    "--device", "cuda"], check=True, cwd=ROOT)
    maps_files, report_files = [lm_out / "maps_32k_gpu.json.gz"], [lm_out / "sparse_attention_config.report.json"]
else:
    maps_files = sorted(glob.glob(str(ROOT / "benchmarks/results/text-lm-*/maps_32k_*.json.gz")))
    report_files = sorted(glob.glob(str(ROOT / "benchmarks/results/text-lm-*/model/refined_32k.report.json*")))
print("reading", [str(Path(f).relative_to(ROOT)) if str(f).startswith(str(ROOT)) else str(f)
                  for f in maps_files[-1:] + report_files[-1:]])

# %%
if maps_files:
    maps = read_json(maps_files[-1])
    edges = maps["bin_edges"]
    layers_m = maps["layers"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, kind in zip(axes, ("vertical", "slash")):
        grid = torch.tensor([row for lm in layers_m for row in lm[kind]])  # [layers * heads, bins]
        im = ax.imshow(grid.clamp_min(1e-5).log10(), aspect="auto", cmap="magma", vmin=-5, vmax=0)
        nh = len(layers_m[0][kind])
        ax.set_yticks([i * nh for i in range(len(layers_m))], [f"L{lm['layer']}" for lm in layers_m], fontsize=7)
        ticks = list(range(0, len(edges) - 1, 3))
        ax.set_xticks(ticks, [str(edges[i]) for i in ticks], fontsize=7, rotation=45)
        ax.set(xlabel=("key position" if kind == "vertical" else "offset query - key") + " (log bins, from)")
        ax.set_title(f"{kind}, {maps['prompt_tokens']:,} tokens: log10 share", fontsize=9)
    fig.colorbar(im, ax=axes, shrink=0.8)
    save(fig, "text_lm_score_maps")
    sink = [lm["vertical"][h][0] for lm in layers_m for h in range(len(lm["vertical"]))]
    local = [sum(lm["slash"][h][:8]) for lm in layers_m for h in range(len(lm["slash"]))]
    print(f"share of each head's score on key 0 (sink): median {sorted(sink)[len(sink) // 2]:.3f}; "
          f"on offsets < {edges[8]} (local): median {sorted(local)[len(local) // 2]:.3f}")
else:
    print("no committed score maps of the text LM (run scripts/gpu/lm_chain.sh refine on a GPU)")

# %%
if report_files:
    rep = read_json(report_files[-1])
    heads = rep["heads"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for h in heads:
        steps = [{"vertical": h["vertical_before"], "slash": h["slash_before"], "recall": h["recall_before"]}]
        steps += list(h.get("steps") or [])
        a1.plot([x["vertical"] + x["slash"] for x in steps], [x["recall"] for x in steps], lw=0.7, marker=".", ms=2,
                color=plt.cm.viridis(h["layer"] / max(1, max(x["layer"] for x in heads))))
    a1.axhline(rep["summary"]["target"], color="0.4", lw=0.6, ls="--")
    a1.set(xscale="log", xlabel="budget: vertical + slash keys per query", ylabel="head recall (mean)",
           title="refinement: recall vs budget, one line per head (color: layer)")
    order = sorted(range(len(heads)), key=lambda i: heads[i]["recall_before"])
    a2.bar(range(len(heads)), [heads[i]["recall_before"] for i in order], color="C3", label="start budgets")
    a2.plot(range(len(heads)), [heads[i]["recall_after"] for i in order], "k.", ms=3, label="refined")
    a2.axhline(rep["summary"]["target"], color="0.4", lw=0.6, ls="--")
    a2.set(xlabel="head (sorted by recall at the start)", ylabel="recall", ylim=(0, 1.02))
    a2.legend(fontsize=7)
    save(fig, "text_lm_recall_vs_budget")
    s = rep["summary"]
    print(f"heads below {s['target']}: {s['heads_below_target_before']} -> {s['heads_below_target_after']} of "
          f"{s['heads']}; smallest head recall {s['recall_min_over_heads_before']:.3f} -> "
          f"{s['recall_min_over_heads_after']:.3f}; keys per query {s['measured_keys_per_query_before']:.0f} -> "
          f"{s['measured_keys_per_query_after']:.0f}")
    assert s["heads_below_target_after"] == 0 and all(h["recall_after"] >= s["target"] for h in heads)
else:
    print("no committed refinement report of the text LM")

# %% [markdown]
# ## GPU mode
# With a CUDA GPU and SGLang installed, the same prompt runs through `--attention-backend qwen1m` with sparse
# prefill: a copy of the bundled model with 256 columns and 512 diagonals per head, sparse above 2,048 tokens
# (`python -m sgl_qwen1m model export-sparse-variant`). Not executed in CI. Run as a plain script
# (`python notebooks/03_sparse_patterns.py`), SGLang's spawned scheduler re-imports this file, hence the
# `__main__` guard (Jupyter needs none).

# %%
GPU = torch.cuda.is_available()
if GPU and __name__ == "__main__":
    import tempfile

    from sgl_qwen1m.api import launch_engine
    from sgl_qwen1m.model.spec import export_sparse_variant

    os.environ["QWEN1M_SPARSE_STATS"] = "1"  # the server logs layer 0's computed fraction per prefill chunk
    sparse_dir = export_sparse_variant(BUNDLED_MODEL_DIR, Path(tempfile.mkdtemp()) / "tiny-sparse", 256, 512, 2048)
    engine = launch_engine(str(sparse_dir), prompt_tokens=L + 64, mem_fraction_static=0.5,
                           log_level="warning")
    out = engine.generate(input_ids=ids, sampling_params={"max_new_tokens": 8, "temperature": 0})
    print(f"sparse prefill answer: {builder.decode(out['output_ids'])!r} (expected {answer!r})")
    engine.shutdown()
else:
    print("no CUDA GPU: skipped the Engine cell")
