#!/bin/bash
# One background chain for this GPU, whichever kind came (started like fp8_chain.sh, collected with
# `bash scripts/gpu/fp8_chain.sh --wait 555` per call):
#   H200: issue 14's leftovers, then issue 16's runs, then issue 18's stage profile (scripts/gpu/load_chain.sh), then
#         issue 17's chain if H200_LM_STEPS is set;
#   other GPUs (H100: the 7B-1M bf16 pool at 1M and the Qwen3 FP8 1M server do not fit in 80 GB): PRE_STEPS of
#   load_chain.sh (default the FP8 estimation and mixed-batch oracle tests; e.g. PRE_STEPS=profile,load-policy,...
#   runs issue 16's steps with an FP8 KV pool), then issue 17's text-LM chain (scripts/gpu/lm_chain.sh; LM_STEPS=
#   skips it), which runs on either.
set -u
G=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1)
echo "=== $(date +%T) GPU: $G"
if echo "$G" | grep -q H200; then
    bash scripts/gpu/load_chain.sh \
        "${H200_STEPS:-est-tests,q3-serve,q3-dense512,profile,load-policy,load-sglang,stages-1m,load-fi,dense-policy}"
    if [ -n "${H200_LM_STEPS:-}" ]; then  # then issue 17's chain (H200_LM_STEPS=data,train,...)
        rm -f /tmp/r/chain.done
        bash scripts/gpu/lm_chain.sh "$H200_LM_STEPS"
    fi
else
    [ -n "${PRE_STEPS-est-tests}" ] && bash scripts/gpu/load_chain.sh "${PRE_STEPS-est-tests}"  # PRE_STEPS= skips
    LM=${LM_STEPS-data,train,train-alt,pick,dense,rope,refine,sparse-refined,sparse-start,work,sparse-default}
    if [ -n "$LM" ]; then rm -f /tmp/r/chain.done; bash scripts/gpu/lm_chain.sh "$LM"; fi  # LM_STEPS= skips it
fi
