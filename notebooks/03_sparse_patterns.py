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
from sgl_qwen1m.model.tasks import TaskBuilder
from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR, read_config, train_length
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2, apply_rope, rope_cos_sin

ROOT = Path.cwd() if (Path.cwd() / "pyproject.toml").exists() else Path.cwd().parent
FIG_DIR = Path(os.environ.get("SGL_QWEN1M_FIG_DIR") or ROOT / "benchmarks" / "results" / "notebooks")
FIG_DIR.mkdir(parents=True, exist_ok=True)
torch.manual_seed(0)


def save(fig, name):
    path = FIG_DIR / f"{name}.png"
    fig.savefig(path, dpi=72, bbox_inches="tight")
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
