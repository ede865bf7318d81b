"""Shared by the example programs: pick an engine and make it SGLang's default frontend backend.

``--engine reference`` (default without a GPU): the package's fp32 torch model on the CPU.
``--engine sglang``: ``sgl.Engine`` with ``--attention-backend qwen1m`` (GPU).
Both serve the bundled tiny DCA model unless ``--model`` names another directory.
"""

from __future__ import annotations

import argparse
from typing import Any

import sglang as sgl

from sgl_qwen1m.frontend import ReferenceEngine, engine_backend
from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR, read_config, train_length


def parser(description: str) -> argparse.ArgumentParser:
    import torch

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--engine", choices=("reference", "sglang"), default="sglang" if torch.cuda.is_available() else "reference")
    p.add_argument("--model", default=str(BUNDLED_MODEL_DIR))
    p.add_argument("--seed", type=int, default=0)
    return p


def start(kind: str, model: str, multiple: float) -> Any:
    """Start the engine for prompts up to ``multiple`` x the model's training length (+256 tokens to answer) and
    install it as the frontend's default backend; returns the engine."""
    prompt_tokens = int(multiple * train_length(read_config(model))) + 256
    if kind == "reference":
        engine = ReferenceEngine(model)
    else:
        from sgl_qwen1m.api import launch_engine

        engine = launch_engine(model, prompt_tokens=prompt_tokens, mem_fraction_static=0.5)
    sgl.set_default_backend(engine_backend(engine, model))
    return engine
