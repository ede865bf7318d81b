#!/bin/bash
# Run at the end of every GPU call, from the repository root:  bash scripts/gpu/epilogue.sh
#
# Writes under $OUT (the folder whose files come back from the GPU host):
#   flashinfer-jit.tgz  (flashinfer-jit.txz with SGLQ_JIT_XZ=1) the FlashInfer JIT .so files (~/.cache/flashinfer/<ver>/<arch>/cached_ops/<m>/<m>.so) and
#                       SGLang's tvm-ffi JIT .so files (~/.cache/tvm-ffi, or $TVM_FFI_CACHE_DIR), paths relative to
#                       ~/.cache. Copy it to .gpu-bundle/flashinfer-jit.tgz: the next call's prologue restores it.
#                       It holds everything restored earlier plus what this call compiled.
#   results/            benchmarks/results/<experiment>/*.json and *.png of this checkout, folders kept (copy
#                       results/* back over benchmarks/results/)
#   logs/               the benchmark's server logs (/tmp/sgl_qwen1m_bench/*.log, last 2 MB of each)
# The whole carry to the host is limited to 64 MiB with the ~55 MiB bundle, so the tarball must stay small: it
# warns above 8 MiB.
set -u
out="${OUT:-$PWD/gpu-out}"
mkdir -p "$out"
cache="$HOME/.cache"
tvm="${TVM_FFI_CACHE_DIR:-$cache/tvm-ffi}"

list="$(mktemp)"
if [ -d "$cache/flashinfer" ]; then
    (cd "$cache" && find flashinfer -path '*/cached_ops/*' -name '*.so' -type f) >> "$list"
fi
if [ -d "$tvm" ]; then
    case "$tvm" in
        "$cache"/*) (cd "$cache" && find "${tvm#"$cache"/}" -name '*.so' -type f) >> "$list" ;;
        *) echo "epilogue: TVM_FFI_CACHE_DIR=$tvm is outside ~/.cache: not saved" >&2 ;;
    esac
fi
n="$(wc -l < "$list")"
if [ "$n" -gt 0 ]; then
    if [ "${SGLQ_JIT_XZ:-0}" = 1 ]; then   # smaller (xz -9), slower to pack; the prologue takes either name
        jit="$out/flashinfer-jit.txz"
        tar cf - -C "$cache" -T "$list" | xz -9 -T0 > "$jit"
    else
        jit="$out/flashinfer-jit.tgz"
        tar cf - -C "$cache" -T "$list" | gzip -9 > "$jit"
    fi
    size="$(stat -c '%s' "$jit")"
    echo "epilogue: $n JIT .so files -> $jit ($((size / 1024)) KiB); copy it into .gpu-bundle/"
    if [ "$size" -gt $((8 * 1024 * 1024)) ]; then
        echo "epilogue: WARNING: the JIT tarball exceeds 8 MiB; with the bundle it may not fit the 64 MiB carry (try SGLQ_JIT_XZ=1)" >&2
    fi
else
    echo "epilogue: no JIT .so files found under $cache"
fi
rm -f "$list"

# results/<experiment>/<file>: at most 2 folders below $OUT (files deeper than that do not come back)
results="$(cd benchmarks/results 2>/dev/null && find . -maxdepth 2 -type f \( -name '*.json' -o -name '*.png' \) | sort)"
if [ -n "$results" ]; then
    mkdir -p "$out/results"
    (cd benchmarks/results && printf '%s\n' "$results" | xargs -d '\n' cp -p --parents -t "$out/results/")
    echo "epilogue: results -> $out/results ($(printf '%s\n' "$results" | wc -l) files in $(cd "$out/results" && find . -mindepth 1 -maxdepth 1 -type d | wc -l) folders)"
fi
if compgen -G "/tmp/sgl_qwen1m_bench/*.log" > /dev/null; then
    mkdir -p "$out/logs"
    for f in /tmp/sgl_qwen1m_bench/*.log; do
        tail -c 2000000 "$f" > "$out/logs/$(basename "$f")"
    done
    echo "epilogue: logs -> $out/logs"
fi
exit 0
