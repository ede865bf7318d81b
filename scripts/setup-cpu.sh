#!/usr/bin/env bash
# Build a CPU-only test environment for one SGLang version (no GPU needed):
#   * CPU torch 2.13.0 (a local wheel on the dev/CI machines; pip's constraint file caps torch at 2.14.1),
#   * real SGLang installed --no-deps, plus exactly the packages its `import sglang` -> load_plugins() ->
#     prepare_server_args(argv) path imports (a pinned file per version, see below),
#   * this package in editable mode with its test extra.
# SGLang 0.5.17 (default): .venv, scripts/requirements-cpu.txt. Any other verified version V (0.5.23):
# .venv-sglang-V, scripts/requirements-cpu-V.txt. SGLang >= 0.5.22 pins torch 2.14.1, but PyPI's 2.14.1 x86_64
# wheel is the CUDA 13 build (it imports only with ~3 GB of NVIDIA libraries) and no CPU 2.14.1 wheel is
# reachable here, so the CPU environments run torch 2.13.0 for every version (SGLang's argument path and the
# source-level conformance checks do not depend on it). TORCH_SPEC overrides.
# Idempotent: a stamp of this script, the pin file and pyproject.toml skips all work when nothing changed.
# Usage: bash scripts/setup-cpu.sh [SGLANG_VERSION]     (env: PYTHON=python3.11, QWEN1M_VENV=path/to/venv)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
sglang_version="${1:-0.5.17}"
if [[ "$sglang_version" == "0.5.17" ]]; then
    default_venv="$root/.venv" pins="scripts/requirements-cpu.txt"
else
    default_venv="$root/.venv-sglang-$sglang_version" pins="scripts/requirements-cpu-$sglang_version.txt"
fi
[[ -f "$pins" ]] || { echo "setup-cpu: no pin file $pins for SGLang $sglang_version" >&2; exit 2; }
grep -qx "sglang==$sglang_version" "$pins" || { echo "setup-cpu: $pins does not pin sglang==$sglang_version" >&2; exit 2; }
venv="${QWEN1M_VENV:-${SGL_QWEN1M_VENV:-$default_venv}}"
python="${PYTHON:-python3}"
torch_spec="${TORCH_SPEC:-torch==2.13.0}"
stamp="$venv/.sgl_qwen1m-setup-stamp"
# Tests that need SGLang fail instead of skipping when the interpreter's prefix holds this file.
expects_sglang="$venv/sgl_qwen1m-expects-sglang"

want="$(echo "$torch_spec" | cat - scripts/setup-cpu.sh "$pins" pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]] &&
    "$venv/bin/python" -c "import sgl_qwen1m as m, sys; sys.exit(not m.__file__.startswith(sys.argv[1]))" "$root/"; then
    echo "setup-cpu: $venv is up to date"
    exit 0
fi

t0=$SECONDS
if [[ ! -x "$venv/bin/python" ]]; then
    "$python" -m venv "$venv"
fi
vpy="$venv/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PIP_PROGRESS_BAR=off
pip_q=(-m pip install -q)
# pip warns about every absent per-project page of the local file:// indexes; hide only those lines.
quiet() { "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }

echo "setup-cpu: installing $torch_spec"
quiet "$vpy" "${pip_q[@]}" "$torch_spec"
echo "setup-cpu: installing SGLang $sglang_version (--no-deps) and the pinned set in $pins"
quiet "$vpy" "${pip_q[@]}" --no-deps -r "$pins"
echo "setup-cpu: installing sgl_qwen1m (editable, [test])"
quiet "$vpy" "${pip_q[@]}" -e ".[test]"

# PyPI's torchvision wheels for x86_64 are CUDA builds: with CPU torch their op library (_C.so, which links
# libtorch_cuda.so) cannot load, and torchvision 0.28.0's _meta_registrations.py then fails at import on its two
# unguarded `@torch.library.register_fake("torchvision::nms"/"qnms")` decorators; every other op there is guarded
# by `_has_ops()`. SGLang imports torchvision at module level (srt/utils/common.py:94). Only when that failure
# occurs, route those two decorators through the file's own guarded `register_meta`. No torchvision op is used.
"$vpy" - <<'PY'
import importlib.util, pathlib, subprocess, sys

probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
if probe.returncode == 0:
    sys.exit(0)
if "operator torchvision::nms does not exist" not in probe.stderr:
    sys.exit("setup-cpu: import torchvision failed:\n" + probe.stderr[-3000:])
path = pathlib.Path(importlib.util.find_spec("torchvision").origin).parent / "_meta_registrations.py"
text = path.read_text()
for op in ("nms", "qnms"):
    text = text.replace(f'@torch.library.register_fake("torchvision::{op}")', f'@register_meta("{op}")')
path.write_text(text)
probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True, text=True)
if probe.returncode != 0:
    sys.exit("setup-cpu: torchvision still fails to import:\n" + probe.stderr[-3000:])
print(f"setup-cpu: guarded torchvision's nms/qnms fake registrations in {path} (no op library with CPU torch)")
PY

echo "setup-cpu: checking SGLang's plugin and argument path"
"$vpy" - <<'PY'
import importlib.metadata as md

eps = [ep for ep in md.entry_points(group="sglang.srt.plugins") if ep.name == "qwen1m"]
assert eps and eps[0].value == "sgl_qwen1m.adapter.plugin:register", eps
import torch
import sgl_qwen1m.adapter.compat as compat
from sglang.srt.server_args import prepare_server_args  # noqa: F401  (the import path launch_server uses)

print(f"setup-cpu: sglang {compat.installed_version()}, torch {torch.__version__}, cuda: {torch.cuda.is_available()}")
PY

touch "$expects_sglang"
echo "$want" >"$stamp"
echo "setup-cpu: done in $((SECONDS - t0)) s ($venv)"
