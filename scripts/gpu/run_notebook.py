"""Execute a notebook in a real Jupyter kernel (nbclient) and print every cell's output, for GPU-host logs.

Usage (GPU host, repo root, after ``source scripts/gpu/prologue.sh`` and with the Jupyter packages on PYTHONPATH):

    python3 scripts/gpu/run_notebook.py NOTEBOOK.ipynb [--out EXECUTED.ipynb] [--timeout 900]

The ``.ipynb`` is made from the jupytext ``.py`` on a machine with jupytext (the GPU host has none):
``jupytext --to ipynb notebooks/00_quickstart.py -o .gpu-jupyter/nb/00_quickstart.ipynb``. The kernel runs from
``notebooks/`` with this process's environment. Exit status 0 only when every cell ran without an error.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _text(output: dict) -> str:
    if output.get("output_type") == "stream":
        return output.get("text", "")
    if output.get("output_type") == "error":
        return f"{output.get('ename')}: {output.get('evalue')}\n" + "\n".join(output.get("traceback", [])) + "\n"
    data = output.get("data", {})
    if "text/plain" in data:
        return data["text/plain"] + "\n"
    return f"[{', '.join(data)}]\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebook", type=Path)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per cell")
    ap.add_argument("--cwd", type=Path, default=Path("notebooks"))
    a = ap.parse_args(argv)
    import nbclient
    import nbformat

    nb = nbformat.read(a.notebook, as_version=4)
    client = nbclient.NotebookClient(
        nb, timeout=a.timeout, kernel_name="python3", resources={"metadata": {"path": str(a.cwd)}}
    )
    t0, rc = time.monotonic(), 0
    try:
        client.execute(env=dict(os.environ))
    except nbclient.exceptions.CellExecutionError as e:
        rc = 1
        print(f"cell failed: {str(e)[:2000]}", flush=True)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        print(f"--- cell {i} (execution_count {cell.get('execution_count')})")
        print("".join(_text(o) for o in cell.get("outputs", [])), end="")
    print(f"--- {a.notebook.name}: {'ok' if rc == 0 else 'FAILED'} in {time.monotonic() - t0:.0f}s", flush=True)
    if a.out:
        nbformat.write(nb, a.out)
    return rc


if __name__ == "__main__":
    sys.exit(main())
