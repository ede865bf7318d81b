"""SGLang general plugin: registers the ``qwen1m`` attention backend and its ServerArgs hooks.

Declared in ``pyproject.toml`` as::

    [project.entry-points."sglang.srt.plugins"]
    qwen1m = "sgl_qwen1m.adapter.plugin:register"

SGLang's ``load_plugins()`` calls ``register()`` with no arguments in every process it starts (launcher, ``Engine``,
each scheduler), then ``HookRegistry.apply_hooks()``. ``register()`` is therefore idempotent and cheap: it touches no
CUDA and imports the backend (and with it FlashInfer) only when SGLang's model runner builds it. It uses only
SGLang's documented extension points: ``add_attention_backend_choices``, ``register_attention_backend`` and
``HookRegistry`` (four hooks, each registered only if its target exists in the installed SGLang, logged otherwise:
the DCA guard, the ServerArgs launch checks, the token-id check, the sparse-file JSON error; with
``QWEN1M_SCHEDULER=1`` also the three of the chunked-prefill scheduler, ``adapter/scheduler_hook.py``). Call
``sglang.srt.plugins.load_plugins()`` rather than ``register()`` when building ``ServerArgs`` yourself (e.g. before
``sgl.Runtime``): that also applies the hooks.

Note that ``load_plugins()`` only *logs* exceptions raised here; a failed registration then shows up as
``invalid choice: 'qwen1m'``. Look for ``sgl_qwen1m`` in the log.
"""

from __future__ import annotations

import logging
import os

from sgl_qwen1m.adapter import compat
from sgl_qwen1m.adapter.hooks import QWEN1M

logger = logging.getLogger(__name__)

# Exactly the verified releases (sgl_qwen1m.adapter.compat.VERIFIED); anything else is refused unless overridden.
TESTED_SGLANG = tuple(compat.VERIFIED)
SUPPORTED_SGLANG = " or ".join(TESTED_SGLANG)  # exact releases; pyproject: [serve] and [serve-0.5.23]
ALLOW_UNTESTED_ENV = "QWEN1M_ALLOW_UNTESTED_SGLANG"
# SGLang warns that every SGL_* variable is deprecated (it owns that prefix); still honoured, with a warning.
DEPRECATED_ALLOW_UNTESTED_ENV = "SGL_QWEN1M_ALLOW_UNTESTED_SGLANG"

# Hook targets registered by this process (HookRegistry has no public query, and registering twice would wrap twice).
_registered_hooks: set = set()


def allow_untested_from_env(environ=os.environ) -> bool:
    if environ.get(ALLOW_UNTESTED_ENV) == "1":
        return True
    if environ.get(DEPRECATED_ALLOW_UNTESTED_ENV) == "1":
        logger.warning("sgl_qwen1m: %s is deprecated (SGLang reserves SGL_*); set %s=1 instead.",
                       DEPRECATED_ALLOW_UNTESTED_ENV, ALLOW_UNTESTED_ENV)
        return True
    return False


def check_sglang_version(installed: str, allow_untested: bool = False) -> bool:
    """True if ``installed`` is a verified SGLang release; otherwise raise RuntimeError (or warn and return False)."""
    from packaging.version import InvalidVersion, Version

    try:
        ok = any(Version(installed) == Version(v) for v in TESTED_SGLANG)
    except InvalidVersion:
        ok = False
    if ok:
        return True
    verified = ", ".join(f"{v} ({how})" for v, how in compat.VERIFIED.items())
    msg = (
        f"sgl_qwen1m supports SGLang {SUPPORTED_SGLANG}, verified: {verified}; but SGLang {installed} is installed; its ServerArgs "
        f"hooks and backend API are not checked there. Install a verified version, e.g. pip install "
        f"'sglang=={TESTED_SGLANG[0]}' (GPU) or see the README's support matrix, or set {ALLOW_UNTESTED_ENV}=1 "
        "to try anyway."
    )
    if not allow_untested:
        raise RuntimeError(msg)
    logger.warning("%s Continuing because %s is set.", msg, ALLOW_UNTESTED_ENV)
    return False


def installed_sglang_version() -> str:
    return compat.installed_version()


def create_qwen1m_backend(runner):
    """Factory stored in SGLang's ATTENTION_BACKENDS; called by the model runner in the scheduler process."""
    from sgl_qwen1m.adapter.backend import Qwen1MAttnBackend

    return Qwen1MAttnBackend(runner)


def _register_hook(target: str, fn, hook_type, if_missing: str | None = None) -> bool | None:
    """Register ``fn`` on ``target`` once; skip (and warn with ``if_missing``, if given) when the target is absent."""
    from sglang.srt.plugins.hook_registry import HookRegistry

    if target in _registered_hooks:
        return None
    if not compat.dotted_exists(target):
        log = logger.warning if if_missing else logger.info
        log("sgl_qwen1m: hook target %s does not exist in this SGLang; hook skipped. %s", target, if_missing or "")
        return False
    HookRegistry.register(target, fn, hook_type)
    _registered_hooks.add(target)
    return True


def _register_resolution_hook(step: str, fn) -> bool | None:
    """SGLang >= 0.5.20: wrap a named resolution step once (``register_resolution_hook``)."""
    from sglang.srt.arg_groups.resolution_hooks import _HOOKS, register_resolution_hook

    if step in _registered_hooks or fn in _HOOKS.get(step, ()):
        return None
    register_resolution_hook(step)(fn)
    _registered_hooks.add(step)
    return True


_IF_MISSING = {  # what a user loses when a hook target is absent (logged as a warning)
    "attention_compat_after": "qwen1m's ServerArgs constraints are NOT enforced.",
    "dca_guard_around": "qwen1m's ServerArgs constraints are NOT enforced.",
    "validate_request_around": "token ids are NOT range-checked: an id outside the vocabulary can crash the server.",
}


def _register_scheduler_hooks(version: str) -> None:
    """The chunked-prefill scheduler's hooks, only with ``QWEN1M_SCHEDULER=1`` (unset or 0: SGLang's scheduling code is
    not touched). All three targets or none. A bad setting registers nothing here: the launch check
    (``hooks.mixed_chunk_for_qwen1m``) stops the launch with its message."""
    from sgl_qwen1m.scheduler.serving import SchedulerSettings

    try:
        if not SchedulerSettings.from_env().enabled:
            return
    except ValueError:
        return
    plan = compat.scheduler_hook_plan(version)
    missing = tuple(target for _, target, _ in plan if not compat.dotted_exists(target))
    if not plan or missing:
        from sgl_qwen1m.adapter.hooks import log_scheduler_unavailable

        log_scheduler_unavailable(version, missing)
        return
    from sglang.srt.plugins.hook_registry import HookType

    from sgl_qwen1m.adapter import scheduler_hook

    for _kind, target, fn_name in plan:  # all AROUND
        _register_hook(target, getattr(scheduler_hook, fn_name), HookType.AROUND)


def register() -> None:
    """Entry point for the ``sglang.srt.plugins`` group. Safe to call more than once."""
    version = installed_sglang_version()
    check_sglang_version(version, allow_untested=allow_untested_from_env())

    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS, register_attention_backend
    from sglang.srt.plugins.hook_registry import HookType
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, add_attention_backend_choices

    from sgl_qwen1m.adapter import hooks

    if QWEN1M not in ATTENTION_BACKEND_CHOICES:
        add_attention_backend_choices([QWEN1M])
    if ATTENTION_BACKENDS.get(QWEN1M) is not create_qwen1m_backend:
        register_attention_backend(QWEN1M)(create_qwen1m_backend)
    plan = compat.hook_plan(version)
    if not any(name.startswith("attention_") for _, _, name in plan):
        logger.warning("sgl_qwen1m: no ServerArgs hook is known for SGLang %s; qwen1m's constraints are NOT "
                       "enforced: pass --cuda-graph-backend-prefill disabled, keep --enable-mixed-chunk off and do "
                       "not use speculative decoding.", version)
    for kind, target, fn_name in plan:  # which hook goes where: compat.DIFFERENCES
        fn = getattr(hooks, fn_name)
        if kind == "resolution_hook":
            _register_resolution_hook(target, fn)
        else:
            hook_type = HookType.AROUND if kind.endswith("AROUND") else HookType.AFTER
            _register_hook(target, fn, hook_type, if_missing=_IF_MISSING.get(fn_name, ""))
    _register_scheduler_hooks(version)
