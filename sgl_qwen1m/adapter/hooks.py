"""ServerArgs hooks that make ``--attention-backend qwen1m`` a valid, safe configuration.

Each hook is a small named function installed through SGLang's ``HookRegistry`` by ``plugin.register``. Hooks run
inside ``ServerArgs.__post_init__`` (in the launcher / ``Engine`` process only; the scheduler receives the pickled
result). Mid-resolution, declared fields (``attention_backend`` and friends) still sit in a declaration stash, so they
are read through ``resolved_view``; fields that are not resolvable (``enable_mixed_chunk``, ``cuda_graph_config``) are
assigned directly, as SGLang's own handler does, because ``ServerArgs`` becomes read-only only after
``materialize_declarations`` (SGLang 0.5.17 ``server_args.py:3638``; the guard is ``__setattr__`` at 8582-8598).
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

QWEN1M = "qwen1m"

# Which hook goes on which target in which SGLang version: sgl_qwen1m.adapter.compat (DIFFERENCES, hook_plan).


def selected_backends(view: Any) -> tuple[str | None, str | None, str | None]:
    """(attention, effective prefill, effective decode) backends of a ServerArgs or a ResolvedView."""
    # Upstream: sglang.srt.arg_groups.overrides.attention_backends_of (SGLang 0.5.17, overrides.py:239-253):
    # split fields fall back to attention_backend.
    from sglang.srt.arg_groups.overrides import attention_backends_of

    prefill, decode = attention_backends_of(view)
    return view.attention_backend, prefill, decode


def dca_guard_around(original, view: Any, *args, **kwargs) -> dict:
    """AROUND hook: let qwen1m through SGLang's dual-chunk backend guard.

    Upstream: ``sglang.srt.arg_groups.overrides._attention_backend_dual_chunk`` (SGLang 0.5.17, overrides.py:2262-2277;
    removed in 0.5.23). For a model with ``dual_chunk_attention_config`` it raises ValueError unless the backend is
    ``dual_chunk_flash_attn``. We return no declarations when qwen1m is named anywhere; any other backend still gets
    SGLang's own check (and its error).
    """
    if QWEN1M in selected_backends(view):
        return {}
    return original(view, *args, **kwargs)


def _require_qwen1m_on_both_phases(view: Any) -> None:
    attention, prefill, decode = selected_backends(view)
    if prefill == decode == QWEN1M:
        return
    raise ValueError(
        "sgl_qwen1m: the 'qwen1m' attention backend must serve both prefill and decode, because Dual Chunk "
        "Attention gives every layer a 5x-wide query that other backends cannot read. Got "
        f"attention_backend={attention!r}, prefill_attention_backend={prefill!r}, "
        f"decode_attention_backend={decode!r}. Use '--attention-backend qwen1m' and drop the "
        "--prefill-attention-backend/--decode-attention-backend overrides (or set both to qwen1m)."
    )


def _reject_speculative_decoding(view: Any) -> None:
    algorithm = getattr(view, "speculative_algorithm", None)
    if algorithm is not None:
        raise ValueError(
            f"sgl_qwen1m: speculative decoding (--speculative-algorithm {algorithm}) is not supported with the "
            "'qwen1m' attention backend (its target-verify and draft-extend passes are not implemented). "
            "Remove the --speculative-* options."
        )


def attention_compat_after(result: Any, server_args: Any, *args, **kwargs) -> None:
    """AFTER hook: apply qwen1m's serving constraints while ServerArgs is still writable.

    Upstream: ``sglang.srt.server_args.ServerArgs._handle_attention_backend_compatibility`` (SGLang 0.5.17,
    server_args.py:5729-5839, called by ``__post_init__`` at 3537, before ``materialize_declarations`` at 3638).
    Prefill CUDA graphs off (BCG/tc_piecewise size the output as ``empty_like(q)``, 5x too wide with DCA's q:
    radix_attention.py:203-219, 381-382); mixed chunk off; radix cache left as configured (no scaled keys stored).
    """
    from sglang.srt.arg_groups.overrides import resolved_view
    from sglang.srt.model_executor.cuda_graph_config import Backend

    view = resolved_view(server_args)
    if QWEN1M in selected_backends(view):
        _require_qwen1m_on_both_phases(view)
        _reject_speculative_decoding(view)
        graphs = server_args.cuda_graph_config.prefill
        if graphs.backend != Backend.DISABLED:
            logger.info("sgl_qwen1m: prefill CUDA graphs %s -> disabled for the qwen1m backend", graphs.backend)
            graphs.backend = Backend.DISABLED
        server_args.enable_mixed_chunk = False


def _reject_other_backends_for_dca(view: Any) -> None:
    attention, prefill, decode = selected_backends(view)
    raise ValueError(
        "sgl_qwen1m: this model's config.json has dual_chunk_attention_config, which only the 'qwen1m' attention "
        f"backend serves correctly in this SGLang (got attention_backend={attention!r}, prefill={prefill!r}, "
        f"decode={decode!r}; SGLang's own dual_chunk_flash_attn was removed in 0.5.20). Use "
        "'--attention-backend qwen1m', or remove dual_chunk_attention_config to serve with plain RoPE."
    )


def attention_resolution_hook(server_args: Any, previous) -> None:
    """Resolution-pipeline wrapper of ``handle_attention_backend_compatibility`` (SGLang >= 0.5.20).

    Upstream: ``sglang.srt.arg_groups.resolution_hooks.register_resolution_hook`` and the step's ``run_hook`` call in
    ``arg_groups/pipeline.py`` (0.5.23: ``attention_hook.py:110``). Fields are frozen during resolution, so decisions
    are declared (``declare_resolution``), as SGLang's handlers do. The same constraints as ``attention_compat_after``;
    SGLang's DCA guard is gone here, so DCA models default to qwen1m and any other backend is rejected.
    """
    from sglang.srt.arg_groups.overrides import declare_resolution, model_config_of, resolved_view
    from sglang.srt.model_executor.cuda_graph_config import Backend, Phase, with_phase

    source = "sgl_qwen1m.attention_resolution_hook"
    dca = getattr(model_config_of(server_args).hf_config, "dual_chunk_attention_config", None) is not None
    view = resolved_view(server_args)
    if dca and not any(selected_backends(view)):
        logger.info("sgl_qwen1m: dual_chunk_attention_config found; attention backend defaults to qwen1m")
        declare_resolution(server_args, source, attention_backend=QWEN1M)
    previous(server_args)
    view = resolved_view(server_args)
    if QWEN1M not in selected_backends(view):
        if dca:
            _reject_other_backends_for_dca(view)
        return
    _require_qwen1m_on_both_phases(view)
    _reject_speculative_decoding(view)
    decided = {}
    graphs = view.cuda_graph_config
    if graphs.prefill.backend != Backend.DISABLED:
        logger.info("sgl_qwen1m: prefill CUDA graphs %s -> disabled for the qwen1m backend", graphs.prefill.backend)
        decided["cuda_graph_config"] = with_phase(graphs, Phase.PREFILL, backend=Backend.DISABLED)
    if view.enable_mixed_chunk:
        decided["enable_mixed_chunk"] = False
    if decided:
        declare_resolution(server_args, source, **decided)
