"""``python -m sgl_qwen1m.model``: small utilities around the bundled model directory.

python -m sgl_qwen1m.model export-rope-variant --out /tmp/tiny-rope   # copy without dual_chunk_attention_config
python -m sgl_qwen1m.model export-sparse-variant --out /tmp/tiny-sparse --vertical 128 --slash 256 --threshold 2048
python -m sgl_qwen1m.model info                                      # shapes, parameter count, weight size
python -m sgl_qwen1m.model write-config --out DIR [--seq-len 4096]    # config + tokenizer, no weights
"""

from __future__ import annotations

import argparse
import json

from sgl_qwen1m.model.spec import (
    BUNDLED_MODEL_DIR,
    WEIGHTS_FILE,
    export_rope_variant,
    export_sparse_variant,
    make_config,
    read_config,
    write_model_dir,
)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m sgl_qwen1m.model")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export-rope-variant", help="copy a model dir with the DCA config removed (RoPE baseline)")
    e.add_argument("--model", default=str(BUNDLED_MODEL_DIR))
    e.add_argument("--out", required=True)
    sp = sub.add_parser("export-sparse-variant", help="copy a model dir with uniform sparse-prefill budgets")
    sp.add_argument("--model", default=str(BUNDLED_MODEL_DIR))
    sp.add_argument("--out", required=True)
    sp.add_argument("--vertical", type=int, default=128, help="vertical_size of every head (%(default)s)")
    sp.add_argument("--slash", type=int, default=256, help="slash_size of every head (%(default)s)")
    sp.add_argument("--threshold", type=int, default=2048, help="sparse_attention_threshold (%(default)s)")
    i = sub.add_parser("info", help="print the model's shape, parameter count and weight size")
    i.add_argument("--model", default=str(BUNDLED_MODEL_DIR))
    w = sub.add_parser("write-config", help="write config.json + tokenizer files (no weights)")
    w.add_argument("--out", required=True)
    w.add_argument("--seq-len", type=int, default=4096)
    args = p.parse_args(argv)
    if args.cmd == "export-rope-variant":
        print(export_rope_variant(args.model, args.out))
    elif args.cmd == "export-sparse-variant":
        print(export_sparse_variant(args.model, args.out, args.vertical, args.slash, args.threshold))
    elif args.cmd == "write-config":
        print(write_model_dir(args.out, make_config(seq_len=args.seq_len)))
    else:
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


if __name__ == "__main__":
    main()
