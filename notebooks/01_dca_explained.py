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
# # Dual Chunk Attention, explained with a toy config
#
# Qwen2.5-1M models split the sequence into DCA chunks of `chunk_len = chunk_size - local_size` tokens
# (253,952 for the 1M models). Keys are rotated at `pos % chunk_len`; a query uses one of three rotations
# depending on whether the key is in its own chunk (**intra**), the previous chunk (**successive**) or an
# earlier one (**inter**). This notebook shows it on a toy config small enough to draw, using only the
# pure-torch math of `sgl_qwen1m` (no GPU). With `GPU = True` it also runs one request through SGLang.
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

from sgl_qwen1m.ops.dca.plan import RequestSpan, Stage, dca_positions, plan_extend, stage_of
from sgl_qwen1m.ops.dca.reference import dca_attention_ref
from sgl_qwen1m.config import DCAConfig

GPU = torch.cuda.is_available()
ROOT = Path.cwd() if (Path.cwd() / "pyproject.toml").exists() else Path.cwd().parent
# Figures land in benchmarks/results/notebooks/; CI points SGL_QWEN1M_FIG_DIR at a temporary folder instead.
FIG_DIR = Path(os.environ.get("SGL_QWEN1M_FIG_DIR") or ROOT / "benchmarks" / "results" / "notebooks")
FIG_DIR.mkdir(parents=True, exist_ok=True)


def save(fig, name):
    path = FIG_DIR / f"{name}.png"
    fig.savefig(path, dpi=72, bbox_inches="tight")
    print(f"saved {path.name} ({path.stat().st_size // 1024} KB)")


cfg = DCAConfig(chunk_size=10, local_size=2)  # toy: chunk_len = 8
print(f"GPU={GPU}; toy DCA config: chunk_size={cfg.chunk_size}, local_size={cfg.local_size}, chunk_len={cfg.chunk_len}")

# %% [markdown]
# ## Query and key positions
# Key positions wrap every `chunk_len` tokens. The intra query uses the same position as the key; the successive
# query is shifted by `chunk_len` (clamped at `chunk_size`); the inter query is a constant `2*chunk_len - 1`
# (clamped), so it always looks "far away" but never beyond what the model was trained on.

# %%
L = 32
pos = torch.arange(L)
p = dca_positions(pos, cfg)
fig, ax = plt.subplots(figsize=(6, 3.2))
for name, style in (("k", "k-"), ("q_intra", "C0--"), ("q_succ", "C1-"), ("q_inter", "C2-")):
    ax.step(pos, p[name], style, where="mid", label=name, lw=1.5)
ax.axhline(cfg.chunk_size, color="0.6", lw=0.8, ls=":")
ax.set_xlabel("absolute position")
ax.set_ylabel("RoPE position used")
ax.set_title(f"DCA positions (chunk_len={cfg.chunk_len}, chunk_size={cfg.chunk_size})")
ax.legend(fontsize=8, ncol=4, loc="upper center", bbox_to_anchor=(0.5, -0.2))
save(fig, "dca_positions")
plt.show()

# %% [markdown]
# ## Which rotation each (query, key) pair uses
# `stage_of` maps every causal pair to intra (0), successive (1) or inter (2).

# %%
q = pos[:, None]
k = pos[None, :]
stage = stage_of(q, k, cfg.chunk_len).float()
stage[k.expand(L, L) > q.expand(L, L)] = float("nan")  # not attended (causal mask)
fig, ax = plt.subplots(figsize=(4.2, 3.6))
cmap = matplotlib.colors.ListedColormap(["C0", "C1", "C2"])
im = ax.imshow(stage, cmap=cmap, vmin=-0.5, vmax=2.5, interpolation="nearest")
cbar = fig.colorbar(im, ticks=[0, 1, 2])
cbar.ax.set_yticklabels([s.name.lower() for s in Stage])
ax.set_xlabel("key position")
ax.set_ylabel("query position")
ax.set_title("DCA stage per (query, key)")
save(fig, "dca_stage_map")
plt.show()

# %% [markdown]
# ## Segment plan of a chunked prefill
# The backend never builds that matrix. `plan_extend` cuts each prefill chunk at DCA boundaries and emits
# rectangular *segments*: causal intra segments for one FlashInfer call, successive and inter segments for a second,
# non-causal call. Below: a 32-token prompt prefilled in chunks of 12 tokens (SGLang's `chunked_prefill_size`).

# %%
CHUNK = 12
fig, ax = plt.subplots(figsize=(4.2, 3.6))
colors = {Stage.INTRA: "C0", Stage.SUCC: "C1", Stage.INTER: "C2"}
seen = set()
for start in range(0, L, CHUNK):
    plan = plan_extend([RequestSpan(prefix_len=start, extend_len=min(CHUNK, L - start))], cfg)
    for seg in plan.intra + plan.cross:
        q0 = start + seg.q_start
        label = seg.stage.name.lower() if seg.stage not in seen else None
        seen.add(seg.stage)
        ax.add_patch(
            matplotlib.patches.Rectangle(
                (seg.kv_start - 0.5, q0 - 0.5), seg.kv_len, seg.q_len, facecolor=colors[seg.stage], alpha=0.45,
                edgecolor="k", lw=0.8, label=label,
            )
        )
    ax.axhline(start - 0.5, color="r", lw=1, ls="--")
    print(f"prefill chunk at {start:2d}: {len(plan.intra)} intra + {len(plan.cross)} cross segments")
ax.set_xlim(-0.5, L - 0.5)
ax.set_ylim(L - 0.5, -0.5)
ax.set_xlabel("key position")
ax.set_ylabel("query position")
ax.set_title(f"segments per prefill chunk of {CHUNK} (red);\nintra segments are causal")
ax.legend(fontsize=8, loc="lower left")
save(fig, "dca_segment_plan")
plt.show()

# %% [markdown]
# ## Below one chunk, DCA is plain causal attention
# While every position is `< chunk_len`, all pairs are intra and the keys and intra queries use their true positions,
# so DCA equals ordinary causal attention. Past `chunk_len` the successive/inter rotations take over and the
# two differ. `dca_attention_ref` is the fp32 oracle the GPU kernels are tested against.

# %%
torch.manual_seed(0)
H, HKV, D = 4, 2, 16
big = DCAConfig(chunk_size=80, local_size=16)  # chunk_len 64


def compare(n):
    qv = torch.randn(n, 3, H, D)  # three query variants: intra, successive, inter
    kk, vv = torch.randn(n, HKV, D), torch.randn(n, HKV, D)
    qp = torch.arange(n)
    dca, _ = dca_attention_ref(qv, kk, vv, qp, big.chunk_len, D**-0.5)
    plain, _ = dca_attention_ref(qv[:, :1], kk, vv, qp, None, D**-0.5)
    return (dca - plain).abs().max().item()


below, above = compare(big.chunk_len), compare(3 * big.chunk_len)
print(f"max |DCA - causal| with {big.chunk_len} tokens (= chunk_len): {below:.2e}")
print(f"max |DCA - causal| with {3 * big.chunk_len} tokens (3 chunks):  {above:.2e}")
assert below < 1e-6 and above > 1e-3

# %% [markdown]
# ## GPU mode
# With a CUDA GPU and SGLang installed, the same model runs through the `qwen1m` backend. Not executed in CI.

# %%
if GPU:
    from sgl_qwen1m.api import launch_engine

    MODEL = os.environ.get("SGL_QWEN1M_MODEL", "Qwen/Qwen2.5-7B-Instruct-1M")
    engine = launch_engine(MODEL, prompt_tokens=32_768)
    print(engine.generate("Dual chunk attention is", {"max_new_tokens": 16})["text"])
    engine.shutdown()
else:
    print("no CUDA GPU: skipped the Engine cell")
