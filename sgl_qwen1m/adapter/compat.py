"""Every SGLang version difference the plugin depends on, in one table (and nowhere else).

Each :class:`Difference` names what differs, the SGLang versions it applies to (a PEP 440 specifier), the upstream
file, and the value this package uses there (a dotted path, a hook name, an argument name). The rest of the package
asks this module (``pick``, ``hook_plan``, ``global_config``, ``tensor_parallel_rank``) instead of testing versions.
``tests/test_conformance.py`` checks every row against the installed SGLang's source and fails when upstream moves.

Verified: 0.5.17 on GPU and CPU, 0.5.23 on CPU (``VERIFIED``). The rows for other versions come from reading their
wheels (0.5.18 has 0.5.17's ServerArgs; 0.5.19-0.5.22 differ, see README); ``plugin.register`` refuses those.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any, Callable, Optional

# SGLang version -> how it is verified. plugin.SUPPORTED_SGLANG is built from this.
VERIFIED = {"0.5.17": "GPU + CPU", "0.5.23": "CPU"}

OLD = "<0.5.19"  # ServerArgs resolved inside ServerArgs.__post_init__ (private _handle_* methods)
NEW = ">=0.5.20"  # resolution pipeline with named, plugin-overridable steps (arg_groups/pipeline.py)


@dataclass(frozen=True)
class Difference:
    name: str
    versions: str  # PEP 440 specifier the row applies to
    upstream: str  # file under sglang/
    value: Any
    note: str = ""


DIFFERENCES: tuple[Difference, ...] = (
    # ServerArgs hooks: where qwen1m's constraints are enforced before the fields freeze.
    Difference("attention_hook", OLD, "srt/server_args.py",
               ("hook_registry.AFTER", "sglang.srt.server_args.ServerArgs._handle_attention_backend_compatibility",
                ("self",)),
               "HookRegistry AFTER hook; fields assigned directly (hooks.attention_compat_after)"),
    Difference("attention_hook", NEW, "srt/arg_groups/resolution_hooks.py, srt/arg_groups/pipeline.py",
               ("resolution_hook", "handle_attention_backend_compatibility", ("server_args",)),
               "register_resolution_hook(name)(fn(server_args, previous)); decisions through declare_resolution "
               "(hooks.attention_resolution_hook)"),
    Difference("dca_guard", OLD, "srt/arg_groups/overrides.py",
               ("hook_registry.AROUND", "sglang.srt.arg_groups.overrides._attention_backend_dual_chunk", ("view",)),
               "SGLang's guard allows only dual_chunk_flash_attn for DCA models; hooks.dca_guard_around lets qwen1m by"),
    Difference("dca_guard", NEW, "srt/arg_groups/overrides.py", None,
               "guard and in-tree backend removed (0.5.20): attention_resolution_hook rejects non-qwen1m backends "
               "for DCA models and makes qwen1m their default"),
    # Request and model-config hooks (same targets in every supported version).
    Difference("validate_request", ">=0.5.17", "srt/managers/tokenizer_manager.py",
               ("hook_registry.AROUND",
                "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request",
                ("self", "obj", "input_ids")),
               "every request's final input_ids pass here before the scheduler (hooks.validate_request_around): "
               "SGLang never range-checks them, and an id outside the vocabulary kills the server"),
    Difference("sparse_json", ">=0.5.17", "srt/configs/model_config.py",
               ("hook_registry.AROUND",
                "sglang.srt.configs.model_config.ModelConfig._verify_dual_chunk_attention_config", ("self",)),
               "SGLang json.loads sparse_attention_config.json bare; hooks.sparse_file_json_around names the file"),
    # The chunked-prefill scheduler (QWEN1M_SCHEDULER=1, adapter/scheduler_hook.py): one scheduling pass, and the two
    # PrefillAdder methods that size each request's prefill in it; (kind, target, wrapped parameters, our function).
    # The same targets and signatures in 0.5.17 and 0.5.23, both driven on CPU by tests/test_scheduler_hook.py.
    Difference("scheduler_hook", ">=0.5.17", "srt/managers/scheduler.py, srt/managers/schedule_policy.py", (
        ("hook_registry.AROUND", "sglang.srt.managers.scheduler.Scheduler._get_new_batch_prefill_raw",
         ("self", "prefill_delayer_single_pass", "running_batch"), "scheduler_pass_around"),
        ("hook_registry.AROUND", "sglang.srt.managers.schedule_policy.PrefillAdder.add_chunked_req",
         ("self", "req"), "add_chunked_req_around"),
        ("hook_registry.AROUND", "sglang.srt.managers.schedule_policy.PrefillAdder.add_one_req",
         ("self", "req", "has_chunked_req", "truncation_align_size"), "add_one_req_around"),
    ), "0.5.23 also has Scheduler.get_prefill_adder_class (returns PrefillAdder): the method hooks cover it"),
    # A request's cached prefix (tokens SGLang will not prefill again): what the scheduler hook plans from.
    Difference("req_prefix_len", OLD, "srt/managers/schedule_batch.py", ("len", "prefix_indices"),
               "Req.prefix_indices: the KV indices of the cached prefix (a tensor)"),
    Difference("req_prefix_len", NEW, "srt/managers/schedule_batch.py", ("int", "prefix_len"),
               "Req.prefix_len: an int (prefix_indices is gone)"),
    # How launch_server turns argv into resolved arguments (tests and tools read them the same way).
    Difference("resolved_args", OLD, "srt/server_args.py", None,
               "prepare_server_args(argv) resolves in ServerArgs.__post_init__; fields hold the result"),
    Difference("resolved_args", NEW, "launch_server.py, srt/server_args.py, srt/arg_groups/overrides.py",
               "sglang.srt.arg_groups.overrides:resolving_view",
               "prepare_server_args returns raw input; launch_server calls resolve_once(), results live in "
               "declarations read through resolving_view (never written back to the fields)"),
    # Python-level moves.
    Difference("global_config", "<0.5.18", "global_config.py", "sglang.global_config:global_config"),
    Difference("global_config", ">=0.5.18", "lang/global_config.py", "sglang.lang.global_config:global_config"),
    Difference("tp_rank", ">=0.5.17", "srt/runtime_context.py", "sglang.srt.runtime_context:get_parallel",
               "get_parallel().tp_rank in every version; 0.5.23 deprecates sglang.srt.distributed."
               "get_tensor_model_parallel_rank and drops it from `from sglang.srt.distributed import *`"),
    Difference("add_attention_backend_choices", OLD, "srt/server_args.py",
               "sglang.srt.server_args:add_attention_backend_choices"),
    Difference("add_attention_backend_choices", NEW, "srt/arg_groups/choices.py (re-exported by srt/server_args.py)",
               "sglang.srt.server_args:add_attention_backend_choices"),
    # AttentionBackend (srt/layers/attention/base_attn_backend.py): base methods that raise NotImplementedError and
    # that qwen1m deliberately leaves unimplemented, with the reason; any other such method must be implemented.
    Difference("backend_unimplemented", ">=0.5.17", "srt/layers/attention/base_attn_backend.py", {
        "init_forward_metadata_for_breakable_cuda_graph_capture": "prefill CUDA graphs are disabled by our hook",
        "prepare_forward_metadata_for_breakable_cuda_graph_replay": "prefill CUDA graphs are disabled by our hook",
        "update_verify_buffers_to_fill_after_draft": "speculative decoding is rejected by our hook",
        "forward_mixed": "NPU-only dispatch (AttentionBackend.forward); mixed chunk is disabled by our hook",
    }),
    # Models that build DualChunkRotaryEmbedding (srt/models/*.py read dual_chunk_attention_config) and call
    # self.rotary_emb(...); adapter/rope.py's replacement must accept their arguments.
    Difference("dca_models", ">=0.5.17", "srt/models/{qwen2,qwen2_moe,qwen3_moe,glm4,glm_image_vl}.py",
               ("qwen2", "qwen2_moe", "qwen3_moe", "glm4", "glm_image_vl")),
    Difference("dca_rope_forward", ">=0.5.17", "srt/layers/rotary_embedding/rope_variant.py",
               "sglang.srt.layers.rotary_embedding.rope_variant:DualChunkRotaryEmbedding.forward",
               "(positions, query, key, offsets=None) in 0.5.17 and 0.5.23"),
)


def installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:  # e.g. a source checkout on PYTHONPATH
        from sglang.version import __version__

        return __version__


def _applies(row: Difference, version: str) -> bool:
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    return SpecifierSet(row.versions).contains(Version(version), prereleases=True)


def pick(name: str, version: Optional[str] = None) -> Optional[Difference]:
    """The row named ``name`` for ``version`` (default: the installed SGLang), or None when no row covers it."""
    version = version or installed_version()
    rows = [r for r in DIFFERENCES if r.name == name and _applies(r, version)]
    if len(rows) > 1:
        raise RuntimeError(f"sgl_qwen1m.adapter.compat: {len(rows)} rows named {name!r} cover SGLang {version}")
    return rows[0] if rows else None


def resolve(dotted: str) -> Any:
    """``module:attr.attr`` or ``module.attr.attr`` -> object (ImportError/AttributeError when upstream moved it)."""
    return pkgutil.resolve_name(dotted)


def dotted_exists(dotted: str) -> bool:
    """True when a ``module.attr`` or ``module:attr`` target exists in the installed SGLang."""
    try:
        resolve(dotted)
    except (ImportError, AttributeError, ValueError):
        return False
    return True


def hook_plan(version: Optional[str] = None) -> list[tuple[str, str, str]]:
    """[(kind, target, hooks-function name)] for ``version``: what plugin.register installs. (Each row's value
    also names the parameters of the wrapped upstream function; tests/test_conformance.py checks them.)

    kind is ``hook_registry.AFTER`` / ``hook_registry.AROUND`` (SGLang's HookRegistry on a dotted target) or
    ``resolution_hook`` (``register_resolution_hook`` on a named pipeline step).
    """
    fns = {"attention_hook": {"hook_registry.AFTER": "attention_compat_after",
                              "resolution_hook": "attention_resolution_hook"},
           "dca_guard": {"hook_registry.AROUND": "dca_guard_around"},
           "validate_request": {"hook_registry.AROUND": "validate_request_around"},
           "sparse_json": {"hook_registry.AROUND": "sparse_file_json_around"}}
    plan = []
    for name in ("dca_guard", "attention_hook", "validate_request", "sparse_json"):
        row = pick(name, version)
        if row is None or row.value is None:
            continue
        kind, target, _params = row.value
        plan.append((kind, target, fns[name][kind]))
    return plan


SCHEDULER_HOOK_UNAVAILABLE = "scheduler hook: not available on this version"


def scheduler_hook_plan(version: Optional[str] = None) -> list[tuple[str, str, str]]:
    """[(kind, target, scheduler_hook function name)] of the scheduler hook for ``version``; [] where it is not
    available (``SCHEDULER_HOOK_UNAVAILABLE``): the plugin then keeps SGLang's own scheduling."""
    row, prefix = pick("scheduler_hook", version), pick("req_prefix_len", version)
    if row is None or row.value is None or prefix is None:
        return []
    return [(kind, target, fn) for kind, target, _params, fn in row.value]


def req_prefix_len(version: Optional[str] = None) -> Callable[[Any], int]:
    """``req -> tokens of its cached prefix`` in this SGLang (row ``req_prefix_len``)."""
    how, attr = pick("req_prefix_len", version).value
    if how == "len":
        return lambda req: len(getattr(req, attr))
    return lambda req: int(getattr(req, attr))


def resolved_view(server_args: Any) -> Any:
    """Resolved values of a ``ServerArgs`` (0.5.20+: they live in declarations, read through ``resolving_view``)."""
    row = pick("resolved_args")
    if row is None or row.value is None:
        return server_args
    return resolve(row.value)(server_args)


def resolved_server_args(argv: list[str]) -> Any:
    """``argv`` -> resolved arguments, as ``python -m sglang.launch_server`` resolves them (plugins must be loaded)."""
    from sglang.srt.server_args import prepare_server_args

    args = prepare_server_args(argv)
    row = pick("resolved_args")
    if row is not None and row.value is not None:
        args.resolve_once()
    return resolved_view(args)


def model_config(server_args: Any) -> Any:
    """SGLang's ``ModelConfig`` of resolved arguments: ``model_config_of`` (0.5.20+) or ``ServerArgs.get_model_config``."""
    try:
        from sglang.srt.arg_groups.overrides import model_config_of
    except ImportError:
        return server_args.get_model_config()
    return model_config_of(server_args)


def global_config() -> Any:
    """SGLang's frontend ``global_config`` object (moved from ``sglang`` to ``sglang.lang`` in 0.5.18)."""
    for row in (r for r in DIFFERENCES if r.name == "global_config"):
        try:
            return resolve(row.value)
        except (ImportError, AttributeError):
            continue
    raise ImportError("sgl_qwen1m: neither sglang.global_config nor sglang.lang.global_config exists in SGLang "
                      f"{installed_version()}")


def tensor_parallel_rank() -> int:
    """This process's tensor-parallel rank (``get_parallel().tp_rank``, present in 0.5.17 and 0.5.23)."""
    return int(importlib.import_module("sglang.srt.runtime_context").get_parallel().tp_rank)
