#!/usr/bin/env bash
# Builds .gpu-jupyter/jupyter.tar.xz (~0.8 MB): nbclient, ipykernel and what they need on the GPU host's Python 3.12
# that shared/gpu/make-bundle.sh does not ship, plus .gpu-jupyter/nb/00_quickstart.ipynb (jupytext output; the host
# has no jupytext). Used by scripts/gpu/frontend_checks.sh. Run on the development machine (it reaches PyPI).
# pyyaml is left out (the host has it); the carry limit is 64 MiB with the main bundle.
set -euo pipefail
cd "$(dirname "$0")/../.."
work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
plat=(--only-binary=:all: --python-version 3.12 --implementation cp)
for p in manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_28_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    plat+=(--platform "$p")
done
python3 -m pip download -q --no-deps "${plat[@]}" -d "$work/whl" nbclient nbformat jupyter_client jupyter_core \
    ipykernel tornado comm psutil platformdirs fastjsonschema python-dateutil six
mkdir -p "$work/site" .gpu-jupyter/nb
for w in "$work"/whl/*.whl; do python3 -m zipfile -e "$w" "$work/site"; done
tar cf - -C "$work/site" . | xz -9 > .gpu-jupyter/jupyter.tar.xz
.venv/bin/jupytext --to ipynb notebooks/00_quickstart.py -o .gpu-jupyter/nb/00_quickstart.ipynb
ls -la .gpu-jupyter/jupyter.tar.xz .gpu-jupyter/nb/00_quickstart.ipynb
