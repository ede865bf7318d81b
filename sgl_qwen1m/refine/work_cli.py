"""Arguments of ``python -m sgl_qwen1m sparse-work`` (what is counted: :mod:`sgl_qwen1m.refine.work`).

    python -m sgl_qwen1m sparse-work --model DIR --budgets F --calib F --lengths 2048,8192 --proxy local,uniform \\
        [--proxy-shape benchmarks/models/qwen2.5-7b-1m-shape --proxy-budgets F] [--prefill-chunk N] --out R.json

Rows (``metric`` ``computed_fraction``): ``weights`` ``real`` (``--model``'s trained weights on ``--calib``
windows, backend ``--backend-name``), ``local`` / ``uniform`` (proxies in ``--model``'s shape and in
``--proxy-shape``'s, backend ``<backend-name>-<proxy>``); ``value`` the mean over layers and heads of computed /
dense causal pairs, ``min`` / ``max`` over them, ``per_layer`` the per-layer means.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Optional

__all__ = ["register", "DESCRIPTION", "PROXY_NAMES"]

PROXY_NAMES = ("local", "uniform")  # refine.work.PROXIES, repeated so that parsing imports no torch (tests compare)

DESCRIPTION = ("Kernel work of sparse prefill: the share of dense causal attention pairs the 64x64-tile sparse kernel "
               "computes, on a trained model's attention (--model + --calib) and on the dummy-weight proxies of the "
               "speed benchmarks (--proxy local,uniform) at the same lengths and budgets.")


def _proxies(text: str) -> list[str]:
    out = [p.strip() for p in text.split(",") if p.strip() and p.strip() != "none"]
    bad = [p for p in out if p not in PROXY_NAMES]
    if bad:
        raise argparse.ArgumentTypeError(f"unknown proxy {bad[0]!r}; choose from {', '.join(PROXY_NAMES)} (or none)")
    return list(dict.fromkeys(out))


def register(subparsers: Any) -> None:
    from sgl_qwen1m.args import lengths, positive_float, positive_int

    p = subparsers.add_parser("sparse-work", help="share of dense attention the sparse kernel computes",
                              description=DESCRIPTION)
    p.add_argument("--model", default=None, help="trained model dir TinyQwen2 loads; its shape for --proxy")
    p.add_argument("--budgets", default=None,
                   help="sparse_attention_config.json for --model (default: the one in --model)")
    p.add_argument("--calib", default=None, help="calibration file or glob for the real-weights rows (refine's)")
    p.add_argument("--num-seqs", type=positive_int, default=1, help="calibration windows per length (%(default)s)")
    p.add_argument("--lengths", type=lengths, required=True, help="prompt lengths, e.g. 32768,64K")
    p.add_argument("--proxy", type=_proxies, default=["local", "uniform"],
                   help="proxies: local, uniform, both comma-separated, or none (default local,uniform)")
    p.add_argument("--proxy-shape", default=None, help="another model dir (config.json only) for proxy rows")
    p.add_argument("--proxy-budgets", default=None,
                   help="budgets for --proxy-shape (default: the sparse_attention_config.json in it)")
    p.add_argument("--prefill-chunk", type=positive_int, default=None, help="serving's --chunked-prefill-size")
    p.add_argument("--uniform-std", type=positive_float, default=None,
                   help="std of the uniform proxy's q/k noise (default refine.work.UNIFORM_STD)")
    p.add_argument("--seed", type=int, default=0, help="uniform proxy seed (%(default)s)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cuda if available)")
    p.add_argument("--model-name", default=None, help="row label of --model (default its directory name)")
    p.add_argument("--backend-name", default="qwen1m-sparse",
                   help="backend of the real rows, e.g. qwen1m-sparse-refined (%(default)s)")
    p.add_argument("--out", default=None, help="results JSON to write (rows: see the module docstring)")
    p.set_defaults(handler=_run)


def _budgets_path(explicit: Optional[str], model_dir: Path, flag: str) -> Path:
    from sgl_qwen1m.args import CommandError
    from sgl_qwen1m.model.spec import SPARSE_FILE

    path = Path(explicit) if explicit else model_dir / SPARSE_FILE
    if not path.is_file():
        hint = "" if explicit else f" (pass {flag} FILE)"
        raise CommandError(f"budgets file {path} does not exist{hint}")
    return path


def _row(backend: str, model: str, length: int, train_len: Optional[int], weights: str, frac: Any,
         budgets: Path, prefill_chunk: Optional[int], seconds: float, **extra: Any) -> dict[str, Any]:
    """One results row from ``frac`` ``[layers, H]`` float64."""
    return {"metric": "computed_fraction", "backend": backend, "model": model, "prompt_tokens": length,
            "length_multiple": round(length / train_len, 4) if train_len else None, "weights": weights,
            "value": round(float(frac.mean()), 5), "min": round(float(frac.min()), 5),
            "max": round(float(frac.max()), 5), "per_layer": [round(float(x), 4) for x in frac.mean(1)],
            "budgets": str(budgets), "prefill_chunk": prefill_chunk, "seconds": round(seconds, 2), **extra}


def _check_length(length: int, shape: Any) -> None:
    from sgl_qwen1m.args import CommandError
    from sgl_qwen1m.ops.sparse.plan import BLOCK

    if length < BLOCK:
        raise CommandError(f"--lengths {length} is shorter than one {BLOCK}-token sparse tile: the kernel has "
                           "nothing to skip; use lengths >= 64")
    if shape.chunk_len is not None and length <= shape.chunk_len:
        print(f"note: {length} tokens fit in one DCA chunk of {shape.name} ({shape.chunk_len} tokens): every query "
              "is intra-chunk (the succ/inter variants are not exercised)")


def _run(ns: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from sgl_qwen1m.args import CommandError
    from sgl_qwen1m.config import ConfigError, SparseBudgets
    from sgl_qwen1m.refine.work import UNIFORM_STD, AttnShape, proxy_work

    device = torch.device(ns.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    std = ns.uniform_std if ns.uniform_std is not None else UNIFORM_STD
    if ns.model is None and ns.proxy_shape is None:
        raise CommandError("nothing to measure: give --model (real weights with --calib, proxies in its shape) "
                           "and/or --proxy-shape DIR")
    if ns.model is None and ns.calib is not None:
        raise CommandError("--calib needs --model (the trained model that reads it)")
    if ns.model is not None and ns.calib is None and not ns.proxy:
        raise CommandError("--model without --calib and with --proxy none measures nothing")
    if ns.proxy_shape is not None and not ns.proxy:
        raise CommandError("--proxy-shape needs at least one --proxy (local, uniform)")
    jobs = []  # (shape, budgets, path, weights list, model dir or None)
    try:
        for where, budgets_arg, flag, real in ((ns.model, ns.budgets, "--budgets", ns.calib is not None),
                                               (ns.proxy_shape, ns.proxy_budgets, "--proxy-budgets", False)):
            if where is None:
                continue
            shape = AttnShape.from_dir(where, ns.model_name if where == ns.model else None)
            path = _budgets_path(budgets_arg, Path(where), flag)
            try:
                budgets = SparseBudgets.from_json(path, shape.num_layers, shape.num_heads)
            except (ConfigError, ValueError) as e:  # ValueError: not JSON
                raise CommandError(f"{path}: {e} (budgets of {shape.name})") from None
            jobs.append((shape, budgets, path, (["real"] if real else []) + list(ns.proxy), where))
    except (ConfigError, FileNotFoundError, ValueError) as e:
        raise CommandError(str(e)) from None
    for shape, *_ in jobs:
        for length in ns.lengths:
            _check_length(length, shape)
    rows = []
    for shape, budgets, path, kinds, where in jobs:
        model = None
        for length in ns.lengths:
            for kind in kinds:
                t0 = time.time()
                extra: dict[str, Any] = {}
                if kind == "real":
                    model, frac, extra = _real(ns, where, model, length, budgets, device)
                    backend = ns.backend_name
                else:
                    frac = proxy_work(kind, shape, length, budgets, ns.prefill_chunk, ns.seed, std, device)
                    backend = f"{ns.backend_name}-{kind}"
                    extra = {"uniform_std": std, "seed": ns.seed} if kind == "uniform" else {}
                rows.append(_row(backend, shape.name, length, shape.train_len, kind, frac, path, ns.prefill_chunk,
                                 time.time() - t0, **extra))
                _print_row(rows[-1], header=len(rows) == 1)
    if ns.out:
        out = _write(ns.out, rows, "python -m sgl_qwen1m sparse-work " + " ".join(argv), device)
        print(f"wrote {out}")
    return 0


def _write(path: str, rows: list[dict[str, Any]], command: str, device: Any) -> Path:
    """``{"command", "gpu", "versions", "date", "rows"}`` (the results format, :mod:`sgl_qwen1m.provenance`)."""
    from sgl_qwen1m.jsonout import dumps
    from sgl_qwen1m.provenance import header, short_gpu_name

    doc = header(command, gpu=short_gpu_name(device), rows=rows)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(doc) + "\n")
    return out


def _real(ns: argparse.Namespace, model_dir: str, model: Any, length: int, budgets: Any,
          device: Any) -> tuple[Any, Any, dict[str, Any]]:
    """The trained model (loaded once) and its ``[layers, H]`` fractions, mean over ``--num-seqs`` windows."""
    from sgl_qwen1m.args import CommandError
    from sgl_qwen1m.model.spec import WEIGHTS_FILE, has_weights
    from sgl_qwen1m.model.torch_qwen2 import TinyQwen2
    from sgl_qwen1m.refine.calib import load_calibration
    from sgl_qwen1m.refine.work import model_work

    try:
        if model is None:
            if not has_weights(model_dir):
                raise CommandError(f"{Path(model_dir) / WEIGHTS_FILE} does not exist: the real-weights rows "
                                   "(--calib) need a trained model")
            model = TinyQwen2.from_pretrained(model_dir, device=device)
        eos = int(model.config.get("eos_token_id") or 0)
        seqs = load_calibration(ns.calib, length, ns.num_seqs, model_dir, eos)
    except (ValueError, FileNotFoundError) as e:
        raise CommandError(str(e)) from None
    fracs = [model_work(model, ids, budgets, ns.prefill_chunk) for ids in seqs]
    return model, sum(fracs) / len(fracs), {"sequences": len(seqs)}


def _print_row(row: dict[str, Any], header: bool) -> None:
    if header:
        print(f"{'model':<28} {'weights':<8} {'tokens':>8} {'x train':>8} {'mean':>7} {'min':>7} {'max':>7} "
              f"{'seconds':>8}")
    mult = f"{row['length_multiple']:.2f}" if row["length_multiple"] is not None else "-"
    print(f"{row['model']:<28} {row['weights']:<8} {row['prompt_tokens']:>8} {mult:>8} {row['value']:>7.3f} "
          f"{row['min']:>7.3f} {row['max']:>7.3f} {row['seconds']:>8.1f}")
