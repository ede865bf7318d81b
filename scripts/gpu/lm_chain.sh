#!/bin/bash
# Issue 17 on one GPU (H100 or H200: file names carry the GPU) as a background chain across device calls (started and collected like fp8_chain.sh:
# `setsid nohup bash scripts/gpu/lm_chain.sh STEPS ... &` then `bash scripts/gpu/fp8_chain.sh --wait 575` per call).
# The commands are those of docs/text-lm-and-refinement.md; runs/ stays on the warm machine between calls.
#
# STEPS (comma list, run in the order given): data, train, train-alt, pick, dense, rope, refine, sparse-refined,
# sparse-start, sparse-default, work.
#   train-alt + pick: a second recipe (ALT_TRAIN_ARGS) into runs/lm/model-alt; pick keeps the one whose final
#   in-length retrieval probe is higher as runs/lm/model (the evaluations' model); both training logs are kept.
#   sparse-start: the budgets refinement starts from (128 vertical / 256 slash per head: the "unrefined" row);
#   sparse-default: MInference's defaults (1000 / 6096), near-dense at 2K-64K;
#   work: share of dense causal work the sparse kernel computes, real attention vs the dummy-weight proxies.
# train probes in-length code retrieval every PROBE_EVERY steps (training_log.json: retrieval_probes).
# SAMPLES: retrieval prompts per task and length (default 20; one prompt is 5 points at 20, 1 point at 100).
# Results: /tmp/r/text-lm-<gpu>/*_<gpu>.json (+ the training log, data manifest, refined budgets, report and maps).
# eval longtext-plot --merge-out joins the eval files into one results file afterwards (docs/text-lm-and-refinement.md).
set -u
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1 | grep -o -i -E 'h100|h200' | tr A-Z a-z)
G=${G:-gpu}
R=/tmp/r/text-lm-$G
mkdir -p "$R"
D=runs/lm/data
M=runs/lm/model
MULT=1,2,4,8,16,32
ev() {  # ev MODEL BACKEND_NAME ATTENTION_BACKEND OUT
    timeout 1200 python3 -m sgl_qwen1m eval longtext --model "$1" --data "$D" --model-name text-lm --runner engine \
        --attention-backend "$3" --backend-name "$2" --multiples "$MULT" --samples "${SAMPLES:-20}" --out "$R/$4"
}
for s in ${1//,/ }; do
    echo "=== $(date +%T) $s"
    case "$s" in
    data)
        timeout 1200 python3 -m sgl_qwen1m train-lm --data-only --vocab 16384 --data "$D" --out "$M" \
            --roots "/tmp/site,$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
        cp "$D"/*.json "$R/" 2>/dev/null ;;
    train)
        # TRAIN_ARGS: extra train-lm arguments (e.g. "--batch 16 --steps 3200": 4x the optimizer steps, same tokens)
        timeout 1800 python3 -m sgl_qwen1m train-lm --data "$D" --out "$M" --device cuda \
            --probe-every "${PROBE_EVERY:-100}" ${TRAIN_ARGS:-} 2>&1 | tee "$R/train_text_lm_$G.log"
        cp "$M"/config.json "$M"/*.json "$R/" 2>/dev/null ;;
    train-alt)  # the same data and probe with ALT_TRAIN_ARGS (default: 4x the optimizer steps, same tokens)
        timeout 1800 python3 -m sgl_qwen1m train-lm --data "$D" --out runs/lm/model-alt --device cuda \
            --probe-every "${PROBE_EVERY:-100}" ${ALT_TRAIN_ARGS:---batch 16 --steps 3200 --probe-every 400} 2>&1 |
            tee "$R/train_alt_text_lm_$G.log"
        mkdir -p "$R/model-alt" && cp runs/lm/model-alt/config.json runs/lm/model-alt/training_log.json "$R/model-alt/" ;;
    pick)  # keep the model whose last in-length retrieval probe (both styles summed) is higher as runs/lm/model
        python3 - "$M" runs/lm/model-alt <<'PY' 2>&1 | tee "$R/pick_$G.log"
import json, shutil, sys
score = {}
for d in sys.argv[1:]:
    p = json.load(open(f"{d}/training_log.json"))["retrieval_probes"][-1]
    score[d] = p["code_retrieval"] + p["code_retrieval_restate"]
    print(d, p)
base, alt = sys.argv[1:]
if score[alt] > score[base]:
    shutil.move(base, base + "-base")
    shutil.move(alt, base)
    print(f"picked {alt} (now {base}; the other is {base}-base)")
else:
    print(f"kept {base}")
PY
        ;;
    dense) ev "$M" qwen1m-dense qwen1m dense_text_lm_$G.json ;;
    rope)
        python3 -m sgl_qwen1m model export-rope-variant --model "$M" --out runs/lm/rope &&
            ev runs/lm/rope flashinfer-rope flashinfer rope_text_lm_$G.json ;;
    refine)
        timeout 1200 python3 -m sgl_qwen1m refine --model "$M" --calib "$D/train.bin" --length 32768 --num-seqs 2 \
            --target 0.95 --out runs/lm/refined/sparse_attention_config.json --device cuda \
            --maps "$R/maps_32k_$G.json.gz" 2>&1 | tee "$R/refine_$G.log"
        cp runs/lm/refined/* "$R/" 2>/dev/null ;;
    sparse-start)
        python3 -m sgl_qwen1m model export-sparse-variant --model "$M" --out runs/lm/sparse-start --threshold 4096 \
            --vertical 128 --slash 256 && ev runs/lm/sparse-start qwen1m-sparse-start qwen1m sparse_start_text_lm_$G.json ;;
    sparse-default)
        python3 -m sgl_qwen1m model export-sparse-variant --model "$M" --out runs/lm/sparse-default --threshold 4096 \
            --vertical 1000 --slash 6096 && ev runs/lm/sparse-default qwen1m-sparse qwen1m sparse_default_text_lm_$G.json ;;
    work)
        timeout 900 python3 -m sgl_qwen1m sparse-work --model "$M" --budgets runs/lm/refined/sparse_attention_config.json \
            --calib "$D/heldout.bin" --num-seqs 1 --lengths 32768,65536 --proxy local,uniform --model-name text-lm \
            --backend-name qwen1m-sparse-refined \
            --proxy-shape benchmarks/models/qwen2.5-7b-1m-shape \
            --proxy-budgets benchmarks/models/qwen2.5-7b-1m-shape/sparse_attention_config.json \
            --device cuda --out "$R/work_text_lm_$G.json" 2>&1 | tee "$R/work_$G.log" ;;
    sparse-refined)
        python3 -m sgl_qwen1m model export-sparse-variant --model "$M" --out runs/lm/sparse-refined --threshold 4096 \
            --budgets runs/lm/refined/sparse_attention_config.json &&
            ev runs/lm/sparse-refined qwen1m-sparse-refined qwen1m sparse_refined_text_lm_$G.json ;;
    *) echo "unknown step $s" ;;
    esac
    touch "/tmp/r/done.$s"
done
echo "=== $(date +%T) end"
touch /tmp/r/chain.done
