"""Arguments of ``python -m sgl_qwen1m train`` and ``python -m sgl_qwen1m model ...``: :func:`register`.

python -m sgl_qwen1m model export-rope-variant --out /tmp/tiny-rope   # copy without dual_chunk_attention_config
python -m sgl_qwen1m model export-sparse-variant --out /tmp/tiny-sparse --vertical 128 --slash 256 --threshold 2048
python -m sgl_qwen1m model info                                      # shapes, parameter count, weight size
python -m sgl_qwen1m model write-config --out DIR [--seq-len 4096]    # config + tokenizer, no weights
python -m sgl_qwen1m train --out /tmp/smoke --steps 20 --seq-len 256 --device cpu   # see sgl_qwen1m.model.train
python -m sgl_qwen1m train-lm --roots DIR,DIR --data DATA --out DIR [--preset gpu|smoke]   # sgl_qwen1m.model.text_lm
"""

from __future__ import annotations

import argparse
import functools
import json
from typing import Any, Callable, Optional

from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR

__all__ = ["register", "TRAIN_DESCRIPTION"]

TRAIN_DESCRIPTION = "Train the bundled tiny DCA model from scratch on synthetic long-context retrieval."


def register(subparsers: Any, evaluate: Optional[Callable[..., list]] = None,
             lm_probe: Optional[Callable[..., Any]] = None) -> None:
    """Add the ``train`` and ``model`` verbs; every leaf parser sets ``handler(ns, argv) -> int``.

    ``evaluate`` is the accuracy check run on the trained model (``--eval-samples``), see
    :func:`sgl_qwen1m.model.train.train`; the model package cannot import the harness, so the caller passes it.
    ``lm_probe(data_dir, seq_len, samples)`` makes ``train-lm --probe-every``'s probe
    (:func:`sgl_qwen1m.evals.longtext.retrieval_probe`), passed in for the same reason.
    """
    _train_arguments(subparsers.add_parser("train", help=TRAIN_DESCRIPTION, description=TRAIN_DESCRIPTION))
    subparsers.choices["train"].set_defaults(handler=functools.partial(_run_train, evaluate=evaluate))

    _train_lm_arguments(subparsers)
    subparsers.choices["train-lm"].set_defaults(handler=functools.partial(_run_train_lm, lm_probe=lm_probe))
    m = subparsers.add_parser("model", help="utilities around a model directory (variants, info, config)")
    sub = m.add_subparsers(required=True, metavar="{export-rope-variant,export-sparse-variant,info,write-config}")
    e = sub.add_parser("export-rope-variant", help="copy a model dir with the DCA config removed (RoPE baseline)")
    e.add_argument("--model", default=str(BUNDLED_MODEL_DIR))
    e.add_argument("--out", required=True)
    e.set_defaults(handler=_run_export_rope)
    sp = sub.add_parser("export-sparse-variant", help="copy a model dir with uniform sparse-prefill budgets")
    sp.add_argument("--model", default=str(BUNDLED_MODEL_DIR))
    sp.add_argument("--out", required=True)
    sp.add_argument("--vertical", type=int, default=128, help="vertical_size of every head (%(default)s)")
    sp.add_argument("--slash", type=int, default=256, help="slash_size of every head (%(default)s)")
    sp.add_argument("--threshold", type=int, default=2048, help="sparse_attention_threshold (%(default)s)")
    sp.add_argument("--budgets", default=None, help="per-head budgets file to copy instead (e.g. refine's output)")
    sp.set_defaults(handler=_run_export_sparse)
    i = sub.add_parser("info", help="print the model's shape, parameter count and weight size")
    i.add_argument("--model", default=str(BUNDLED_MODEL_DIR))
    i.set_defaults(handler=_run_info)
    w = sub.add_parser("write-config", help="write config.json + tokenizer files (no weights)")
    w.add_argument("--out", required=True)
    w.add_argument("--seq-len", type=int, default=4096)
    w.set_defaults(handler=_run_write_config)


def _train_lm_arguments(subparsers: Any) -> None:
    """The ``train-lm`` verb (:mod:`sgl_qwen1m.model.text_lm`); ``--preset`` fills every size argument not given."""
    desc = "Pretrain a small Qwen2 LM (plain RoPE) on Python package sources/docs; writes a servable model dir."
    p = subparsers.add_parser("train-lm", help=desc, description=desc)
    p.add_argument("--roots", default=None, help="comma-separated directories to collect .py/.md/.rst files from")
    p.add_argument("--data", required=True, help="data directory (built from --roots unless it has manifest.json)")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--preset", choices=("gpu", "smoke"), default="gpu", help="sizes (text_lm.PRESETS; %(default)s)")
    p.add_argument("--data-only", action="store_true", help="build the data set (and tokenizer) and stop")
    for name in ("layers", "heads", "kv_heads", "intermediate", "seq_len", "vocab", "batch", "micro_batch", "steps"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--heldout-pct", type=float, default=2.0, help="share of files held out, in %% (%(default)s)")
    p.add_argument("--eval-windows", type=int, default=64, help="held-out windows for in-length perplexity")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--probe-every", type=int, default=0, help="every N steps (and at the end), code retrieval at "
                   "the training length on held-out text, logged in training_log.json (0: off)")
    p.add_argument("--probe-samples", type=int, default=20, help="prompts per retrieval style of each probe")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="default cuda if available, else cpu")
    p.set_defaults(handler=_run_train_lm)


def _run_train_lm(ns: argparse.Namespace, argv: list[str], lm_probe: Optional[Callable[..., Any]] = None) -> int:
    import torch

    from sgl_qwen1m.args import CommandError
    from sgl_qwen1m.model.text_lm import PRESETS, train_lm

    for k, v in PRESETS[ns.preset].items():
        if getattr(ns, k) is None:
            setattr(ns, k, v)
    ns.device = ns.device or ("cuda" if torch.cuda.is_available() else "cpu")
    ns.command = "python -m sgl_qwen1m train-lm " + " ".join(argv)
    try:
        if ns.probe_every < 0 or ns.probe_samples < 1:
            raise ValueError(f"--probe-every must be >= 0 and --probe-samples >= 1, got {ns.probe_every} and "
                             f"{ns.probe_samples}")
        probe = None
        if ns.probe_every and not ns.data_only:
            if lm_probe is None:
                raise ValueError("--probe-every: no retrieval probe available (run through python -m sgl_qwen1m)")
            made: dict[str, Any] = {}

            def probe(model: Any) -> Any:  # built on first use: the data set may not exist yet
                if "p" not in made:
                    made["p"] = lm_probe(ns.data, ns.seq_len, ns.probe_samples, seed=ns.seed)
                return made["p"](model)

        train_lm(ns, probe)
    except (ValueError, FileNotFoundError) as e:
        raise CommandError(str(e)) from None
    return 0


def _train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="model directory to write (config, tokenizer, model.safetensors)")
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--seq-len", type=int, default=4096, help="training length = DCA chunk_size")
    p.add_argument("--min-len", type=int, default=None, help="shortest sampled length (default seq_len/16, >=128)")
    p.add_argument("--device", default=None, help="default cuda if available, else cpu")
    p.add_argument("--tokens-per-step", type=int, default=None, help="default 131072 on CUDA, 4096 on CPU")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=None, help="default steps/20")
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--other-weight", type=float, default=0.0, help="loss weight of non-answer tokens")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--workers", type=int, default=None, help="data workers (default 8 on CUDA, 0 on CPU); the stream depends on it"
    )
    p.add_argument(
        "--tasks", default=None, help="training mix (default: all of train.DEFAULT_MIX; eval uses all but copy)"
    )
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--heads", type=int, default=2)
    p.add_argument("--kv-heads", type=int, default=1)
    p.add_argument("--intermediate", type=int, default=288)
    p.add_argument("--rope-theta", type=float, default=10000.0)
    p.add_argument("--init", default=None, help="start from this model directory's weights (same shape)")
    p.add_argument("--ramp", type=float, default=0.3, help="fraction of steps over which the length grows")
    p.add_argument(
        "--dca-aug",
        type=float,
        default=0.5,
        help="share of steps run through DCA with a chunk shorter than the sequence (0: plain only)",
    )
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--eval-samples", type=int, default=20, help="per task and multiple after training (0: skip)")
    p.add_argument(
        "--eval-multiples",
        default=None,
        help="torch-reference DCA eval lengths (default 1,8 on CUDA, 1 on CPU), multiples of --seq-len",
    )


def _run_train(args: argparse.Namespace, argv: list[str], evaluate: Optional[Callable[..., list]]) -> int:
    import torch

    from sgl_qwen1m.model.train import DEFAULT_MIX, train

    args.tasks = args.tasks or ",".join(DEFAULT_MIX)
    args.device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = args.device.startswith("cuda")
    args.min_len = args.min_len or max(128, args.seq_len // 16)
    args.tokens_per_step = args.tokens_per_step or (131072 if cuda else 4096)
    args.warmup = args.warmup if args.warmup is not None else max(1, args.steps // 20)
    args.workers = args.workers if args.workers is not None else (8 if cuda else 0)
    args.eval_multiples = args.eval_multiples or ("1,8" if cuda else "1")
    train(args, evaluate)
    return 0


def _run_export_rope(args: argparse.Namespace, argv: list[str]) -> int:
    from sgl_qwen1m.model.spec import export_rope_variant

    print(export_rope_variant(args.model, args.out))
    return 0


def _run_export_sparse(args: argparse.Namespace, argv: list[str]) -> int:
    from sgl_qwen1m.model.spec import export_sparse_variant

    print(export_sparse_variant(args.model, args.out, args.vertical, args.slash, args.threshold,
                                args.budgets))
    return 0


def _run_write_config(args: argparse.Namespace, argv: list[str]) -> int:
    from sgl_qwen1m.model.spec import make_config, write_model_dir

    print(write_model_dir(args.out, make_config(seq_len=args.seq_len)))
    return 0


def _run_info(args: argparse.Namespace, argv: list[str]) -> int:
    from sgl_qwen1m.model.spec import WEIGHTS_FILE, read_config
    from sgl_qwen1m.model.torch_qwen2 import TinyQwen2

    cfg = read_config(args.model)
    n = TinyQwen2(cfg).num_params()
    wf = BUNDLED_MODEL_DIR / WEIGHTS_FILE if args.model == str(BUNDLED_MODEL_DIR) else None
    keys = (
        "num_hidden_layers",
        "hidden_size",
        "num_attention_heads",
        "num_key_value_heads",
        "head_dim",
        "intermediate_size",
        "vocab_size",
        "rope_theta",
        "dual_chunk_attention_config",
    )
    print(json.dumps({k: cfg.get(k) for k in keys}, indent=1))
    size = f"  file {wf.stat().st_size:,} bytes" if wf and wf.exists() else ""
    print(f"parameters {n:,}  bf16 {2 * n:,} bytes{size}")
    return 0
