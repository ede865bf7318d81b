"""The one command line, ``python -m sgl_qwen1m <verb>``; each package defines its own verbs' arguments.

    python -m sgl_qwen1m demo [--device cpu]            # DCA vs plain RoPE past the training length (evals/cli.py)
    python -m sgl_qwen1m eval {run,agree} ...           # accuracy harness (evals/cli.py)
    python -m sgl_qwen1m bench {e2e,serve-smoke,reliability,ops-decode,ops-sparse,plot,plan} ...   # (bench/cli.py)
    python -m sgl_qwen1m train --out DIR ...            # train the tiny model (model/cli.py, model/train.py)
    python -m sgl_qwen1m train-lm --roots ... --data D --out DIR   # small LM on real text (model/text_lm.py)
    python -m sgl_qwen1m model {export-rope-variant,export-sparse-variant,info,write-config} ...   (model/cli.py)
    python -m sgl_qwen1m plan --lengths 128K,1M         # FLOP floor + memory split, no GPU (= bench plan)
    python -m sgl_qwen1m refine --calib F --length N --out F   # sparsity refinement (refine/cli.py)
    python -m sgl_qwen1m sparse-work --model DIR --calib F --lengths N   # sparse kernel work (refine/work_cli.py)

``python -m sgl_qwen1m.bench ...`` is kept as ``python -m sgl_qwen1m bench ...`` (committed results record it).
Every leaf parser sets ``handler(ns, argv) -> int`` (``argv``: the words after the verb); :func:`main` calls it
and prints a :class:`sgl_qwen1m.args.CommandError` as ``<prog> <verb>: error: ...`` (exit 1, no traceback).
Building the parser imports no SGLang, torch or Triton.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, Optional, Sequence

from sgl_qwen1m.args import CommandError
from sgl_qwen1m.bench import cli as bench_cli
from sgl_qwen1m.evals import cli as evals_cli
from sgl_qwen1m.model import cli as model_cli
from sgl_qwen1m.refine import cli as refine_cli
from sgl_qwen1m.refine import work_cli

__all__ = ["build_parser", "main"]

VERBS = ("demo", "eval", "bench", "train", "train-lm", "model", "plan", "refine", "sparse-work")


def _reference_accuracy(*args: Any) -> list:
    from sgl_qwen1m.evals.harness import reference_accuracy

    return reference_accuracy(*args)


def _retrieval_probe(*args: Any, **kw: Any) -> Any:
    from sgl_qwen1m.evals.longtext import retrieval_probe

    return retrieval_probe(*args, **kw)


def build_parser() -> argparse.ArgumentParser:
    """The whole tree: ``demo``, ``eval``, ``bench``, ``train``, ``model``, ``plan``."""
    p = argparse.ArgumentParser(
        prog="python -m sgl_qwen1m",
        description="sgl_qwen1m: million-token Qwen DCA serving on SGLang (plugin, accuracy, benchmarks, planner)",
    )
    sub = p.add_subparsers(required=True, metavar="{" + ",".join(VERBS) + "}")
    evals_cli.register(sub)  # demo, eval
    bench_cli.register(sub)  # bench
    model_cli.register(sub, evaluate=_reference_accuracy, lm_probe=_retrieval_probe)  # train, train-lm, model
    bench_cli.register_plan(sub)  # plan
    refine_cli.register(sub)  # refine
    work_cli.register(sub)  # sparse-work
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the chosen verb, return its exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    ns = parser.parse_args(args)
    handler = vars(ns).pop("handler")
    try:
        return handler(ns, args[1:]) or 0
    except CommandError as e:  # a clear message, no traceback
        verbs = " ".join(a for a in args[:2] if not a.startswith("-"))
        print(f"{parser.prog} {verbs}: error: {e}", file=sys.stderr)
        return e.exit_code
