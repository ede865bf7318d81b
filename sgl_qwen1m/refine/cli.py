"""Arguments of ``python -m sgl_qwen1m refine`` (design: :mod:`sgl_qwen1m.refine`)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["register", "DESCRIPTION"]

DESCRIPTION = ("Sparsity refinement: raise each head's vertical/slash budget until the attention recall of serving's "
               "selection reaches --target on calibration sequences of --length tokens; writes "
               "sparse_attention_config.json and a JSON report.")


def register(subparsers: Any) -> None:
    from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR

    p = subparsers.add_parser("refine", help="sparsity refinement (per-head budgets from attention recall)",
                              description=DESCRIPTION)
    p.add_argument("--model", default=str(BUNDLED_MODEL_DIR), help="model dir TinyQwen2 loads (%(default)s)")
    p.add_argument("--calib", required=True, help="calibration file or glob (.json ids, .jsonl, .bin uint16, text)")
    p.add_argument("--length", type=int, required=True, help="calibration (and target) prompt length in tokens")
    p.add_argument("--num-seqs", type=int, default=1, help="calibration windows of --length tokens (%(default)s)")
    p.add_argument("--target", type=float, default=0.95, help="recall every head must reach (%(default)s)")
    p.add_argument("--stat", default="mean", help="per-head recall statistic: mean, min or pNN (%(default)s)")
    p.add_argument("--out", required=True, help="sparse_attention_config.json to write")
    p.add_argument("--report", default=None, help="report JSON (default: beside --out, *.report.json)")
    p.add_argument("--budgets", default=None, help="starting sparse_attention_config.json (default: uniform)")
    p.add_argument("--start-vertical", type=int, default=128, help="uniform start without --budgets (%(default)s)")
    p.add_argument("--start-slash", type=int, default=256, help="uniform start without --budgets (%(default)s)")
    p.add_argument("--step", type=float, default=1.5, help="multiplicative budget step (%(default)s)")
    p.add_argument("--min-step", type=int, default=64, help="smallest budget increase (%(default)s)")
    p.add_argument("--max-rounds", type=int, default=40)
    p.add_argument("--tail-rows", type=int, default=16, help="last rows of each piece evaluated (%(default)s)")
    p.add_argument("--random-rows", type=int, default=128, help="random other rows per piece (%(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prefill-chunk", type=int, default=None, help="serving's --chunked-prefill-size (pieces)")
    p.add_argument("--layers", default=None, help="comma-separated layers to refine (default all)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cuda if available)")
    p.add_argument("--maps", default=None, help="also write per-head estimator score profiles (refine/maps.py) "
                   "of the first sequence to this JSON (.json.gz: gzip-compressed)")
    p.set_defaults(handler=_run)


def _run(ns: argparse.Namespace, argv: list[str]) -> int:
    from sgl_qwen1m.args import CommandError
    from sgl_qwen1m.model.torch_qwen2 import TinyQwen2
    from sgl_qwen1m.refine.calib import load_calibration
    from sgl_qwen1m.refine.recall import RowSampling
    from sgl_qwen1m.refine.search import SearchConfig
    from sgl_qwen1m.refine.tool import device_of, load_start, refine_model, write_outputs

    try:
        cfg = SearchConfig(ns.target, ns.stat, ns.step, ns.min_step, ns.max_rounds)
        model = TinyQwen2.from_pretrained(ns.model, device=device_of(ns.device))
        seqs = load_calibration(ns.calib, ns.length, ns.num_seqs, ns.model, int(model.config.get("eos_token_id") or 0))
        start = load_start(ns.budgets, ns.model, ns.start_vertical, ns.start_slash)
    except (ValueError, FileNotFoundError) as e:
        raise CommandError(str(e)) from None
    layers = [int(x) for x in ns.layers.split(",")] if ns.layers else None
    maps: list = []
    refined, report = refine_model(model, seqs, start, cfg, RowSampling(ns.tail_rows, ns.random_rows, ns.seed),
                                   ns.prefill_chunk, layers, maps=maps if ns.maps else None)
    report["summary"]["command"] = "python -m sgl_qwen1m refine " + " ".join(argv)
    out, rp = write_outputs(refined, report, ns.out, ns.report)
    s = report["summary"]
    print(f"heads below target {s['heads_below_target_before']} -> {s['heads_below_target_after']} of {s['heads']}; "
          f"min recall ({s['stat']}) {s['recall_min_over_heads_before']:.4f} -> {s['recall_min_over_heads_after']:.4f}; "
          f"budget keys/query {s['budget_keys_per_query_before']:.0f} -> {s['budget_keys_per_query_after']:.0f}")
    print(f"wrote {out} and {rp}")
    if ns.maps:
        print(f"wrote {_write_maps(ns.maps, ns.length, maps, ns.model)}")
    return 0


def _write_maps(path: str, length: int, maps: list, model: str) -> str:
    from pathlib import Path

    from sgl_qwen1m.jsonout import write
    from sgl_qwen1m.refine.maps import maps_document

    return str(write(path, maps_document(length, maps, Path(model).name), width=100000))
