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
# # Quickstart: serve a long-context model, then run a program on it
#
# 1. Ask the planner whether a prompt fits and with which settings.
# 2. Start an engine: on a GPU, `sgl.Engine` with `--attention-backend qwen1m` (the `sgl_qwen1m` plugin); on a CPU,
#    the package's pure-torch reference of the same model.
# 3. Run an SGLang frontend program (`@sgl.function`) on it, in this process: no server needed.
#
# The model is the bundled tiny DCA model (trained at 1,024 tokens, good at passkey retrieval); swap in
# `Qwen/Qwen2.5-7B-Instruct-1M` on a real GPU. Stored as a jupytext percent-format `.py` file;
# `tests/test_notebooks.py` executes it on the CPU.
#
# **Needs SGLang importable** (the frontend language): on a GPU `pip install -e ".[serve,notebook]"`; on a CPU the
# light SGLang set of `bash scripts/setup-cpu.sh` (the CPU branch runs the torch reference, no GPU, no FlashInfer).

# %%
import os

import sglang as sgl
import torch

from sgl_qwen1m.api import plan_memory_for
from sgl_qwen1m.evals.harness import make_samples
from sgl_qwen1m.model.tasks import TaskBuilder
from sgl_qwen1m.frontend import ReferenceEngine, engine_backend
from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR

GPU = torch.cuda.is_available()
MODEL = os.environ.get("SGL_QWEN1M_MODEL", str(BUNDLED_MODEL_DIR))
print(f"GPU={GPU}, model {MODEL}")

# %% [markdown]
# ## 1. Does it fit?
# The planner needs no GPU. For the real 7B-1M model on one H100 at 600K tokens:

# %%
print(plan_memory_for(600_000, "qwen2.5-7b-1m", gpu_gib="h100"))

# %% [markdown]
# ## 2. Start an engine
# `launch_engine` starts `sgl.Engine` with the `qwen1m` backend and long-context settings from the planner. In a
# notebook it works directly; in a script put it under `if __name__ == "__main__":` (SGLang spawns its scheduler).

# %%
if GPU and __name__ == "__main__":
    from sgl_qwen1m.api import launch_engine

    engine = launch_engine(MODEL, prompt_tokens=8192 + 256, mem_fraction_static=0.5)
else:
    engine = ReferenceEngine(MODEL)
    print("no CUDA GPU: skipped the Engine cell; using the CPU reference engine")
sgl.set_default_backend(engine_backend(engine, MODEL))

# %% [markdown]
# ## 3. A long-context program
# A passkey hidden in a long haystack, asked at the end. `run_batch` sends several prompts at once.

# %%
@sgl.function
def passkey(s, prompt):
    s += prompt
    s += sgl.gen("answer", max_tokens=8, temperature=0, stop=".")


multiples = [1.0, 4.0] if GPU else [1.0, 2.0]
work = make_samples(["passkey"], multiples, 2, 1024, seed=0, builder=TaskBuilder())
states = passkey.run_batch([{"prompt": smp.prompt_text} for _, smp in work], progress_bar=False)
for (mult, smp), st in zip(work, states):
    print(f"x{mult:g} ({len(smp.prompt_ids)} tokens): answer {st['answer'].strip()!r}, expected {smp.answers[0]!r}")

# %%
engine.shutdown()
