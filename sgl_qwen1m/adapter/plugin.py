"""SGLang general plugin: registers the ``qwen1m`` attention backend and its ServerArgs hooks.

Declared in ``pyproject.toml`` as::

    [project.entry-points."sglang.srt.plugins"]
    qwen1m = "sgl_qwen1m.adapter.plugin:register"

SGLang's ``load_plugins()`` calls ``register()`` with no arguments in every process it starts (launcher, ``Engine``,
each scheduler), then ``HookRegistry.apply_hooks()``. ``register()`` is therefore idempotent and cheap: it touches no
CUDA and imports the backend (and with it FlashInfer) only when SGLang's model runner builds it. It uses only
SGLang's documented extension points: ``add_attention_backend_choices``, ``register_attention_backend`` and
``HookRegistry`` (four hooks, each registered only if its target exists in the installed SGLang, logged otherwise:
the DCA guard, the ServerArgs launch checks, the token-id check, the sparse-file JSON error). Call ``sglang.srt.plugins.load_plugins()`` rather than ``register()`` when building ``ServerArgs``
yourself (e.g. before ``sgl.Runtime``): that also applies the hooks.

Note that ``load_plugins()`` only *logs* exceptions raised here; a failed registration then shows up as
``invalid choice: 'qwen1m'``. Look for ``sgl_qwen1m`` in the log.
"""

from __future__ import annotations

import logging
import os

from sgl_qwen1m.adapter.hooks import (
    ATTN_COMPAT_TARGET,
    DCA_GUARD_TARGET,
    QWEN1M,
    SPARSE_JSON_TARGET,
    VALIDATE_REQUEST_TARGET,
)

logger = logging.getLogger(__name__)

SUPPORTED_SGLANG = ">=0.5.17,<0.5.24"  # first untested release is the upper bound
TESTED_SGLANG = ("0.5.17",)
ALLOW_UNTESTED_ENV = "SGL_QWEN1M_ALLOW_UNTESTED_SGLANG"

# Hook targets registered by this process (HookRegistry has no public query, and registering twice would wrap twice).
_registered_hooks: set = set()


def check_sglang_version(installed: str, allow_untested: bool = False) -> bool:
    """True if ``installed`` is in SUPPORTED_SGLANG; otherwise raise RuntimeError (or warn and return False)."""
    from packaging.specifiers import SpecifierSet
    from packaging.version import InvalidVersion, Version

    try:
        ok = SpecifierSet(SUPPORTED_SGLANG).contains(Version(installed), prereleases=True)
    except InvalidVersion:
        ok = False
    if ok:
        return True
    msg = (
        f"sgl_qwen1m supports SGLang {SUPPORTED_SGLANG} (tested: {', '.join(TESTED_SGLANG)}), but SGLang "
        f"{installed} is installed. Install a supported version, e.g. pip install 'sglang=={TESTED_SGLANG[-1]}', "
        f"or set {ALLOW_UNTESTED_ENV}=1 to try anyway."
    )
    if not allow_untested:
        raise RuntimeError(msg)
    logger.warning("%s Continuing because %s is set.", msg, ALLOW_UNTESTED_ENV)
    return False


def installed_sglang_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:  # e.g. a source checkout on PYTHONPATH
        from sglang.version import __version__

        return __version__


def create_qwen1m_backend(runner):
    """Factory stored in SGLang's ATTENTION_BACKENDS; called by the model runner in the scheduler process."""
    from sgl_qwen1m.adapter.backend import Qwen1MAttnBackend

    return Qwen1MAttnBackend(runner)


def _target_exists(dotted: str) -> bool:
    import pkgutil

    module_path, _, attr = dotted.rpartition(".")
    try:
        return hasattr(pkgutil.resolve_name(module_path), attr)
    except (ImportError, AttributeError, ValueError):
        return False


def _register_hook(target: str, fn, hook_type, if_missing: str | None = None) -> bool | None:
    """Register ``fn`` on ``target`` once; skip (and warn with ``if_missing``, if given) when the target is absent."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    if target in _registered_hooks:
        return None
    if not _target_exists(target):
        log = logger.warning if if_missing else logger.info
        log("sgl_qwen1m: hook target %s does not exist in this SGLang; hook skipped. %s", target, if_missing or "")
        return False
    HookRegistry.register(target, fn, hook_type)
    _registered_hooks.add(target)
    return True


def register() -> None:
    """Entry point for the ``sglang.srt.plugins`` group. Safe to call more than once."""
    check_sglang_version(installed_sglang_version(), allow_untested=os.environ.get(ALLOW_UNTESTED_ENV) == "1")

    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.plugins.hook_registry import HookType
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    from sgl_qwen1m.adapter import hooks

    if QWEN1M not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([QWEN1M])
    if ATTENTION_BACKENDS.get(QWEN1M) is not create_qwen1m_backend:
        register_attention_backend(QWEN1M)(create_qwen1m_backend)
    # SGLang 0.5.23 dropped the in-tree DCA guard, so there is nothing to relax there.
    _register_hook(DCA_GUARD_TARGET, hooks.dca_guard_around, HookType.AROUND)
    # A private ServerArgs handler (present in 0.5.17); without it qwen1m's constraints are not enforced.
    _register_hook(
        ATTN_COMPAT_TARGET,
        hooks.attention_compat_after,
        HookType.AFTER,
        if_missing="qwen1m's ServerArgs constraints are NOT enforced: pass --cuda-graph-backend-prefill disabled, "
        "keep --enable-mixed-chunk off and do not use speculative decoding.",
    )
    # Token ids are range-checked before they reach the GPU (only on qwen1m servers; see hooks.validate_request_around).
    _register_hook(
        VALIDATE_REQUEST_TARGET,
        hooks.validate_request_around,
        HookType.AROUND,
        if_missing="token ids are NOT range-checked: an id outside the vocabulary can crash the server.",
    )
    # Only renames SGLang's bare JSONDecodeError for a broken sparse_attention_config.json.
    _register_hook(SPARSE_JSON_TARGET, hooks.sparse_file_json_around, HookType.AROUND)
