#!/usr/bin/env bash
# Issue 5 on one GPU: the quickstart notebook in a real Jupyter kernel and every example program, on the bundled
# tiny model with --attention-backend qwen1m.
# Usage (GPU host, repo root):  source scripts/gpu/prologue.sh && bash scripts/gpu/frontend_checks.sh OUT_DIR TAG
# Needs .gpu-jupyter/jupyter.tar.xz and .gpu-jupyter/nb/00_quickstart.ipynb: bash scripts/gpu/make-jupyter-bundle.sh
set -uo pipefail
out="${1:?usage: frontend_checks.sh OUT_DIR TAG}"; tag="${2:-h100}"
mkdir -p "$out" /tmp/jsite
[ -f /tmp/jsite/.done ] || { tar xJf .gpu-jupyter/jupyter.tar.xz -C /tmp/jsite && touch /tmp/jsite/.done; }
export PYTHONPATH="$PYTHONPATH:/tmp/jsite" MPLBACKEND=Agg
log="$out/frontend_gpu_$tag.log"
noise="Warning|warnings.warn|Capturing batches|Loading safetensors|Multi-thread loading"  # progress bars and warnings
{
    echo "# $(nvidia-smi --query-gpu=name --format=csv,noheader | head -n1), $(date -u +%FT%TZ)"
    echo "== notebooks/00_quickstart (nbclient, python3 kernel)"
    python3 scripts/gpu/run_notebook.py .gpu-jupyter/nb/00_quickstart.ipynb --out "$out/00_quickstart.gpu.ipynb" 2>&1 \
        | grep -v -E "$noise"
    echo "quickstart rc=${PIPESTATUS[0]}"
    for ex in passkey_eval needle_qa multi_doc_qa map_reduce; do
        echo "== examples/$ex.py --engine sglang"
        t0=$(date +%s)
        python3 "examples/$ex.py" --engine sglang 2>&1 \
            | grep -v -E "$noise"
        echo "$ex rc=${PIPESTATUS[0]} ($(( $(date +%s) - t0 ))s)"
    done
} > "$log" 2>&1
grep -E "^(==|---|.* rc=)" "$log"
