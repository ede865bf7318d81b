#!/usr/bin/env bash
# Same benchmark, two source trees, one device call: the refactor check "same numbers before and after".
#
#   git archive <old-rev> sgl_qwen1m pyproject.toml benchmarks/models | (mkdir -p .before && tar x -C .before)
#   # carry .gpu-bundle and .before; on the GPU host:
#   source scripts/gpu/prologue.sh && bash scripts/gpu/compare_trees.sh .before "$OUT/r" \
#       e2e --backends qwen1m-sparse-local --lengths 128K,256K --decode-at 0 --chunked-prefill-size 8192 \
#       --check-tokens 40960 --repeats 3 --no-plot
#
# Runs `python -m sgl_qwen1m.bench <args>` first with the old tree on PYTHONPATH, then with this checkout, writing
# <out>/before.json and <out>/after.json (+ logs). `python -m sgl_qwen1m.bench` is the spelling both trees know.
set -uo pipefail
old="${1:?usage: compare_trees.sh OLD_TREE OUT_DIR BENCH_ARGS...}"; out="${2:?}"; shift 2
old="$(cd "$old" && pwd)"; mkdir -p "$out"
site="${SGLQ_SITE:-/tmp/site}"
run() {  # run <tag> <tree>
    local tag="$1" tree="$2"; shift 2
    echo "== $tag: $tree"
    (cd "$tree" && PYTHONPATH="$site:$tree" timeout "${SGLQ_RUN_TIMEOUT:-280}" \
        python3 -m sgl_qwen1m.bench "$@" --out "$out/$tag.json" > "$out/$tag.log" 2>&1)
    echo "rc=$?"; grep -E "ttft|checked=|error" "$out/$tag.log" | grep -v Warning | tail -n 6
}
run before "$old" "$@"
run after "$PWD" "$@"
