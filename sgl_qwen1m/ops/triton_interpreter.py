"""Triton-interpreter fix for loaded scalars used as loop bounds (CPU tests only; never touches compiled kernels).

Triton 3.6's interpreter turns a loaded scalar into a Python int with ``int(ndarray)``, which NumPy >= 2.4 rejects
for the 1-element arrays it holds, so ``for i in range(0, n)`` with ``n = tl.load(...)`` fails. The fix patches the
interpreter's private ``triton.runtime.interpreter._patch_lang_tensor`` so that ``__index__`` reads the element with
NumPy instead. Because that function is private, the patch applies only to Triton versions where it was checked
(:data:`KNOWN_VERSIONS`) and only when its signature is the expected ``(tensor, scope)``.
"""

from __future__ import annotations

import inspect
import os

__all__ = ["KNOWN_VERSIONS", "install_scalar_index_shim"]

KNOWN_VERSIONS = ("3.4", "3.5", "3.6")  # major.minor of the Triton releases whose interpreter this patch fits
_MARK = "_sgl_qwen1m_scalar_index_shim"


def install_scalar_index_shim() -> bool:
    """Patch the interpreter when ``TRITON_INTERPRET=1`` and the installed Triton is known; idempotent.

    Returns
    -------
    bool
        True when the patch is in place (now or from an earlier call), False when it does not apply (interpreter
        off, Triton or NumPy missing, an unknown Triton version, or a different private function).
    """
    if os.environ.get("TRITON_INTERPRET") != "1":
        return False
    try:
        import numpy as np
        import triton
        from triton.runtime import interpreter
    except ImportError:
        return False
    if ".".join(triton.__version__.split(".")[:2]) not in KNOWN_VERSIONS:
        return False
    orig = getattr(interpreter, "_patch_lang_tensor", None)
    if orig is None:
        return False
    if getattr(orig, _MARK, False):
        return True
    try:
        params = list(inspect.signature(orig).parameters)
    except (TypeError, ValueError):
        return False
    if params != ["tensor", "scope"]:
        return False

    def patched(tensor, scope):
        orig(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    setattr(patched, _MARK, True)
    interpreter._patch_lang_tensor = patched
    return True
