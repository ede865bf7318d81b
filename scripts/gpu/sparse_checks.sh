#!/usr/bin/env bash
# Sparse prefill on one GPU: kernel tests, kernel-design comparison, tiny-model accuracy (dense vs sparse).
# Usage (GPU host, repo root):  source scripts/gpu/prologue.sh && bash scripts/gpu/sparse_checks.sh OUT_DIR TAG
set -uo pipefail
out="${1:?usage: sparse_checks.sh OUT_DIR TAG}"; tag="${2:-h100}"
mkdir -p "$out"
echo "== GPU tests"
python3 -m pytest -q -c /dev/null --rootdir . --noconftest -p no:cacheprovider -rP \
    tests/test_sparse.py tests/test_dca_attention_gpu.py > "$out/gpu_tests_sparse_$tag.log" 2>&1
tail -3 "$out/gpu_tests_sparse_$tag.log"
echo "== kernel designs"
python3 -m sgl_qwen1m bench ops-sparse --lengths 65536,131072,262144 --chunk 16384 \
    --out "benchmarks/results/sparse-ops-$tag/sparse_ops_$tag.json" 2>&1 | grep -v Warning | tail -8
echo "== tiny model accuracy, dense vs sparse (bundled model, passkey)"
python3 -m sgl_qwen1m model export-sparse-variant --out /tmp/tiny-sparse --vertical 256 --slash 512 --threshold 2048
common=(--runner engine --attention-backend qwen1m --tasks passkey --multiples 1,4,8,16 --samples 20)
python3 -m sgl_qwen1m eval run "${common[@]}" --backend-name qwen1m-dense \
    --out "$out/acc_tiny_dense_$tag.json" 2>&1 | grep -v Warning | tail -6
python3 -m sgl_qwen1m eval run "${common[@]}" --model /tmp/tiny-sparse --backend-name qwen1m-sparse \
    --out "$out/acc_tiny_sparse_$tag.json" 2>&1 | grep -v Warning | tail -6
