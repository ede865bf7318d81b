"""CPU-scale ablation of the bundled model's recipe: does DCA extrapolation need DCA augmentation in training?

Trains two 128-token copies of the bundled architecture on copy + passkey (RoPE theta 300, the 4096/10000 ratio
scaled down), one with ``--dca-aug 0`` and one with ``--dca-aug 0.5``, then prints passkey accuracy at 1x-16x with
DCA and plain RoPE for both through the pure-torch reference. About 45 minutes on 2 CPU cores. A recipe over the
package's command line (``python -m sgl_qwen1m train`` twice per arm, then ``python -m sgl_qwen1m demo``).

    python scripts/train_small.py --out /tmp/train-small

Seen on a 2-core CPU (25 prompts per cell; 2 x 1500 steps each, second stage from the first at lr 1e-3):

    dca-aug 0.0: DCA 92 / 80 / 24 / 0 / 0 %     RoPE 92 / 0 / 0 / 0 / 0 %    (1x / 2x / 4x / 8x / 16x)
    dca-aug 0.5: DCA 100 / 100 / 100 / 96 / 84 % RoPE 100 / 92 / 0 / 0 / 0 %
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sgl_qwen1m.cli import main as cli  # noqa: E402

COMMON = [
    "--seq-len",
    "128",
    "--device",
    "cpu",
    "--rope-theta",
    "300",
    "--tasks",
    "copy,passkey",
    "--log-every",
    "100",
    "--eval-samples",
    "0",
    "--min-len",
    "64",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="/tmp/train-small")
    p.add_argument("--steps", type=int, default=1500, help="steps per stage (two stages)")
    p.add_argument("--samples", type=int, default=25)
    args = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    for aug in ("0", "0.5"):
        a, b = Path(args.out) / f"aug{aug}-a", Path(args.out) / f"aug{aug}"
        cli(["train", "--out", str(a), "--steps", str(args.steps), "--dca-aug", aug, *COMMON])
        cli(
            [
                "train",
                "--out",
                str(b),
                "--init",
                str(a),
                "--steps",
                str(args.steps),
                "--dca-aug",
                aug,
                "--ramp",
                "0",
                "--lr",
                "1e-3",
                "--seed",
                "5",
                *COMMON,
            ]
        )
    for aug in ("0", "0.5"):
        print(f"\n=== --dca-aug {aug}")
        cli(
            [
                "demo",
                "--device",
                "cpu",
                "--model",
                str(Path(args.out) / f"aug{aug}"),
                "--tasks",
                "passkey",
                "--multiples",
                "1,2,4,8,16",
                "--samples",
                str(args.samples),
            ]
        )


if __name__ == "__main__":
    main()
