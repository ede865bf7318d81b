"""Arguments of ``python -m sgl_qwen1m demo`` and ``python -m sgl_qwen1m eval {run,agree,longtext,longtext-plot}``: :func:`register`.

    python -m sgl_qwen1m demo                         # GPU + SGLang: qwen1m DCA vs flashinfer RoPE at 1x-16x
    python -m sgl_qwen1m demo --device cpu            # pure-torch reference path, small lengths
    python -m sgl_qwen1m demo --multiples 1,8 --samples 50 --out benchmarks/results/tiny-model-accuracy/demo.json

    # SGLang Engine, qwen1m dense DCA, on the bundled model (GPU host)
    python -m sgl_qwen1m eval run --runner engine --attention-backend qwen1m --backend-name qwen1m-dense \\
        --multiples 1,4,8,16 --samples 20 --out benchmarks/results/acc-qwen1m.json
    # plain-RoPE baseline: a copy without dual_chunk_attention_config, stock FlashInfer
    python -m sgl_qwen1m model export-rope-variant --out /tmp/tiny-rope
    python -m sgl_qwen1m eval run --runner engine --model /tmp/tiny-rope --attention-backend flashinfer \\
        --backend-name flashinfer-rope --multiples 1,4,8,16 --samples 20 --out benchmarks/results/acc-rope.json
    # a running server (python -m sglang.launch_server --model-path ... --attention-backend qwen1m)
    python -m sgl_qwen1m eval run --runner http --url http://127.0.0.1:30000 --backend-name qwen1m-dense
    # pure-torch reference (CPU or CUDA)
    python -m sgl_qwen1m eval run --runner torch --device cpu --multiples 1,2 --samples 2
    # greedy agreement: SGLang Engine vs the torch reference on the same prompts (GPU host)
    python -m sgl_qwen1m eval agree --attention-backend qwen1m --multiples 1,4,8 --samples 10 --device cuda
"""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from sgl_qwen1m.args import CommandError, key_value, positive_floats, positive_int
from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR
from sgl_qwen1m.evals import longtext, longtext_plot
from sgl_qwen1m.model.tasks import TASKS

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add the ``demo`` and ``eval`` verbs; every leaf parser sets ``handler(ns, argv) -> int``."""
    d = subparsers.add_parser("demo", help="retrieval accuracy past the training length: DCA vs plain RoPE")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: SGLang on a GPU, else the reference)")
    d.add_argument("--samples", type=positive_int, default=None, help="prompts per task and length (GPU 20, CPU 2)")
    d.add_argument(
        "--multiples",
        type=positive_floats,
        default=None,
        help="lengths as multiples of the training length (GPU 1,4,8,16; CPU 1,2,4)",
    )
    d.add_argument(
        "--tasks",
        type=task_list,
        default=None,
        help="comma-separated (default passkey, what the bundled model was trained on; also niah_single, "
        "niah_multikey, niah_multivalue, variable_tracking)",
    )
    d.add_argument("--model", default=None, help="model directory (default: the bundled sgl_qwen1m/data/tiny-dca)")
    d.add_argument("--reference", action="store_true", help="use the pure-torch reference even on a GPU")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default=None, help="write a results JSON (e.g. benchmarks/results/tiny-model-accuracy/demo.json)")
    d.add_argument(
        "--engine-arg",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sglang.Engine argument, JSON value (repeatable), e.g. disable_cuda_graph=true",
    )
    d.set_defaults(handler=_run_demo)

    e = subparsers.add_parser("eval", help="accuracy harness: one backend (run) or an Engine vs the reference (agree)")
    sub = e.add_subparsers(required=True, metavar="{run,agree,longtext,longtext-plot}")
    r = sub.add_parser("run", help="accuracy of one backend")
    _common(r)
    r.add_argument("--runner", choices=("torch", "engine", "http"), default="torch")
    r.add_argument("--backend-name", default=None, help="row label (default per runner)")
    r.add_argument("--rope", action="store_true", help="torch runner: plain RoPE even if the config has DCA")
    r.add_argument("--url", default="http://127.0.0.1:30000")
    r.set_defaults(handler=_run_eval, agree=False)
    longtext.register(sub)  # real-text LM: perplexity by position + code retrieval (evals/longtext.py)
    longtext_plot.register(sub)  # and its figure (evals/longtext_plot.py)
    a = sub.add_parser("agree", help="greedy agreement of an SGLang Engine and the torch reference")
    _common(a)
    a.set_defaults(handler=_run_eval, agree=True)


def task_list(text: str) -> list[str]:
    """``"passkey,niah_single"`` -> names, each one of :data:`TASKS` (argparse type: a bad name is a usage error)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in names if t not in TASKS]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"unknown task(s) {bad or text!r}; choose from {','.join(TASKS)}")
    return names


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=str(BUNDLED_MODEL_DIR), help="model directory (default: bundled tiny-dca)")
    p.add_argument("--tasks", type=task_list, default=list(TASKS), help=f"comma list of {','.join(TASKS)}")
    p.add_argument("--multiples", type=positive_floats, default=[1.0, 2.0], help="multiples of the training length")
    p.add_argument("--samples", type=positive_int, default=5, help="prompts per task and multiple (> 0)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu", help="torch runner device")
    p.add_argument("--attention-backend", default="qwen1m", help="engine runner backend")
    p.add_argument("--engine-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="results JSON path (benchmarks/results/...)")


def _run_demo(args: argparse.Namespace, argv: list[str]) -> int:
    from sgl_qwen1m.evals.demo import run_demo

    same_name = {k: getattr(args, k) for k in ("device", "samples", "multiples", "tasks", "out", "seed", "reference")}
    run_demo(model_dir=args.model, engine_kwargs=dict(args.engine_arg), **same_name)
    return 0


def _engine(args: argparse.Namespace, name: str, longest: int) -> Any:
    from sgl_qwen1m.evals.runners import EngineRunner

    kw: dict[str, Any] = {"context_length": longest + 256, **dict(args.engine_arg)}
    return EngineRunner(args.model, args.attention_backend, name=name, **kw)


def _run_eval(args: argparse.Namespace, argv: list[str]) -> int:
    from sgl_qwen1m.evals.harness import aggregate, agreement_rows, evaluate, format_table, make_samples, write_results
    from sgl_qwen1m.evals.runners import HttpRunner, TorchRunner
    from sgl_qwen1m.model.spec import read_config, require_weights, train_length
    from sgl_qwen1m.model.tasks import TaskBuilder

    require_weights(args.model)
    train_len = train_length(read_config(args.model))
    builder = TaskBuilder()
    if not args.agree and args.runner == "http":
        HttpRunner(args.url).check_reachable()  # before building prompts: a clear error naming the URL
    work = make_samples(args.tasks, args.multiples, args.samples, train_len, args.seed, builder)
    longest = max(len(s.prompt_ids) for _, s in work)
    if not args.agree:
        if args.runner == "torch":
            runner: Any = TorchRunner(
                args.model, device=args.device, use_dca=False if args.rope else None, name=args.backend_name
            )
        elif args.runner == "engine":
            runner = _engine(args, args.backend_name or args.attention_backend, longest)
        else:
            runner = HttpRunner(args.url, name=args.backend_name or "http")
        try:
            records = evaluate(runner, work, builder)
        finally:
            runner.close()
        rows = aggregate(records)
        if args.runner == "engine":  # the KV pool's element type, so FP8 and bf16 rows can stand side by side
            from sgl_qwen1m.sizing import kv_dtype_label

            kv = kv_dtype_label(dict(args.engine_arg).get("kv_cache_dtype"), args.model)
            for row in rows:
                row["kv_dtype"] = kv
        print(format_table(rows, [runner.name]))
    else:
        engine = _engine(args, f"{args.attention_backend}-engine", longest)
        try:
            rec_e = evaluate(engine, work, builder)
        finally:
            engine.close()
        rec_t = evaluate(TorchRunner(args.model, device=args.device), work, builder)
        rows = aggregate(rec_e + rec_t) + agreement_rows(rec_e, rec_t)
        records = rec_e + rec_t
        print(format_table(rows, [engine.name, rec_t[0].backend]))
        for row in rows:
            if row["metric"] == "greedy_agreement":
                print(
                    f"agreement {row['task']:<18} x{row['length_multiple']}: {100 * row['value']:.1f}% "
                    f"of {row['samples']}"
                )
    if args.out:
        cmd = "python -m sgl_qwen1m eval " + " ".join(shlex.quote(x) for x in argv)
        print(f"wrote {write_results(args.out, rows, cmd, records)}")
    return 0
