"""Source-level checks that the installed SGLang still offers what the plugin relies on (no GPU, no FlashInfer).

Everything here reads Python source with ``ast`` (SGLang's files, found with ``importlib.util.find_spec``, and our
own ``adapter/backend.py``, which cannot be imported without FlashInfer) and returns a list of problems, each a
sentence naming the file, the function and what differs. ``tests/test_conformance.py`` runs them against the
installed SGLang, and feeds them deliberately broken sources to show they catch a break. Also a command:
``python -m sgl_qwen1m.adapter.conformance [path/to/sglang]`` checks an unpacked wheel without installing it.
"""

from __future__ import annotations

import ast
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Iterable, Optional

OUR_BACKEND_CLASS = "Qwen1MAttnBackend"
_PLACEHOLDER = object()


def sglang_root() -> Path:
    spec = importlib.util.find_spec("sglang")
    if spec is None or spec.origin is None:
        raise ImportError("sglang is not installed")
    return Path(spec.origin).parent


def _class(tree: ast.Module, name: str) -> Optional[ast.ClassDef]:
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _raises_only(fn: ast.FunctionDef) -> bool:
    """Body is (docstring +) a single ``raise``: the base class's way of saying "a backend must implement this"."""
    body = [s for s in fn.body if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))]
    return len(body) == 1 and isinstance(body[0], ast.Raise)


def params(fn: ast.FunctionDef) -> dict:
    a = fn.args
    positional = a.posonlyargs + a.args
    n_required = len(positional) - len(a.defaults)
    return {
        "positional": [p.arg for p in positional],
        "required": [p.arg for p in positional[:n_required]],
        "kwonly": [p.arg for p in a.kwonlyargs],
        "kwonly_required": [p.arg for p, d in zip(a.kwonlyargs, a.kw_defaults) if d is None],
        "varargs": a.vararg is not None,
        "varkw": a.kwarg is not None,
    }


def signature_problems(where: str, base: ast.FunctionDef, ours: ast.FunctionDef) -> list[str]:
    """Ours must accept every call the base signature allows: same leading positional names, extra parameters
    optional, *args/**kwargs kept where the base has them, keyword-only parameters accepted."""
    b, o = params(base), params(ours)
    problems = []
    if o["positional"][: len(b["positional"])] != b["positional"] and not o["varargs"]:
        problems.append(f"{where}: positional parameters {o['positional']} do not start with upstream's "
                        f"{b['positional']}")
    extra = [p for p in o["required"] if p not in b["positional"]] + \
        [p for p in o["kwonly_required"] if p not in b["kwonly"]]
    if extra:
        problems.append(f"{where}: parameters {extra} are required here but upstream callers do not pass them")
    if b["varkw"] and not o["varkw"]:
        problems.append(f"{where}: upstream takes **kwargs (callers may pass extra keywords); ours does not")
    if b["varargs"] and not o["varargs"]:
        problems.append(f"{where}: upstream takes *args; ours does not")
    missing_kw = [k for k in b["kwonly"] if k not in o["kwonly"] + o["positional"] and not o["varkw"]]
    if missing_kw:
        problems.append(f"{where}: upstream keyword-only parameters {missing_kw} are not accepted")
    return problems


def backend_problems(base_source: str, our_source: str, unimplemented: dict[str, str]) -> list[str]:
    """Our backend class against ``AttentionBackend``: every base method that only raises is implemented (or
    listed in ``unimplemented`` with a reason), and every method we override keeps a compatible signature."""
    base_cls = _class(ast.parse(base_source), "AttentionBackend")
    ours_cls = _class(ast.parse(our_source), OUR_BACKEND_CLASS)
    if base_cls is None or ours_cls is None:
        return [f"class AttentionBackend or {OUR_BACKEND_CLASS} not found"]
    base, ours = _methods(base_cls), _methods(ours_cls)
    problems = []
    for name, fn in base.items():
        if _raises_only(fn) and name not in ours and name not in unimplemented:
            problems.append(f"AttentionBackend.{name}{tuple(params(fn)['positional'])} raises NotImplementedError "
                            f"upstream and {OUR_BACKEND_CLASS} does not implement it")
    for name in unimplemented:
        if name not in base:
            problems.append(f"compat lists AttentionBackend.{name} as deliberately unimplemented, but upstream "
                            "no longer has it: update the table")
    for name, fn in ours.items():
        if name in base and not name.startswith("__"):
            problems += signature_problems(f"{OUR_BACKEND_CLASS}.{name}", base[name], fn)
    return problems


def self_calls(source: str, attr: str) -> list[ast.Call]:
    """Every ``self.<attr>(...)`` call in ``source``."""
    return [n for n in ast.walk(ast.parse(source)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
            and n.func.attr == attr and isinstance(n.func.value, ast.Name) and n.func.value.id == "self"]


def call_site_problems(where: str, source: str, accepts: inspect.Signature, attr: str = "rotary_emb") -> list[str]:
    """Each ``self.<attr>(...)`` call in ``source`` must bind to ``accepts`` (positional count + keyword names)."""
    problems = []
    for call in self_calls(source, attr):
        if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
            problems.append(f"{where}:{call.lineno}: self.{attr}(*args/**kwargs) cannot be checked statically")
            continue
        kwargs = {k.arg: _PLACEHOLDER for k in call.keywords}
        try:
            accepts.bind(*[_PLACEHOLDER] * len(call.args), **kwargs)
        except TypeError as err:
            problems.append(f"{where}:{call.lineno}: self.{attr}({len(call.args)} positional, keywords "
                            f"{sorted(kwargs)}) does not fit our replacement{accepts}: {err}")
    return problems


def dca_model_files(root: Path, names: Iterable[str]) -> dict[str, Path]:
    """Model files under ``srt/models`` that read ``dual_chunk_attention_config`` (so build DualChunkRotaryEmbedding)
    and call ``self.rotary_emb``; ``names`` is compat's list, and a file outside it is reported by the caller."""
    found = {}
    for path in sorted((root / "srt" / "models").glob("*.py")):
        text = path.read_text()
        if "dual_chunk_attention_config" in text and "self.rotary_emb(" in text:
            found[path.stem] = path
    return found


def function_params(root: Path, relpath: str, qualname: str) -> Optional[list[str]]:
    """Positional parameter names of ``qualname`` (``f`` or ``Class.f``) in ``root/relpath``, None if absent."""
    path = root / relpath
    if not path.exists():
        return None
    scope: list = ast.parse(path.read_text()).body
    *owners, name = qualname.split(".")
    for owner in owners:
        cls = next((n for n in scope if isinstance(n, ast.ClassDef) and n.name == owner), None)
        if cls is None:
            return None
        scope = cls.body
    fn = next((n for n in scope if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == name), None)
    return None if fn is None else params(fn)["positional"]


def class_names(root: Path, relpath: str, cls_name: str) -> Optional[set[str]]:
    """Names class ``cls_name`` of ``root/relpath`` defines: methods, class-level fields and every ``self.<name>``
    it assigns; None if the file or the class is absent."""
    path = root / relpath
    cls = _class(ast.parse(path.read_text()), cls_name) if path.exists() else None
    if cls is None:
        return None
    names = set(_methods(cls))
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    names.update(n.attr for n in ast.walk(cls) if isinstance(n, ast.Attribute) and isinstance(n.ctx, ast.Store)
                 and isinstance(n.value, ast.Name) and n.value.id == "self")
    return names


def split_target(dotted: str) -> tuple[str, str]:
    """``sglang.srt.server_args.ServerArgs.f`` -> (``srt/server_args.py``, ``ServerArgs.f``): longest module prefix."""
    parts = dotted.split(".")
    for i in range(len(parts) - 1, 0, -1):
        module = ".".join(parts[:i])
        try:
            spec = importlib.util.find_spec(module)
        except ImportError:
            spec = None
        if spec is not None and spec.origin and spec.origin.endswith(".py") and "__init__" not in spec.origin:
            return "/".join(parts[1:i]) + ".py", ".".join(parts[i:])
    raise ImportError(f"no module prefix of {dotted} is importable")


def main(argv: list[str]) -> int:
    """Static checks of an unpacked SGLang (the backend and the RoPE call sites) against this checkout."""
    from sgl_qwen1m.adapter import compat
    from sgl_qwen1m.adapter.rope import replacement_signature

    root = Path(argv[0]) if argv else sglang_root()
    ours = (Path(__file__).parent / "backend.py").read_text()
    base = (root / "srt/layers/attention/base_attn_backend.py").read_text()
    unimplemented = next(r.value for r in compat.DIFFERENCES if r.name == "backend_unimplemented")
    problems = backend_problems(base, ours, unimplemented)
    for stem, path in dca_model_files(root, ()).items():
        problems += call_site_problems(f"srt/models/{path.name}", path.read_text(), replacement_signature())
    print("\n".join(problems) or f"{root}: no problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
