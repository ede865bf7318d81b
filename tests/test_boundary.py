"""Import boundaries of the package (static AST walk plus one import in a fresh interpreter).

* Only ``sgl_qwen1m/adapter/`` (and the benchmark baseline ``bench/sgl_kernel_sparse.py``) may import SGLang
  (``sglang``, ``sgl_kernel``).
* Only the operators' kernel modules (``ops/*/attention.py``, ``ops/*/rope.py``, ``ops/sparse/estimate.py``,
  ``ops/sparse/estimate_gqa.py``, ``ops/sparse/select.py``, ``ops/sparse/_triton.py``), ``ops/triton_interpreter.py`` and the kernel benchmarks
  (``bench/ops.py``, ``bench/ops_sparse.py``) may import FlashInfer or Triton.
* ``import sgl_qwen1m, sgl_qwen1m.config, sgl_qwen1m.ops.dca.plan`` pulls in none of them and leaves CUDA
  uninitialised, so the math and config layers stay testable on CPU and cheap to import from the plugin.

Imports inside functions count too, as do ``importlib.import_module("...")`` / ``__import__("...")`` calls with a
literal name; ``if TYPE_CHECKING:`` blocks do not (they never run). No SGLang needed.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "sgl_qwen1m"

SGLANG_MODULES = ("sglang", "sgl_kernel")
KERNEL_MODULES = ("flashinfer", "triton")
SGLANG_ALLOWED = ("sgl_qwen1m/adapter/*", "sgl_qwen1m/bench/sgl_kernel_sparse.py")
# bench/ops.py times the plain FlashInfer decode as the baseline it compares against.
KERNEL_ALLOWED = (
    "sgl_qwen1m/ops/*/attention.py",
    "sgl_qwen1m/ops/*/rope.py",
    "sgl_qwen1m/ops/sparse/estimate.py",
    "sgl_qwen1m/ops/sparse/estimate_gqa.py",
    "sgl_qwen1m/ops/sparse/select.py",
    "sgl_qwen1m/ops/sparse/_triton.py",
    "sgl_qwen1m/ops/triton_interpreter.py",
    "sgl_qwen1m/bench/ops.py",
    "sgl_qwen1m/bench/ops_sparse.py",
)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _runtime_nodes(node: ast.AST):
    """Every node under ``node`` except the bodies of ``if TYPE_CHECKING:`` blocks (never executed)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.If) and _is_type_checking(child.test):
            for sub in child.orelse:
                yield sub
                yield from _runtime_nodes(sub)
            continue
        yield child
        yield from _runtime_nodes(child)


def _imported_modules(tree: ast.AST):
    """Yield (top-level module, line) for every runtime import and literal dynamic import in ``tree``."""
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module.split(".")[0], node.lineno
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value.split(".")[0], node.lineno


def _violations(modules, allowed):
    found = []
    for path in sorted(PKG.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        if any(fnmatch(rel, pattern) for pattern in allowed):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        found += [f"{rel}:{line} imports {mod}" for mod, line in _imported_modules(tree) if mod in modules]
    return found


def test_ast_walker_sees_nested_and_dynamic_imports_but_not_type_checking_ones():
    src = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import sgl_kernel\nelse:\n    import numpy\n"
        "def f():\n    import sglang.srt\n    from triton import jit\n    importlib.import_module('flashinfer.x')\n"
    )
    found = sorted(m for m, _ in _imported_modules(ast.parse(src)))
    assert found == ["flashinfer", "numpy", "sglang", "triton", "typing"]


def test_only_adapter_imports_sglang():
    found = _violations(SGLANG_MODULES, SGLANG_ALLOWED)
    assert not found, f"SGLang may only be imported in {SGLANG_ALLOWED}:\n" + "\n".join(found)


def test_only_kernel_modules_import_flashinfer_or_triton():
    found = _violations(KERNEL_MODULES, KERNEL_ALLOWED)
    assert not found, f"FlashInfer/Triton only in {KERNEL_ALLOWED}:\n" + "\n".join(found)


_PROBE = """
import json, sys
import sgl_qwen1m, sgl_qwen1m.config, sgl_qwen1m.ops.dca.plan
heavy = sorted(m for m in sys.modules if m.split(".")[0] in {"sglang", "sgl_kernel", "triton", "flashinfer"}
               or m.startswith("sgl_qwen1m.adapter"))
torch = sys.modules.get("torch")
cuda_initialized = bool(torch is not None and torch.cuda.is_initialized())
print(json.dumps({"heavy": heavy, "cuda_initialized": cuda_initialized, "file": sgl_qwen1m.__file__}))
"""


def test_core_import_is_light_and_does_not_initialise_cuda():
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).resolve().is_relative_to(PKG), result["file"]
    assert result["heavy"] == [], f"importing the core modules pulled in: {result['heavy']}"
    assert result["cuda_initialized"] is False


# ---------------------------------------------------------------- folder-level layering
#
# Units are sgl_qwen1m's top-level modules and folders (config, args, sizing, ops, adapter, model, evals, bench, api,
# frontend, cli); every ``__main__.py`` is an entry point outside its folder's unit. ``attention`` is the old name of
# ``ops`` and counts as ``ops`` (a missing folder is simply absent). Allowed direction, lowest first:
#   config, args, sizing <- ops <- model <- evals <- bench <- cli <- __main__      (adapter: above ops and config)
#   scheduler: above config, sizing and ops (plain Python; never adapter or bench)
#   refine (sparsity refinement): above ops, model and sizing; beside evals (neither imports the other); below cli

_ALIASES = {"attention": "ops"}
_ENTRY = "__main__"
_LAYER_RULES = {  # unit -> units it must never import (None: it may import nothing of sgl_qwen1m but itself)
    "config": None,
    "args": None,
    "sizing": None,
    "model": {"evals", "bench", "api", "cli", "refine"},
    "evals": {"bench", "cli", "refine"},
    "refine": {"evals", "bench", "api", "cli", "adapter", "frontend"},
    "api": {"bench", "evals", "cli"},
}
# scheduler: plain-Python step costs and policy; it may use config, sizing and the ops' host planning only.
_SCHEDULER_MAY_IMPORT = {"config", "sizing", "ops"}
_OPS_MAY_IMPORT = {"ops", "config"}


def _unit_of(path: Path) -> str:
    rel = path.relative_to(PKG)
    if rel.name == "__main__.py":
        return _ENTRY
    head = rel.parts[0]
    head = head[: -len(".py")] if len(rel.parts) == 1 else head
    return _ALIASES.get(head, head)


def _sgl_targets(tree: ast.AST, path: Path):
    """Yield (dotted sgl_qwen1m module, line) for every runtime import of the package in ``tree`` (``path``'s file),
    relative imports resolved; ``from sgl_qwen1m.x import y`` also yields ``sgl_qwen1m.x.y`` (y may be a module)."""
    package = list(path.relative_to(ROOT).parts[:-1])  # the package a relative import starts from
    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield module, node.lineno
            for alias in node.names:
                yield f"{module}.{alias.name}", node.lineno
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value, node.lineno


def _unit_graph():
    """{(importer unit, imported unit): ["file:line", ...]} over all of sgl_qwen1m, self-imports left out."""
    units = {_unit_of(p) for p in PKG.rglob("*.py")}
    edges: dict[tuple[str, str], list[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        src = _unit_of(path)
        rel = path.relative_to(ROOT).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=rel)
        for module, line in _sgl_targets(tree, path):
            parts = module.split(".")
            if parts[0] != "sgl_qwen1m" or len(parts) < 2:
                continue
            dst = _ALIASES.get(parts[1], parts[1])
            where = edges.setdefault((src, dst), []) if dst in units and dst != src else None
            if where is not None and f"{rel}:{line}" not in where:
                where.append(f"{rel}:{line}")
    return units, edges


def _cycle(units, edges):
    """One import cycle between units as a list ``[a, b, ..., a]``, or None."""
    succ = {u: sorted(d for s, d in edges if s == u) for u in units}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u):
        state[u] = 1
        stack.append(u)
        for v in succ[u]:
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        state[u] = 2
        stack.pop()
        return None

    for u in sorted(units):
        if u not in state and (found := visit(u)):
            return found
    return None


def test_layering_helpers_resolve_relative_imports_and_find_cycles():
    path = PKG / "bench" / "cli.py"
    tree = ast.parse("from .backends import SPECS\nfrom ..sizing import GIB\nfrom sgl_qwen1m import cli\n")
    got = {m for m, _ in _sgl_targets(tree, path)}
    assert {"sgl_qwen1m.bench.backends", "sgl_qwen1m.sizing", "sgl_qwen1m.cli"} <= got
    assert _unit_of(PKG / "bench" / "__main__.py") == _ENTRY and _unit_of(PKG / "api.py") == "api"
    assert _cycle({"a", "b", "c"}, {("a", "b"): [], ("b", "c"): [], ("c", "a"): []}) == ["a", "b", "c", "a"]
    assert _cycle({"a", "b"}, {("a", "b"): []}) is None


def test_units_import_each_other_in_one_direction():
    units, edges = _unit_graph()
    for expected in ("config", "args", "sizing", "ops", "scheduler", "adapter", "model", "evals", "bench", "api",
                     "frontend", "cli", "refine"):
        assert expected in units, f"unit {expected} is missing from sgl_qwen1m"

    def where(src, dst):
        return f"{src} -> {dst} ({', '.join(edges[(src, dst)])})"

    found = []
    for (src, dst) in sorted(edges):
        banned = _LAYER_RULES.get(src, set())
        if banned is None or dst in banned:
            found.append(where(src, dst))
        if src == "ops" and dst not in _OPS_MAY_IMPORT:
            found.append(where(src, dst))
        if src == "scheduler" and dst not in _SCHEDULER_MAY_IMPORT:
            found.append(where(src, dst))
        if dst == "cli" and src != _ENTRY:
            found.append(where(src, dst) + ": only __main__.py files may import cli")
    assert not found, "layering violations:\n" + "\n".join(found)
    cycle = _cycle(units, edges)
    assert cycle is None, "import cycle between units: " + " -> ".join(cycle) + "\n" + "\n".join(
        where(a, b) for a, b in zip(cycle, cycle[1:])
    )


def test_no_empty_package():
    """A folder with an ``__init__.py`` and nothing else is a placeholder, not a package: delete it."""
    empty = []
    for init in sorted(PKG.rglob("__init__.py")):
        others = [p for p in init.parent.iterdir() if p.name not in ("__init__.py", "__pycache__")]
        if not others:
            empty.append(init.parent.relative_to(ROOT).as_posix())
    assert not empty, f"empty packages: {empty}"
