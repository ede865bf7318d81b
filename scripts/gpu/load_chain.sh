#!/bin/bash
# Issue 16 on one H200 (and issue 14's leftovers), as a background chain across device calls, like fp8_chain.sh:
#
#   call 1:  source scripts/gpu/prologue.sh >/dev/null && mkdir -p /tmp/r && setsid nohup bash scripts/gpu/load_chain.sh \
#              STEPS < /dev/null > /tmp/r/chain.log 2>&1 &  sleep 2; bash scripts/gpu/fp8_chain.sh --wait 575
#   call N:  bash scripts/gpu/fp8_chain.sh --wait 575
#
# STEPS (comma list, in this order; each starts its own server on port 30000 and stops it):
#   profile        step-time profile for the scheduler (7B-1M, local weights, prefixes to PROFILE_MAX=512K, ~8 min)
#   load-sglang    1M prompt + 8 chat streams, SGLang's own scheduling (today's qwen1m), local weights (~5 min)
#   load-policy    the same with QWEN1M_SCHEDULER=1 and the profile from step `profile` (~5 min); after `refit`, on the
#                  refitted profile (scenario qwen1m-policy-refit)
#   refit          (CPU, seconds) bench profile-check --refit: that profile refitted with the policy server's logged steps
#   load-fi        stock flashinfer + --enable-mixed-chunk on the plain 7B shape at 256K (~4 min)
#   dense-policy   dense DCA (no budgets) with the scheduler at 256K and 512K (~6 min)
#   est-tests      the FP8 estimation tests whose oracle was fixed after the 2026-12-01 run, and the mixed-batch
#                  (prefill + decode rows) tests against the fp32 oracle (~3 min with FlashInfer's JIT)
#   q3-serve       issue 14: the README's Qwen3 command (FP8 KV, --context-length 1010000) through launch_server,
#                  one 1,000,000-token request (serve-smoke; dummy weights; uniform 2357/6055 budgets) (~4 min)
#   stages-1m      issue 18: GPU time per prefill stage of one 1,000,000-token prompt (7B-1M, -local weights,
#                  chunk 16384; torch profiler, GPU kernels only; bench stages) (~4 min)
#   est-stages     issue 18: pattern stages per layer at 256K / 1M keys: estimation pass 1 and both passes, two
#                  designs (per head; per GQA group, estimate_gqa.py) at 2/4/8/16 programs per SM (EST_PPS) (~3 min)
#   q3-dense512    issue 14: Qwen3-30B-A3B at 512K, FP8 KV, sparse (-local) and dense prefill in one run (~6 min)
# Results go to /tmp/r/<experiment>/ (load-<gpu>, scheduler-profile, gpu-tests, speed-<gpu>), server logs beside them.
# REV=<commit> in the environment labels the stages-1m rows with the tree they measured.
set -u
R=/tmp/r
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | grep -o -i -E 'h100|h200' | tr A-Z a-z)
mkdir -p "$R/load-$G" "$R/scheduler-profile" "$R/gpu-tests"
# The 7B-1M runs keep a bf16 KV pool on an H200; an H100 cannot hold 1M tokens of it next to the weights (~56 GiB of
# KV + 14 GiB), so there they use FP8 KV (KVD=... overrides; the rows carry kv_dtype).
KVD=${KVD:-$([ "$G" = h200 ] && echo auto || echo fp8_e4m3)}
KVA=(); [ "$KVD" = auto ] || KVA=(--kv-cache-dtype "$KVD")
KVL=$([ "$KVD" = auto ] && echo bfloat16 || echo "$KVD")
M1=benchmarks/models/qwen2.5-7b-1m-shape
M7=benchmarks/models/qwen2.5-7b-shape
M30=benchmarks/models/qwen3-30b-a3b-instruct-2507-1m-shape
URL=http://127.0.0.1:30000
PROFILE="$R/scheduler-profile/$G.json"
REFIT="$R/scheduler-profile/${G}_refit.json"  # step `refit`: the profile refitted from load-policy's logged steps
OUTL="$R/load-$G/load_$G.json"

srv() {  # srv LOG MODEL BACKEND CHUNK [extra launch_server args...]: start, wait for /health (10 min at most; gives
    # up at once if the server exits). The context length is the shapes' max_position_embeddings (1010000): SGLang
    # refuses a longer one unless SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN=1 (the H100 run of 2026-12-07 waited
    # 10 min on a server that had died at argument checking).
    SRVSTART=$(mktemp)  # compiles after this are listed by stop()
    TRITON_PRINT_AUTOTUNING=1 python3 -m sglang.launch_server --model-path "$2" --load-format dummy --skip-tokenizer-init \
        --attention-backend "$3" --context-length 1010000 --chunked-prefill-size "$4" --mem-fraction-static 0.80 \
        --max-running-requests 32 --port 30000 --random-seed 0 "${@:5}" > "$1" 2>&1 &
    SRV=$! SRVLOG=$1
    for _ in $(seq 120); do
        curl -sf "$URL/health" > /dev/null && return 0
        kill -0 "$SRV" 2>/dev/null || { echo "server exited before /health: tail of $1"; tail -3 "$1"; return 1; }
        sleep 5
    done
    return 1
}
stop() {  # also lists when each Triton kernel was compiled (beside the server log): the 2026-12-08 H100 policy run had 7
    # steps of 4.5-6.1 s among 0.5 s ones, and these times against the log's step times say whether compiles did it
    find "${TRITON_CACHE_DIR:-$HOME/.triton/cache}" -name '*.json' -newer "$SRVSTART" -printf '%TT %f\n' 2>/dev/null \
        | sort > "${SRVLOG%.log}.triton_compiles.txt"
    kill "$SRV" 2>/dev/null; wait "$SRV" 2>/dev/null; pkill -f sglang.launch_server; sleep 5; }
local_w() {  # the -local weights; if that fails the run goes on with the dummy weights and says so in its label
    if python3 -m sgl_qwen1m bench local-weights --url "$URL" --model-dir "$1"; then W=-local; else
        W=; echo "local-weights failed: this step runs on uniform dummy weights"; fi; return 0; }
q3_budgets() {  # Qwen3's own budgets are not public here: every head gets the 14B-1M means (as fp8_chain.sh)
    [ -f /tmp/qwen3-sparse/sparse_attention_config.json ] || python3 -m sgl_qwen1m model export-sparse-variant \
        --model "$M30" --out /tmp/qwen3-sparse --vertical 2357 --slash 6055 --threshold 32768; }
use_profile() {  # the refit of step `refit` when there is one, else the profile measured by step `profile` when it
    # has every coefficient, else the stored one of this GPU (sgl_qwen1m/scheduler/profiles/<gpu>.json)
    if [ -f "$REFIT" ]; then export QWEN1M_SCHEDULER_PROFILE="$REFIT"; echo "scheduler profile: the refit $REFIT"
    elif [ -f "$PROFILE" ] && python3 -c "import sys; from sgl_qwen1m.scheduler.profile import Profile
m = Profile.load(sys.argv[1]).missing; print('measured profile lacks', m) if m else None; sys.exit(bool(m))" \
            "$PROFILE"; then export QWEN1M_SCHEDULER_PROFILE="$PROFILE"
    else unset QWEN1M_SCHEDULER_PROFILE; echo "no complete measured profile: the scheduler uses the stored one"; fi; }
sched_on() {  # sched_on LOG: one 1-token request, then the hook's own line in the server log says the scheduler is on;
    # without it (no profile for this GPU, ...) the step stops instead of labelling SGLang's scheduling as the policy
    curl -sf "$URL/generate" -H 'Content-Type: application/json' \
        -d '{"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 1}}' > /dev/null; sleep 1
    grep -q "qwen1m scheduler: on" "$1" && return 0
    echo "qwen1m scheduler is OFF in $1 (the hook says why):"; grep "qwen1m scheduler" "$1" | tail -2; return 1; }
dense_copy() { rm -rf /tmp/m1-dense && mkdir -p /tmp/m1-dense && cp "$M1/config.json" /tmp/m1-dense/; }
# `source scripts/gpu/load_chain.sh` stops here: the functions above for single commands by hand (scripts/gpu/README.md)
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

for s in ${1//,/ }; do
    echo "=== $(date +%T) $s"
    case "$s" in
    profile)
        srv "$R/scheduler-profile/profile_server_$G.log" "$M1" qwen1m 16384 "${KVA[@]}" && local_w "$M1" &&
            timeout 900 python3 -m sgl_qwen1m bench profile --url "$URL" --model-dir "$M1" --max-tokens "${PROFILE_MAX:-512K}" \
                --chunks 2048,8192,16384 --out "$PROFILE"
        stop ;;
    load-sglang)
        srv "$R/load-$G/sglang_scheduling_server.log" "$M1" qwen1m 16384 "${KVA[@]}" && local_w "$M1" &&
            timeout 900 python3 -m sgl_qwen1m bench load --url "$URL" --long-tokens 1000000 --streams 8 \
                --chat-rate 0.5 --backend "qwen1m-sparse$W" --scenario sglang-scheduling --kv-dtype "$KVL" --no-plot --out "$OUTL"
        stop ;;
    load-policy)  # after step `refit` it runs on the refitted profile, as scenario qwen1m-policy-refit
        use_profile; SC=qwen1m-policy$([ -f "$REFIT" ] && echo -refit)
        QWEN1M_SCHEDULER=1 QWEN1M_ITL_TARGET_MS=1000 \
            srv "$R/load-$G/${SC//-/_}_server.log" "$M1" qwen1m 16384 --enable-mixed-chunk "${KVA[@]}" && local_w "$M1" &&
            sched_on "$R/load-$G/${SC//-/_}_server.log" &&
            timeout 900 python3 -m sgl_qwen1m bench load --url "$URL" --long-tokens 1000000 --streams 8 \
                --chat-rate 0.5 --backend "qwen1m-sparse$W" --scenario "$SC" --kv-dtype "$KVL" --no-plot --out "$OUTL"
        stop ;;
    refit)  # CPU, seconds: the profile load-policy used, refitted with the steps its server logged (bench profile-check)
        use_profile
        python3 -m sgl_qwen1m bench profile-check --log "$R/load-$G/qwen1m_policy_server.log" \
            --profile "used=${QWEN1M_SCHEDULER_PROFILE:-sgl_qwen1m/scheduler/profiles/$G.json}" --refit-base used \
            --refit "$REFIT" --kv-dtype "$KVL" --no-plot --out "$R/scheduler-profile/profile_check_$G.json" ;;
    load-fi)
        srv "$R/load-$G/stock_mixed_chunk_server.log" "$M7" flashinfer 8192 --enable-mixed-chunk \
                --context-length 270336 && local_w "$M7" &&
            timeout 900 python3 -m sgl_qwen1m bench load --url "$URL" --long-tokens 256K --streams 8 \
                --chat-rate 0.5 --backend "flashinfer$W" --scenario stock-mixed-chunk --kv-dtype bfloat16 --no-plot --out "$OUTL"
        stop ;;
    dense-policy)
        dense_copy
        use_profile; QWEN1M_SCHEDULER=1 QWEN1M_ITL_TARGET_MS=1000 \
            srv "$R/load-$G/dense_policy_server.log" /tmp/m1-dense qwen1m 16384 --enable-mixed-chunk "${KVA[@]}" &&
            sched_on "$R/load-$G/dense_policy_server.log" &&
            for n in 256K 512K; do
                timeout 900 python3 -m sgl_qwen1m bench load --url "$URL" --long-tokens "$n" --streams 8 \
                    --chat-rate 0.5 --backend qwen1m-dense --scenario qwen1m-dense-policy --kv-dtype "$KVL" --no-plot --out "$OUTL"
            done
        stop ;;
    est-tests)
        timeout 600 python3 -m pytest -q -rP -c /dev/null --rootdir . --noconftest -p no:cacheprovider \
            tests/test_sparse.py tests/test_dca_attention_gpu.py -k "estimate or mixed" \
            > "$R/gpu-tests/gpu_tests_fp8_estimate_$G.log" 2>&1
        tail -3 "$R/gpu-tests/gpu_tests_fp8_estimate_$G.log" ;;
    stages-1m)
        mkdir -p "$R/speed-$G"
        srv "$R/speed-$G/stages_server.log" "$M1" qwen1m 16384 && local_w "$M1" &&
            timeout 900 python3 -m sgl_qwen1m bench stages --url "$URL" --long-tokens 1000000 \
                --backend "qwen1m-sparse$W" --variant "tree-${REV:-unknown}" \
                --trace-dir /tmp/stages-trace --out "$R/speed-$G/stages_1m_$G.json"
        stop ;;
    est-stages)  # issue 18: estimation pass 1 (LSE) vs pass 2 (scores) and the other pattern stages, per layer
        mkdir -p "$R/speed-$G"
        timeout 600 python3 -m sgl_qwen1m bench ops-sparse --lengths "${EST_LENGTHS:-262144,1048576}" --chunk 16384 \
            --layers "${EST_LAYERS:-0,14}" --dca --iters "${EST_ITERS:-5}" --stage-breakdown --est-designs head,gqa \
            --est-programs-per-sm "${EST_PPS:-2,4,8,16}" --out "$R/speed-$G/estimate_stages_$G.json" \
            > "$R/speed-$G/estimate_stages_$G.log" 2>&1
        tail -3 "$R/speed-$G/estimate_stages_$G.log" ;;
    q3-serve)
        mkdir -p "$R/fp8-1m-h200" && q3_budgets &&
            timeout 900 python3 -m sgl_qwen1m bench serve-smoke --backend qwen1m-sparse --model-1m /tmp/qwen3-sparse \
                --prompt-tokens 1000000 --new-tokens 16 --context-length 1010000 --mem-fraction-static 0.90 \
                --max-running-requests 4 --chunked-prefill-size 16384 --cuda-graph \
                --server-arg=--kv-cache-dtype=fp8_e4m3 --start-timeout-s 420 --request-timeout-s 420 \
                --log-file "$R/fp8-1m-h200/serve_qwen3_30b_a3b_1m_fp8_h200.server.log" \
                --out "$R/fp8-1m-h200/serve_qwen3_30b_a3b_1m_fp8_h200.json"
        tail -3 "$R/fp8-1m-h200/serve_qwen3_30b_a3b_1m_fp8_h200.server.log" ;;
    q3-dense512)
        mkdir -p "$R/fp8-1m-h200" && q3_budgets &&
            timeout 900 python3 -m sgl_qwen1m bench e2e --backends qwen1m-sparse-local,qwen1m-dense --no-plot \
                --cuda-graph --check-tokens 40960 --model-1m /tmp/qwen3-sparse --lengths 512K --decode-at 0 \
                --chunked-prefill-size 16384 --mem-fraction-static 0.90 --engine-arg kv_cache_dtype=fp8_e4m3 \
                --out "$R/fp8-1m-h200/qwen3_30b_a3b_512k_dense_vs_sparse_h200.json" ;;
    *) echo "unknown step $s" ;;
    esac
    touch "$R/done.$s"
done
echo "=== $(date +%T) end"
touch "$R/chain.done"
