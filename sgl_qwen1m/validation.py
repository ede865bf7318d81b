"""Input and launch rules for ``--attention-backend qwen1m``: plain Python and numpy, no SGLang import.

Two families, both wired into SGLang by ``sgl_qwen1m/adapter/hooks.py``:

* :func:`check_token_ids`: every request's token ids, before they reach the GPU (an id outside the vocabulary is a
  CUDA device-side assert in the embedding gather, which kills the scheduler and every request in flight).
* :func:`check_launch`: the server's configuration, inside ``ServerArgs.__post_init__``, before any weight loads:
  page size, pipeline parallelism, KV cache dtype, tensor-parallel head split, the DCA config and the sparse budgets.
  It raises :class:`~sgl_qwen1m.config.ConfigError` (a ``ValueError``) for what qwen1m cannot run, naming the value,
  the limit and the flag or field to change, and returns warnings for what it runs with a default.

Upstream bug (SGLang 0.5.17), written up in ``docs/upstream-bugs.md``: token ids are never range-checked when the
tokenizer is skipped (``input_ids``), so one request can kill the server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Optional, Union

import numpy as np

from sgl_qwen1m.config import (
    DCA_DEFAULTS,
    INT32_MAX,
    SPARSE_BLOCK,
    ConfigError,
    DCAConfig,
    SparseBudgets,
    sparse_budgets_from_hf,
)

__all__ = [
    "SPARSE_CONFIG_FILE",
    "SUPPORTED_KV_CACHE_DTYPES",
    "FP8_KV_CACHE_DTYPES",
    "SUPPORTED_MODEL_DTYPES",
    "check_token_ids",
    "check_launch",
    "read_sparse_file",
    "as_mapping",
]

SPARSE_CONFIG_FILE = "sparse_attention_config.json"
# --kv-cache-dtype values qwen1m runs; "auto" means the model dtype, which must then be one of SUPPORTED_MODEL_DTYPES.
SUPPORTED_KV_CACHE_DTYPES = ("auto", "bf16", "bfloat16")
SUPPORTED_MODEL_DTYPES = ("bfloat16", "float16")
# FP8 KV: the DCA (FlashInfer) and sparse (Triton) kernels read FP8 K/V with per-tensor scales; GPU-verified against
# the fp32 oracle on an H200 (benchmarks/results/gpu-tests/gpu_tests_fp8_h200.log.gz).
FP8_KV_CACHE_DTYPES = ("fp8_e4m3", "fp8_e5m2")
_REPR_LIMIT = 60


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= _REPR_LIMIT else text[: _REPR_LIMIT - 3] + "..."


def _is_int(x: Any) -> bool:
    return (isinstance(x, (int, np.integer))) and not isinstance(x, (bool, np.bool_))


def check_token_ids(ids: Any, vocab_size: int, name: str = "input_ids") -> None:
    """Raise ``ValueError`` unless ``ids`` is a non-empty flat sequence of integers in ``[0, vocab_size)``.

    The message names the first offending position, its value and the vocabulary, e.g.
    ``input_ids[5]=152064 is outside the vocabulary [0, 152064)``, and never prints the whole list. Vectorised: one
    C-level type pass and one numpy range test, about 35 ms for a million ids on one CPU core.
    Accepts a list or tuple of ``int``/numpy integers, or a 1-D numpy integer array; rejects bools, floats (even
    ``3.0``), strings, ``None`` and nested lists.
    """
    if isinstance(ids, np.ndarray):
        if ids.ndim != 1 or ids.dtype.kind not in "iu":
            raise ValueError(
                f"{name} must be a flat list of integer token ids; got a {ids.ndim}-D numpy array of {ids.dtype}"
            )
        arr = ids
    elif isinstance(ids, (list, tuple)):
        if len(ids) == 0:
            raise ValueError(f"{name} is empty: a request needs at least one token id")
        types = set(map(type, ids))
        if types != {int}:
            for i, x in enumerate(ids):
                if not _is_int(x):
                    raise ValueError(
                        f"{name}[{i}]={_short(x)} ({type(x).__name__}) is not a token id: {name} must be a flat "
                        f"list of integers in [0, {vocab_size})"
                    )
        try:
            arr = np.fromiter(ids, dtype=np.int64, count=len(ids))
        except OverflowError:  # an int beyond int64 (only Python ints can be)
            i = next(i for i, x in enumerate(ids) if not -(2**63) <= int(x) < 2**63)
            raise ValueError(
                f"{name}[{i}]={_short(ids[i])} is outside the vocabulary [0, {vocab_size})"
            ) from None
    else:
        raise ValueError(
            f"{name} must be a flat list of integer token ids in [0, {vocab_size}); got {type(ids).__name__} "
            f"{_short(ids)}"
        )
    if arr.size == 0:
        raise ValueError(f"{name} is empty: a request needs at least one token id")
    bad = (arr < 0) | (arr >= vocab_size)
    if bad.any():
        i = int(np.argmax(bad))
        count = int(np.count_nonzero(bad))
        more = f" ({count} of {arr.size} ids are)" if count > 1 else ""
        raise ValueError(f"{name}[{i}]={int(arr[i])} is outside the vocabulary [0, {vocab_size}){more}")


# SamplingParams fields whose type SGLang 0.5.17 never checks before arithmetic on them (sampling_params.py:54-80,
# verify() at 151): a string there is a TypeError, which the HTTP layer turns into a 500 instead of a 400.
_INT_PARAMS = ("max_new_tokens", "min_new_tokens", "top_k", "n", "stream_interval")
_FLOAT_PARAMS = ("temperature", "top_p", "min_p", "frequency_penalty", "presence_penalty", "repetition_penalty")


def check_sampling_params(params: Any) -> None:
    """Raise ``ValueError`` naming the field when a numeric sampling parameter has the wrong type.

    ``params`` is one request's ``sampling_params`` (a dict or None). Integers (``max_new_tokens``, ``top_k``, ...)
    must be ints (``None`` allowed where SGLang allows it); floats (``temperature``, ``top_p``, ...) ints or floats.
    Ranges stay SGLang's (``SamplingParams.verify`` raises ValueError for those).
    """
    if params is None:
        return
    if not isinstance(params, Mapping):
        raise ValueError(f"sampling_params must be a JSON object, got {type(params).__name__} {_short(params)}")
    for key in _INT_PARAMS:
        value = params.get(key)
        if value is not None and not _is_int(value):
            raise ValueError(f"sampling_params.{key} must be an integer, got {_short(value)} ({type(value).__name__})")
    for key in _FLOAT_PARAMS:
        value = params.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"sampling_params.{key} must be a number, got {_short(value)} ({type(value).__name__})")


def read_sparse_file(path: Union[str, Path]) -> Optional[list]:
    """The budgets in ``sparse_attention_config.json`` at ``path``; None when the file does not exist.

    SGLang 0.5.17 reads the same file with a bare ``json.load`` (``utils/hf_transformers/common.py:508-522``): an
    invalid file is a ``JSONDecodeError`` with no file name, and an empty list ``[]`` is silently "no sparse prefill"
    (``configs/model_config.py:1541-1543``). Here both are a ConfigError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8", errors="replace")
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as e:
        what = "is empty" if not text.strip() else f"is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        raise ConfigError(
            f"{path} {what}. Fix it (one entry per layer: {{\"<head>\": [\"vertical_and_slash\", vertical, slash, "
            f"score]}}), or delete it to run dense prefill."
        ) from None
    if not raw:
        raise ConfigError(
            f"{path} holds no budgets ({_short(raw)}), so sparse prefill would silently be off. Fill it with one "
            f"entry per layer, or delete it to run dense prefill."
        )
    return raw


def _check_dca(raw: Mapping[str, Any], warnings: list) -> DCAConfig:
    where = "dual_chunk_attention_config"
    cfg = DCAConfig.from_dict(raw)  # unknown keys, types and ranges
    for key in ("chunk_size", "local_size"):
        if key not in raw:
            warnings.append(
                f"{where} in config.json has no {key}; using the default {key}={DCA_DEFAULTS[key]} (Qwen's and "
                f"SGLang's default). Set it in config.json to silence this."
            )
    if "original_max_position_embeddings" not in raw:
        raise ConfigError(
            f"{where} in config.json has no original_max_position_embeddings, so YaRN attention scaling would "
            f"silently be off past the training length. Set it to the model's training length (262144 for "
            f"Qwen2.5-*-Instruct-1M), or to 0 to run without YaRN scaling on purpose."
        )
    if cfg.sparse_attention_enabled and cfg.chunk_len % SPARSE_BLOCK:
        raise ConfigError(
            f"{where}: chunk_size - local_size = {cfg.chunk_size} - {cfg.local_size} = {cfg.chunk_len} is not a "
            f"multiple of {SPARSE_BLOCK}, which sparse prefill needs ({SPARSE_CONFIG_FILE} is present). Change "
            f"chunk_size or local_size, or set {where}.sparse_attention_enabled to false (or delete "
            f"{SPARSE_CONFIG_FILE}) to run dense prefill."
        )
    return cfg


def _check_budgets(budgets: SparseBudgets, context_len: Optional[int], warnings: list) -> None:
    if not context_len:
        return
    for li, layer in enumerate(budgets.heads):
        for hi, b in enumerate(layer):
            for name, value in (("vertical_size", b.vertical), ("slash_size", b.slash)):
                if value > context_len:
                    warnings.append(
                        f"{SPARSE_CONFIG_FILE}[{li}][{str(hi)!r}] {name}={value} is larger than the context length "
                        f"{context_len} (--context-length); every key is kept there, so that head runs dense. "
                        f"Harmless, but check the file belongs to this model."
                    )
                    return  # one line is enough; the file is the same everywhere


def check_launch(
    hf_config: Mapping[str, Any],
    *,
    page_size: Optional[int] = 1,
    pp_size: int = 1,
    tp_size: int = 1,
    kv_cache_dtype: str = "auto",
    model_dtype: str = "bfloat16",
    context_len: Optional[int] = None,
    sparse_file: Optional[Union[str, Path]] = None,
) -> list[str]:
    """Check a qwen1m server's configuration; raise ConfigError for the first unsupported value, return warnings.

    ``hf_config`` is the model's config as a mapping (``dual_chunk_attention_config`` as SGLang holds it, with
    ``sparse_attention_config`` injected when the file had budgets). ``sparse_file`` is the local path of
    ``sparse_attention_config.json`` when known: it is read here too, because SGLang ignores an empty one.
    Decisions: a missing ``original_max_position_embeddings`` is an error (0 opts out explicitly); missing
    ``chunk_size``/``local_size`` and budgets above the context length are warnings; everything else is an error.
    """
    warnings: list[str] = []
    if page_size not in (None, 1):
        raise ConfigError(
            f"--page-size {page_size} is not supported by the qwen1m attention backend: its FlashInfer wrappers "
            f"address the KV pool one token per page (page size 1), and other page sizes are not tested against "
            f"the fp32 oracle. Remove --page-size (SGLang's default is 1 on CUDA) or pass --page-size 1."
        )
    if pp_size != 1:
        raise ConfigError(
            f"--pp-size {pp_size} is not supported by the qwen1m attention backend: pipeline parallelism is not "
            f"implemented or tested for it yet. Use --pp-size 1 and split the model with --tp-size instead."
        )
    if kv_cache_dtype not in SUPPORTED_KV_CACHE_DTYPES + FP8_KV_CACHE_DTYPES:
        raise ConfigError(
            f"--kv-cache-dtype {kv_cache_dtype} is not supported by the qwen1m attention backend: its DCA and sparse "
            f"kernels read bf16/fp16 K/V, or FP8 with per-tensor scales ({', '.join(FP8_KV_CACHE_DTYPES)}). Use "
            f"--kv-cache-dtype auto (the model dtype) or bf16."
        )
    if kv_cache_dtype == "auto" and model_dtype not in SUPPORTED_MODEL_DTYPES:
        raise ConfigError(
            f"the model dtype is {model_dtype}, and --kv-cache-dtype auto would store the KV cache in it; the qwen1m "
            f"attention backend supports {' and '.join(SUPPORTED_MODEL_DTYPES)} only. Pass --dtype bfloat16."
        )
    get = hf_config.get
    heads, kv_heads = get("num_attention_heads"), get("num_key_value_heads") or get("num_attention_heads")
    if tp_size < 1:
        raise ConfigError(f"--tp-size {tp_size} is invalid: it must be >= 1")
    for field_name, count in (("num_attention_heads", heads), ("num_key_value_heads", kv_heads)):
        if count is not None and count % tp_size:
            raise ConfigError(
                f"--tp-size {tp_size} does not divide the model's {field_name}={count}: the qwen1m attention backend "
                f"(and its per-head sparse budgets) split heads evenly across tensor-parallel ranks. Use a --tp-size "
                f"that divides both num_attention_heads={heads} and num_key_value_heads={kv_heads}."
            )

    raw = get("dual_chunk_attention_config")
    if raw is None:
        return warnings  # plain causal attention: nothing DCA-specific to check
    if not isinstance(raw, Mapping):
        raise ConfigError(f"dual_chunk_attention_config must be a JSON object, got {type(raw).__name__}")
    file_budgets = read_sparse_file(sparse_file) if sparse_file is not None else None
    if file_budgets is not None and raw.get("sparse_attention_config") is None:
        raw = {**raw, "sparse_attention_config": file_budgets}  # what SGLang injects (model_config.py:1538-1553)
        raw.setdefault("sparse_attention_enabled", True)
    cfg = _check_dca(raw, warnings)
    budgets = sparse_budgets_from_hf({**hf_config, "dual_chunk_attention_config": raw}, cfg)
    if budgets is not None:
        _check_budgets(budgets, context_len, warnings)
    return warnings


def as_mapping(hf_config: Any) -> Mapping[str, Any]:
    """A read-only mapping view of an HF ``PretrainedConfig`` (or a dict)."""
    if isinstance(hf_config, Mapping):
        return hf_config
    to_dict = getattr(hf_config, "to_dict", None)
    if to_dict is not None:
        out = dict(to_dict())
        # to_dict() copies; keep the live DCA dict (SGLang injects the budgets into it)
        if hasattr(hf_config, "dual_chunk_attention_config"):
            out["dual_chunk_attention_config"] = hf_config.dual_chunk_attention_config
        return out
    return vars(hf_config)
