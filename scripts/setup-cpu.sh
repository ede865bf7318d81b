#!/usr/bin/env bash
# Build the CPU-only test environment in .venv (no GPU needed):
#   * CPU torch 2.13.0 (a local wheel on the dev/CI machines; pip's constraint file caps torch at 2.14.1),
#   * real SGLang 0.5.17 installed --no-deps, plus exactly the packages its `import sglang` ->
#     load_plugins() -> prepare_server_args(argv) path imports (scripts/requirements-cpu.txt, pinned),
#   * this package in editable mode with its test extra.
# Idempotent: a stamp of this script, the pin file and pyproject.toml skips all work when nothing changed.
# Usage: bash scripts/setup-cpu.sh        (env: PYTHON=python3.11, SGL_QWEN1M_VENV=path/to/venv)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
venv="${SGL_QWEN1M_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
pins="scripts/requirements-cpu.txt"
torch_spec="torch==2.13.0"
stamp="$venv/.sgl_qwen1m-setup-stamp"
# Tests that need SGLang fail instead of skipping when the interpreter's prefix holds this file.
expects_sglang="$venv/sgl_qwen1m-expects-sglang"

want="$(cat scripts/setup-cpu.sh "$pins" pyproject.toml | sha256sum | cut -d' ' -f1)"
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
echo "setup-cpu: installing SGLang 0.5.17 (--no-deps) and the pinned set in $pins"
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
from sglang.srt.server_args import prepare_server_args  # noqa: F401  (the import path launch_server uses)

print(f"setup-cpu: sglang {md.version('sglang')}, torch {torch.__version__}, cuda: {torch.cuda.is_available()}")
PY

touch "$expects_sglang"
echo "$want" >"$stamp"
echo "setup-cpu: done in $((SECONDS - t0)) s ($venv)"
