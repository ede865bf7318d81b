# shellcheck shell=bash
# Source at the start of every GPU call, from the repository root:
#
#     source scripts/gpu/prologue.sh && python -m sgl_qwen1m bench ... ; bash scripts/gpu/epilogue.sh
#
# 1. unpacks .gpu-bundle/site.tar.xz into /tmp/site (skipped when this bundle is already there: a warm host);
# 2. restores the JIT caches from .gpu-bundle/flashinfer-jit.tgz (or .txz) into ~/.cache (FlashInfer .so files and SGLang's
#    tvm-ffi .so files), and links each FlashInfer module into FlashInfer's AOT directory
#    (/tmp/site/flashinfer/data/aot/<name>/<name>.so). FlashInfer 0.6.15 reruns ninja for every JIT module it finds
#    in ~/.cache (flashinfer/jit/core.py: build_and_load -> build -> run_ninja), and with only the .so files carried
#    ninja would recompile; a module present in the AOT directory is loaded as is. Set SGLQ_JIT_AOT=0 to skip the
#    links, SGLQ_JIT_AOT_SKIP=<regex> to leave out modules whose sources change between runs (default: qwen1m);
# 3. registers sgl_qwen1m's entry points (pyproject.toml) with a small .dist-info in /tmp/site, because the
#    package runs from PYTHONPATH, not from a pip install, and SGLang finds plugins through entry points;
# 4. exports PYTHONPATH=/tmp/site:$PWD SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
#    TRANSFORMERS_OFFLINE=1, and prints one line about the GPU.
# It never exits the calling shell; on a fatal problem it prints why and returns 1.

_sglq_prologue() {
    local t0 root bundle site stamp want fi_ver n gpu jit f
    t0=$(date +%s)
    root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
    bundle="$root/.gpu-bundle"
    site=/tmp/site
    if [ ! -f "$bundle/site.tar.xz" ]; then
        echo "prologue: $bundle/site.tar.xz missing (build it with shared/gpu/make-bundle.sh)" >&2
        return 1
    fi
    want="$(stat -c '%s' "$bundle/site.tar.xz")-$(head -c 1048576 "$bundle/site.tar.xz" | md5sum | cut -c1-16)"
    stamp="$site/.sgl_qwen1m_bundle"
    if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
        rm -rf "$site" && mkdir -p "$site" || return 1
        if ! tar xJf "$bundle/site.tar.xz" -C "$site"; then
            echo "prologue: unpacking the bundle failed" >&2
            return 1
        fi
        echo "$want" > "$stamp"
        echo "prologue: bundle unpacked into $site in $(( $(date +%s) - t0 ))s"
    else
        echo "prologue: bundle already in $site"
    fi

    jit=""
    for f in "$bundle/flashinfer-jit.txz" "$bundle/flashinfer-jit.tgz"; do
        [ -f "$f" ] && { jit="$f"; break; }
    done
    if [ -n "$jit" ]; then
        mkdir -p "$HOME/.cache"
        want="$(stat -c '%s' "$jit")-$(md5sum < "$jit" | cut -c1-16)"
        if [ "$(cat "$HOME/.cache/.sgl_qwen1m_jit" 2>/dev/null)" != "$want" ]; then
            tar xf "$jit" -C "$HOME/.cache" && echo "$want" > "$HOME/.cache/.sgl_qwen1m_jit"
            echo "prologue: JIT cache restored from $(basename "$jit") ($(tar tf "$jit" | grep -c '\.so$') .so files)"
        fi
    else
        echo "prologue: no .gpu-bundle/flashinfer-jit.tgz: FlashInfer compiles its kernels (~230 s for a Qwen2 model)"
    fi
    fi_ver="$(ls -d "$site"/flashinfer_python-*.dist-info 2>/dev/null | head -n1 | sed 's/.*flashinfer_python-\(.*\)\.dist-info/\1/')"
    if [ "${SGLQ_JIT_AOT:-1}" = 1 ] && [ -n "$fi_ver" ] && [ -d "$site/flashinfer" ]; then
        n=0
        for so in "$HOME"/.cache/flashinfer/"$fi_ver"/*/cached_ops/*/*.so; do
            [ -f "$so" ] || continue
            local name dir
            name="$(basename "$so" .so)"
            dir="$(basename "$(dirname "$so")")"
            [ "$name" = "$dir" ] || continue
            if [ -n "${SGLQ_JIT_AOT_SKIP-qwen1m}" ] && echo "$name" | grep -Eq "${SGLQ_JIT_AOT_SKIP-qwen1m}"; then
                continue
            fi
            mkdir -p "$site/flashinfer/data/aot/$name" && ln -sfn "$so" "$site/flashinfer/data/aot/$name/$name.so" && n=$((n + 1))
        done
        echo "prologue: $n FlashInfer modules linked as AOT (flashinfer $fi_ver)"
    fi

    export PYTHONPATH="$site:$root${PYTHONPATH:+:$PYTHONPATH}"
    export SGLANG_SKIP_SGL_KERNEL_VERSION_CHECK=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

    _SGLQ_ROOT="$root" python3 - <<'EOF' || echo "prologue: entry point registration failed (plugins may not load)" >&2
import importlib.metadata as md, os, pathlib, re, shutil, sys
root, site = pathlib.Path(os.environ["_SGLQ_ROOT"]), pathlib.Path("/tmp/site")
pp = root / "pyproject.toml"
if not pp.exists():
    print("prologue: no pyproject.toml: sgl_qwen1m entry points not registered"); sys.exit(0)
import tomllib
project = tomllib.loads(pp.read_text()).get("project", {})
name = project.get("name", "sgl_qwen1m")
try:
    where = pathlib.Path(str(md.distribution(name).locate_file("")))
    if where.resolve() != site.resolve():
        print(f"prologue: {name} is installed ({where}); entry points come from there"); sys.exit(0)
except md.PackageNotFoundError:
    pass
version = project.get("version")
if not version:
    m = re.search(r'__version__\s*=\s*"([^"]+)"', (root / "sgl_qwen1m" / "__init__.py").read_text())
    version = m.group(1) if m else "0"
norm = re.sub(r"[-_.]+", "_", name)
for old in site.glob(f"{norm}-*.dist-info"):
    shutil.rmtree(old)
dist = site / f"{norm}-{version}.dist-info"
dist.mkdir()
(dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
groups = project.get("entry-points", {})
(dist / "entry_points.txt").write_text("".join(
    f"[{g}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for g, eps in groups.items()))
(dist / "top_level.txt").write_text("sgl_qwen1m\n")
print(f"prologue: registered {name} {version} entry points: {', '.join(f'{g}:{k}' for g, e in groups.items() for k in e) or 'none'}")
EOF

    gpu="$(nvidia-smi --query-gpu=index,name,memory.used,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -n1)"
    echo "prologue: GPU ${gpu:-unknown (nvidia-smi failed)}; ready in $(( $(date +%s) - t0 ))s"
    return 0
}
_sglq_prologue
_sglq_rc=$?
unset -f _sglq_prologue
[ "$_sglq_rc" = 0 ]
