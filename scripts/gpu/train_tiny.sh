#!/usr/bin/env bash
# Train the bundled tiny DCA model on one GPU, two recipes side by side, and evaluate both through the pure-torch
# reference (DCA) at 1x and 8x the training length. Usage (GPU host, repo root):
#   source scripts/gpu/prologue.sh && bash scripts/gpu/train_tiny.sh OUT_DIR [STEPS]
# Both recipes: copy + passkey, DCA augmentation on half the steps (the recipe scripts/train_small.py found on CPU).
#   L1k: 1,024-token training length, RoPE theta 2,500      L4k: 4,096-token training length, RoPE theta 10,000
set -euo pipefail
out="${1:?usage: train_tiny.sh OUT_DIR [STEPS]}"; steps="${2:-2000}"
mkdir -p "$out"
common=(--steps "$steps" --tasks copy,passkey --dca-aug 0.5 --device cuda --seed 0 --log-every 250
        --eval-samples 10 --eval-multiples 1,8)
python3 -m sgl_qwen1m train --out "$out/L1k" --seq-len 1024 --rope-theta 2500 "${common[@]}" > "$out/L1k.log" 2>&1 &
p1=$!
python3 -m sgl_qwen1m train --out "$out/L4k" --seq-len 4096 --rope-theta 10000 "${common[@]}" > "$out/L4k.log" 2>&1 &
p4=$!
wait $p1 || echo "train_tiny: L1k failed"; wait $p4 || echo "train_tiny: L4k failed"
for r in L1k L4k; do
    echo "== recipe $r"; tr '\r' '\n' < "$out/$r.log" | grep -E "^step|passkey|wrote|Error" | tail -12
done
