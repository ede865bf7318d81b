#!/bin/bash
# Issue 14 on one H200, as a background chain that outlives one device call (the machine stays warm between calls):
#
#   call 1:  source scripts/gpu/prologue.sh >/dev/null && setsid nohup bash scripts/gpu/fp8_chain.sh STEPS \
#              < /dev/null > /tmp/r/chain.log 2>&1 &  then  bash scripts/gpu/fp8_chain.sh --wait 560
#   call N:  bash scripts/gpu/fp8_chain.sh --wait 580          (waits, then copies /tmp/r to $OUT)
#
# STEPS (comma list, run in this order): tests, passkey, 7b48, 7bbf16, 14b, qwen3, qwen3-512k. Every step writes
# under /tmp/r/<experiment>/ with the same names as benchmarks/results/, so `cp -r` puts them in place; a step
# that fails is logged and the chain goes on. /tmp/r/done.<step> marks each finished step, /tmp/r/chain.done the end.
set -u
R=/tmp/r
mkdir -p "$R"
if [ "${1:-}" = "--wait" ]; then    # wait for the chain (up to $2 s of this call, or until step $3 is done), then
    # send /tmp/r back; a snapshot goes to $OUT every 30 s, so a call cut short (device time spent) still returns one
    until [ -f "$R/chain.done" ] || [ "$SECONDS" -ge "${2:-560}" ] || { [ -n "${3:-}" ] && [ -f "$R/done.$3" ]; }; do
        sleep 5
        [ $((SECONDS % 30)) -lt 5 ] && tar czf "${OUT:-/tmp}/r.tmp.tgz" -C /tmp r 2>/dev/null &&
            mv "${OUT:-/tmp}/r.tmp.tgz" "${OUT:-/tmp}/r.tgz"
    done
    [ -f "$R/chain.done" ] && { bash scripts/gpu/epilogue.sh > "$R/epilogue.log" 2>&1; cp "${OUT:-/tmp}/flashinfer-jit.tgz" "$R/" 2>/dev/null; }
    tar czf "${OUT:-/tmp}/r.tgz" -C /tmp r && ls "$R" && tail -5 "$R/chain.log"
    exit 0
fi
M7=benchmarks/models/qwen2.5-7b-1m-shape
M14=benchmarks/models/qwen2.5-14b-1m-shape
M30=benchmarks/models/qwen3-30b-a3b-instruct-2507-1m-shape
FP8=(--engine-arg kv_cache_dtype=fp8_e4m3)
step() { echo "=== $(date +%T) $1"; }
e2e() { timeout "$1" python3 -m sgl_qwen1m bench e2e --backends qwen1m-sparse-local --no-plot --cuda-graph \
          --check-tokens 40960 "${@:2}"; }

for s in ${1//,/ }; do
    step "$s"
    case "$s" in
    tests)
        mkdir -p "$R/gpu-tests"
        timeout 600 python3 -m pytest -q -rP -c /dev/null --rootdir . --noconftest -p no:cacheprovider \
            tests/test_dca_attention_gpu.py tests/test_sparse.py tests/test_sparse_select.py tests/test_rope.py \
            tests/test_rope_families.py > "$R/gpu-tests/gpu_tests_fp8_h200.log" 2>&1
        tail -3 "$R/gpu-tests/gpu_tests_fp8_h200.log" ;;
    passkey)    # bundled tiny model, same prompts (seed) with bf16 and FP8 KV, dense and sparse prefill
        d="$R/tiny-model-accuracy"; mkdir -p "$d"
        python3 -m sgl_qwen1m model export-sparse-variant --out /tmp/tiny-sparse --vertical 256 --slash 512 \
            --threshold 2048 > "$d/passkey_kv_h200.log" 2>&1
        for p in dense sparse; do
            m=sgl_qwen1m/data/tiny-dca; [ "$p" = sparse ] && m=/tmp/tiny-sparse
            for kv in bf16 fp8_e4m3; do
                extra=(); [ "$kv" = fp8_e4m3 ] && extra=(--engine-arg kv_cache_dtype=fp8_e4m3)
                timeout 300 python3 -m sgl_qwen1m eval run --runner engine --attention-backend qwen1m --model "$m" \
                    --tasks passkey --multiples 1,4,8,16 --samples 50 --seed 0 "${extra[@]}" \
                    --backend-name "qwen1m-$p-$kv" --out "$d/passkey_${p}_${kv}_h200.json" >> "$d/passkey_kv_h200.log" 2>&1
                grep -h '"value"' "$d/passkey_${p}_${kv}_h200.json" | tr -d ' \n'; echo " <- $p $kv"
            done
        done ;;
    7b48)       # 7B-1M, FP8 KV, 1M tokens inside 48 GB: pool = context (~1M tokens), mfs 0.30, chunk 8192
        mkdir -p "$R/fp8-1m-h200"
        e2e 900 --model-1m "$M7" --lengths 256K,1000000 --decode-at 256K,1000000 --chunked-prefill-size 8192 \
            --mem-fraction-static 0.30 --mem-budget-gib 48 "${FP8[@]}" \
            --out "$R/fp8-1m-h200/qwen2.5_7b_1m_48gb_h200.json" ;;
    7bbf16)     # the same requests with a bf16 pool (no budget: bf16 needs ~73 GiB at 1M)
        mkdir -p "$R/fp8-1m-h200"
        e2e 900 --model-1m "$M7" --lengths 256K,1000000 --decode-at 256K,1000000 --chunked-prefill-size 8192 \
            --mem-fraction-static 0.80 --out "$R/fp8-1m-h200/qwen2.5_7b_1m_bf16_h200.json" ;;
    14b)
        mkdir -p "$R/fp8-1m-h200"
        e2e 900 --model-1m "$M14" --lengths 1000000 --decode-at 1000000 --chunked-prefill-size 16384 \
            --mem-fraction-static 0.90 "${FP8[@]}" --out "$R/fp8-1m-h200/qwen2.5_14b_1m_fp8_h200.json" ;;
    qwen3)      # Qwen3's own budgets are not public here: every head gets the 14B-1M budgets' means (vertical 2357,
                # slash 6055), written into a copy of the shape directory (the JSON's note says so)
        mkdir -p "$R/fp8-1m-h200"
        [ -n "${QWEN3_DIR:-}" ] || { QWEN3_DIR=/tmp/qwen3-sparse; python3 -m sgl_qwen1m model export-sparse-variant \
            --model "$M30" --out "$QWEN3_DIR" --vertical 2357 --slash 6055 --threshold 32768; }
        e2e 900 --model-1m "${QWEN3_DIR:-/tmp/qwen3-sparse}" --lengths 1000000 --decode-at 1000000 --chunked-prefill-size 16384 \
            --mem-fraction-static 0.90 "${FP8[@]}" --out "$R/fp8-1m-h200/qwen3_30b_a3b_1m_fp8_h200.json" ;;
    qwen3-512k) # 512K: FP8 against bf16 KV (after the qwen3 step, which writes the budgets copy)
        mkdir -p "$R/fp8-1m-h200"
        for kv in fp8 bf16; do
            extra=(); [ "$kv" = fp8 ] && extra=("${FP8[@]}")
            e2e 600 --model-1m "${QWEN3_DIR:-/tmp/qwen3-sparse}" --lengths 512K --decode-at 512K --chunked-prefill-size 16384 \
                --mem-fraction-static 0.90 "${extra[@]}" --out "$R/fp8-1m-h200/qwen3_30b_a3b_512k_h200_$kv.json"
        done ;;
    *) echo "unknown step $s" ;;
    esac
    touch "$R/done.$s"
done
step end
touch "$R/chain.done"
