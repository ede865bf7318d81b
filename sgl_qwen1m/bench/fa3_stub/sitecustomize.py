"""Bench-only import shim: lets SGLang's in-tree ``dual_chunk_flash_attn`` backend import without FA3.

The offline GPU bundle leaves out sgl_kernel's FA3 library (``flash_ops``, 1.1 GB). SGLang 0.5.17's in-tree DCA
backend imports it at module load, although its sparse prefill (every chunk above ``sparse_attention_threshold``)
only calls ``sgl_kernel.sparse_flash_attn``. The e2e bench puts this folder first on ``PYTHONPATH`` of the
``dual_chunk_flash_attn`` workers only (and so of the scheduler processes they spawn), which makes Python run this
file at start-up.

It appends a finder to the END of ``sys.meta_path``: it is asked only when no real ``sgl_kernel.flash_ops`` exists,
and then supplies an empty module. No FA3 op gets registered, so any real FA3 call (dense prefill, decode) still
fails loudly with torch's "no attribute 'fwd'" error instead of computing anything.
"""

import importlib.abc
import importlib.machinery
import sys
import types

_NAME = "sgl_kernel.flash_ops"


class _EmptyFlashOps(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname != _NAME:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec):
        mod = types.ModuleType(spec.name)
        mod.__doc__ = "empty stand-in installed by sgl_qwen1m.bench.fa3_stub: FA3 ops are not available"
        mod.SGL_QWEN1M_FA3_STUB = True
        return mod

    def exec_module(self, module):
        return None


if not any(isinstance(f, _EmptyFlashOps) for f in sys.meta_path):
    sys.meta_path.append(_EmptyFlashOps())
