"""The README's main job: retrieval accuracy of the bundled model far past its training length, DCA vs plain RoPE.

On a GPU with SGLang: two ``sglang.Engine`` s on the bundled model, one with ``attention_backend="qwen1m"``
(dense DCA) and one on a copy without ``dual_chunk_attention_config`` served by ``flashinfer`` (plain RoPE).
Elsewhere: the same prompts through the pure-torch reference (:class:`TorchRunner`), DCA vs RoPE, at lengths a
CPU finishes in a minute or two. Without trained weights it stops and says how to train them.
"""

from __future__ import annotations

import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from sgl_qwen1m.evals.harness import aggregate, evaluate, format_table, make_samples, prompt_length, write_results
from sgl_qwen1m.evals.runners import EngineRunner, TorchRunner
from sgl_qwen1m.model.tasks import TaskBuilder
from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR, export_rope_variant, read_config, require_weights, train_length

__all__ = ["GPU_DEFAULTS", "CPU_DEFAULTS", "choose_path", "run_demo"]

# The bundled model was trained on passkey only (sgl_qwen1m/data/tiny-dca/README.md); --tasks runs the others.
GPU_DEFAULTS: dict[str, Any] = {"tasks": ("passkey",), "multiples": (1, 4, 8, 16), "samples": 20}
CPU_DEFAULTS: dict[str, Any] = {"tasks": ("passkey",), "multiples": (1, 2, 4), "samples": 2}


def _sglang_available() -> bool:
    from importlib.util import find_spec

    return find_spec("sglang") is not None


def choose_path(device: str, reference: bool = False) -> tuple[str, str]:
    """``(path, torch_device)``: path is ``"sglang"`` (Engines) or ``"reference"`` (pure torch)."""
    import torch

    if device not in ("auto", "cpu", "cuda"):
        raise SystemExit(f"--device must be auto, cpu or cuda, got {device!r}")
    cuda = torch.cuda.is_available()
    if device == "cuda" and not cuda:
        raise SystemExit("--device cuda: no CUDA device is visible to torch")
    dev = "cuda" if (device == "cuda" or (device == "auto" and cuda)) else "cpu"
    if dev == "cuda" and not reference and _sglang_available():
        return "sglang", dev
    return "reference", dev


def run_demo(
    device: str = "auto",
    samples: Optional[int] = None,
    multiples: Optional[Sequence[float]] = None,
    tasks: Optional[Sequence[str]] = None,
    model_dir: Union[str, Path, None] = None,
    out: Union[str, Path, None] = None,
    seed: int = 0,
    reference: bool = False,
    engine_kwargs: Optional[dict[str, Any]] = None,
) -> list[dict[str, Any]]:
    """Run the demo, print the table, return the accuracy rows (and write them to ``out`` if given)."""
    model = require_weights(model_dir or BUNDLED_MODEL_DIR)
    path, dev = choose_path(device, reference)
    defaults = GPU_DEFAULTS if path == "sglang" else CPU_DEFAULTS
    tasks = tuple(tasks or defaults["tasks"])
    multiples = tuple(multiples or defaults["multiples"])
    samples = samples or defaults["samples"]
    train_len = train_length(read_config(model))
    longest = prompt_length(max(multiples), train_len)
    if path == "sglang":
        print(
            f"SGLang path on {dev}: Engine(attention_backend='qwen1m') on the bundled DCA model vs "
            "Engine(attention_backend='flashinfer') on the same weights without dual_chunk_attention_config."
        )
    else:
        print(
            f"Reference path (pure torch, fp32, {dev}), NOT SGLang: the same model with DCA vs with plain RoPE."
            + ("" if dev == "cuda" else " Small lengths so a CPU finishes in minutes; use a GPU for 8x-16x.")
        )
    print(
        f"model {model} (trained at {train_len} tokens); tasks {', '.join(tasks)}; "
        f"multiples {', '.join(f'{m:g}' for m in multiples)} (up to {longest} prompt tokens); {samples} per cell"
    )
    builder = TaskBuilder()
    work = make_samples(tasks, multiples, samples, train_len, seed=seed, builder=builder)
    t0 = time.time()
    records = []
    with tempfile.TemporaryDirectory(prefix="sgl_qwen1m-rope-") as tmp:
        if path == "sglang":
            kw = {"context_length": longest + 256, "mem_fraction_static": 0.4, **(engine_kwargs or {})}
            rope_dir = export_rope_variant(model, tmp)
            specs = [(model, "qwen1m", "qwen1m-dense"), (rope_dir, "flashinfer", "flashinfer-rope")]
            runners = [lambda m=m, b=b, n=n: EngineRunner(m, b, name=n, **kw) for m, b, n in specs]
            labels = ["DCA (qwen1m)", "RoPE (flashinfer)"]
        else:
            runners = [
                lambda: TorchRunner(model, device=dev, use_dca=True, name="reference-dca"),
                lambda: TorchRunner(model, device=dev, use_dca=False, name="reference-rope"),
            ]
            labels = ["DCA (reference)", "RoPE (reference)"]
        names = []
        for make in runners:
            runner = make()
            try:
                records += evaluate(runner, work, builder)
            finally:
                runner.close()
            names.append(runner.name)
    rows = aggregate(records)
    print()
    print(format_table(rows, names, labels))
    print(
        f"\n{len(records)} prompts in {time.time() - t0:.0f}s. Accuracy = exact match of the greedy answer "
        "(fraction of values found for niah_multivalue)."
    )
    if out:
        cmd = "python -m sgl_qwen1m " + " ".join(shlex.quote(a) for a in sys.argv[1:])
        print(f"wrote {write_results(out, rows, cmd, records)}")
    return rows
