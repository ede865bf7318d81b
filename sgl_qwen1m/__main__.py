"""``python -m sgl_qwen1m``: the package's command line.

python -m sgl_qwen1m demo                         # GPU + SGLang: qwen1m DCA vs flashinfer RoPE at 1x-16x
python -m sgl_qwen1m demo --device cpu            # pure-torch reference path, small lengths
python -m sgl_qwen1m demo --multiples 1,8 --samples 50 --out benchmarks/results/demo.json
"""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def _engine_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key.replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.replace("-", "_")] = value
    return out


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sgl_qwen1m", description="sgl_qwen1m command line")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="retrieval accuracy past the training length: DCA vs plain RoPE")
    d.add_argument("--device", default="auto", help="auto | cpu | cuda (auto: SGLang on a GPU, else the reference)")
    d.add_argument("--samples", type=int, default=None, help="prompts per task and length (GPU 20, CPU 2)")
    d.add_argument(
        "--multiples",
        type=_floats,
        default=None,
        help="lengths as multiples of the training length (GPU 1,4,8,16; CPU 1,2,4)",
    )
    d.add_argument("--tasks", default=None, help="comma-separated (default passkey, what the bundled model was trained on; also niah_single, niah_multikey, niah_multivalue, variable_tracking)")
    d.add_argument("--model", default=None, help="model directory (default: the bundled sgl_qwen1m/data/tiny-dca)")
    d.add_argument("--reference", action="store_true", help="use the pure-torch reference even on a GPU")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--out", default=None, help="write a results JSON (e.g. benchmarks/results/demo.json)")
    d.add_argument(
        "--engine-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sglang.Engine argument, JSON value (repeatable), e.g. disable_cuda_graph=true",
    )
    args = p.parse_args(argv)
    if args.cmd == "demo":
        from sgl_qwen1m.evals.demo import run_demo

        run_demo(
            device=args.device,
            samples=args.samples,
            multiples=args.multiples,
            tasks=args.tasks.split(",") if args.tasks else None,
            model_dir=args.model,
            out=args.out,
            seed=args.seed,
            reference=args.reference,
            engine_kwargs=_engine_args(args.engine_arg),
        )


if __name__ == "__main__":
    main()
