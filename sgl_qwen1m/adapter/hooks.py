"""SGLang hooks that make ``--attention-backend qwen1m`` a valid, safe configuration.

ServerArgs hooks check the launch configuration before any weight loads; ``validate_request_around`` range-checks
every request's token ids before they reach the GPU; ``sparse_file_json_around`` names the file in SGLang's JSON
error. The rules themselves live in ``sgl_qwen1m/validation.py`` (no SGLang import, CPU-tested).

Each hook is a small named function installed through SGLang's ``HookRegistry`` by ``plugin.register``. Hooks run
inside ``ServerArgs.__post_init__`` (in the launcher / ``Engine`` process only; the scheduler receives the pickled
result). Mid-resolution, declared fields (``attention_backend`` and friends) still sit in a declaration stash, so they
are read through ``resolved_view``; fields that are not resolvable (``enable_mixed_chunk``, ``cuda_graph_config``) are
assigned directly, as SGLang's own handler does, because ``ServerArgs`` becomes read-only only after
``materialize_declarations`` (SGLang 0.5.17 ``server_args.py:3638``; the guard is ``__setattr__`` at 8582-8598).
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any, Optional

from sgl_qwen1m.validation import SPARSE_CONFIG_FILE, as_mapping, check_launch, check_sampling_params, check_token_ids

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
    radix_attention.py:203-219, 381-382); mixed chunk off unless the scheduler is on (``mixed_chunk_for_qwen1m``);
    radix cache left as configured (no scaled keys stored).
    """
    from sglang.srt.arg_groups.overrides import resolved_view
    from sglang.srt.model_executor.cuda_graph_config import Backend

    view = resolved_view(server_args)
    if QWEN1M in selected_backends(view):
        _require_qwen1m_on_both_phases(view)
        _reject_speculative_decoding(view)
        check_launch_config(server_args.get_model_config(), view)
        graphs = server_args.cuda_graph_config.prefill
        if graphs.backend != Backend.DISABLED:
            _log_prefill_graphs_off(graphs.backend)
            graphs.backend = Backend.DISABLED
        server_args.enable_mixed_chunk = mixed_chunk_for_qwen1m(server_args.enable_mixed_chunk)


def _log_prefill_graphs_off(backend: Any) -> None:
    logger.info("sgl_qwen1m: prefill CUDA graphs (--cuda-graph-backend-prefill %s) -> disabled for the qwen1m backend "
                "(DCA's query is 5x wider than the graph's output buffer); decode graphs stay on", backend)


def mixed_chunk_for_qwen1m(requested: bool, version: Optional[str] = None) -> bool:
    """``--enable-mixed-chunk`` of a qwen1m server: on when the chunked-prefill scheduler is on (``QWEN1M_SCHEDULER=1``
    and this SGLang has its hook: its decode rows ride along prefill steps), otherwise off as before (logged when
    asked for). Reads and validates the scheduler's settings, so a bad value stops the launch here (ValueError)."""
    from sgl_qwen1m.adapter import compat
    from sgl_qwen1m.scheduler.serving import SCHEDULER_ENV, SchedulerSettings

    if SchedulerSettings.from_env().enabled:
        version = version or compat.installed_version()
        if compat.scheduler_hook_plan(version):
            if not requested:
                logger.info("sgl_qwen1m: --enable-mixed-chunk -> on for the qwen1m scheduler (%s=1): decode rows "
                            "ride along its prefill steps", SCHEDULER_ENV)
            return True
        log_scheduler_unavailable(version)
    if requested:
        logger.warning("sgl_qwen1m: --enable-mixed-chunk -> off for the qwen1m backend (mixed batches run only with "
                       "the qwen1m scheduler, %s=1)", SCHEDULER_ENV)
    return False


def log_scheduler_unavailable(version: str, missing: tuple = ()) -> None:
    """``QWEN1M_SCHEDULER=1`` on an SGLang where the scheduler hook cannot go (``compat.scheduler_hook_plan``)."""
    from sgl_qwen1m.adapter import compat
    from sgl_qwen1m.scheduler.serving import SCHEDULER_ENV

    logger.warning("sgl_qwen1m: %s=1 but %s (SGLang %s%s); SGLang's own scheduling is kept", SCHEDULER_ENV,
                   compat.SCHEDULER_HOOK_UNAVAILABLE, version, f"; missing: {list(missing)}" if missing else "")


def _sparse_file_of(model_path: str, revision: Optional[str] = None) -> Optional[str]:
    """Local path of the model's sparse_attention_config.json: the directory itself, or SGLang's HF download cache."""
    if os.path.isdir(model_path):
        return os.path.join(model_path, SPARSE_CONFIG_FILE)
    try:  # SGLang has already downloaded the repo's *.json (utils/hf_transformers/common.py:512-514)
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(model_path, SPARSE_CONFIG_FILE, revision=revision)
    except Exception:  # noqa: BLE001 - no hub client or a malformed repo id: SGLang's own (injected) copy is checked
        return None
    return found if isinstance(found, str) else None


def check_launch_config(model_config: Any, view: Any) -> None:
    """Run ``sgl_qwen1m.validation.check_launch`` on the resolving ServerArgs (before any weight loads).

    Reads the model's HF config through ``get_model_config()`` (already built by earlier handlers in 0.5.17), into
    which SGLang has injected ``sparse_attention_config.json`` as ``dual_chunk_attention_config
    ["sparse_attention_config"]`` (``configs/model_config.py:1538-1553``). Raises ConfigError (a ValueError, which
    ``launch_server`` reports as a usage error); logs the warnings.
    """
    model_dtype = str(model_config.dtype).removeprefix("torch.")
    warnings = check_launch(
        as_mapping(model_config.hf_config),
        page_size=view.page_size,
        pp_size=view.pp_size,
        tp_size=view.tp_size,
        kv_cache_dtype=view.kv_cache_dtype,
        model_dtype=model_dtype,
        context_len=model_config.context_len,
        sparse_file=_sparse_file_of(model_config.model_path, getattr(model_config, "revision", None)),
    )
    for message in warnings:
        logger.warning("sgl_qwen1m: %s", message)


def serves_qwen1m(server_args: Any) -> bool:
    """The plugin's guard: qwen1m is named as the attention, prefill or decode backend."""
    names = (getattr(server_args, f, None) for f in ("attention_backend", "prefill_attention_backend",
                                                      "decode_attention_backend"))
    return QWEN1M in names


def validate_request_around(original, self, obj, input_ids, *args, **kwargs):
    """AROUND hook: range-check token ids (and type-check numeric sampling parameters) before SGLang's own request
    checks, on qwen1m servers only.

    Upstream: ``sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request`` (SGLang 0.5.17,
    tokenizer_manager.py:1140). Every entry point reaches it with the final ``input_ids``: ``/generate`` and the
    OpenAI-compatible routes (``_tokenize_one_request``, line 1135; batches at 1482) and ``sgl.Engine.generate``
    (same TokenizerManager, in-process). SGLang range-checks only ``token_ids_logprob``; its
    ``_validate_input_ids_in_vocab`` (line 1296) is never called, so an id outside ``[0, vocab_size)`` reaches the
    embedding gather and a CUDA device-side assert kills the scheduler (docs/upstream-bugs.md).

    The ValueError raised here becomes a 400, and the server keeps serving: ``/generate`` returns
    ``{"error": {"message": ...}}`` with status 400 (``http_server.py:917-919``, ``_create_error_response`` at 2049;
    a streamed request gets one ``data: {"error": ...}`` event, 886-902); the OpenAI routes return an
    ``ErrorResponse`` with code 400 (``openai/serving_base.py:114-119``); ``Engine.generate`` raises the ValueError to
    the caller. Nothing has been sent to the scheduler yet. Only qwen1m servers are changed: the hook reads
    ``self.server_args`` and calls straight through for any other attention backend. Multimodal requests are left
    to SGLang (their ids are rewritten by the processor). The check runs before SGLang's length check, so with
    ``--allow-auto-truncate`` an out-of-range id past the truncation point is rejected too.
    """
    if serves_qwen1m(self.server_args):
        check_sampling_params(getattr(obj, "sampling_params", None))
        if input_ids is not None and not _has_mm_input(obj):
            check_token_ids(input_ids, self.model_config.vocab_size)
    return original(self, obj, input_ids, *args, **kwargs)


def _has_mm_input(obj: Any) -> bool:
    contains = getattr(obj, "contains_mm_input", None)
    return bool(contains()) if callable(contains) else False


def sparse_file_json_around(original, self, *args, **kwargs):
    """AROUND hook: name the file when ``sparse_attention_config.json`` is not valid JSON.

    Upstream: ``sglang.srt.configs.model_config.ModelConfig._verify_dual_chunk_attention_config`` (SGLang 0.5.17,
    model_config.py:1538) reads the file with a bare ``json.load`` (``utils/hf_transformers/common.py:520-521``)
    while ``ServerArgs`` is resolved, before qwen1m's ServerArgs hook can run, so a broken file was a bare
    ``JSONDecodeError``. This hook runs for every backend (ModelConfig does not know the backend) but changes only
    the text of that error: it is still a ValueError, now naming the file, line and column.
    """
    try:
        return original(self, *args, **kwargs)
    except json.JSONDecodeError as e:
        from sgl_qwen1m.config import ConfigError

        path = _sparse_file_of(self.model_path) or f"{SPARSE_CONFIG_FILE} of {self.model_path}"
        raise ConfigError(
            f"{path} is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}). Fix it, or delete it to run "
            f"dense prefill."
        ) from None


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
    check_launch_config(model_config_of(server_args), view)
    decided = {}
    graphs = view.cuda_graph_config
    if graphs.prefill.backend != Backend.DISABLED:
        _log_prefill_graphs_off(graphs.prefill.backend)
        decided["cuda_graph_config"] = with_phase(graphs, Phase.PREFILL, backend=Backend.DISABLED)
    mixed = mixed_chunk_for_qwen1m(bool(view.enable_mixed_chunk))
    if mixed != bool(view.enable_mixed_chunk):
        decided["enable_mixed_chunk"] = mixed
    if decided:
        declare_resolution(server_args, source, **decided)
