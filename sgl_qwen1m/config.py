"""Typed configuration for Dual Chunk Attention and vertical-slash sparse prefill.

Two inputs, both in the format Qwen ships with Qwen2.5-7B/14B-Instruct-1M:

* ``dual_chunk_attention_config`` in the model's ``config.json``
  (``chunk_size``, ``local_size``, ``original_max_position_embeddings`` and optional sparse settings);
* ``sparse_attention_config.json`` beside it: a list with one entry per layer, each a dict
  ``{"<q_head>": ["vertical_and_slash", vertical_size, slash_size, score]}`` covering every query head.
  SGLang copies it into ``dual_chunk_attention_config["sparse_attention_config"]``; budgets written there inline
  (a list, or an object keyed by layer index as in SGLang's own tests) are read the same way.

The Qwen3-2507 models ship ``config_1m.json``, which users rename to ``config.json`` (model cards); it carries the same
``dual_chunk_attention_config`` block (``DCA_CONFIG_KEYS``).

Every validation error names the field, the bad value and the rule it breaks.
Nothing here imports SGLang, Triton or FlashInfer.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

__all__ = [
    "DEFAULT_SPARSE_THRESHOLD",
    "DEFAULT_LAST_Q",
    "MIN_SPARSE_QUERIES",
    "runs_sparse",
    "SINK_COLUMNS",
    "LOCAL_DIAGONALS",
    "VERTICAL_SLASH",
    "DCAConfig",
    "HeadBudget",
    "SparseBudgets",
    "ConfigError",
    "KNOWN_DCA_KEYS",
    "DCA_DEFAULTS",
    "INT32_MAX",
    "SPARSE_BLOCK",
    "sparse_budgets_from_hf",
    "DCA_CONFIG_KEYS",
]

# Every key a shipped ``dual_chunk_attention_config`` may hold (Qwen2.5-1M config.json, Qwen3-2507 config_1m.json,
# SGLang's injected budgets and sparse settings).
DCA_CONFIG_KEYS = (
    "chunk_size", "local_size", "original_max_position_embeddings", "sparse_attention_config",
    "sparse_attention_enabled", "sparse_attention_threshold", "sparse_attention_last_q",
)

# Defaults shared by Qwen's vLLM fork and SGLang's in-tree port (shared/research/qwen1m-method.md §2.2).
DEFAULT_SPARSE_THRESHOLD = 32768  # sparse prefill only when the prompt is longer than this
DEFAULT_LAST_Q = 64  # queries per prefill chunk used to estimate the vertical/slash pattern
# A request extending by fewer queries than this runs its prefill piece densely (exact): decode rows of a mixed
# batch (extend 1) must not run a sparse estimation pass over every key for a single query.
MIN_SPARSE_QUERIES = 2
SINK_COLUMNS = 30  # leading key columns always kept (MInference: attention sinks)
LOCAL_DIAGONALS = 100  # trailing diagonals always kept (MInference: local window)
VERTICAL_SLASH = "vertical_and_slash"  # the only pattern Qwen's budget files use
_KNOWN_PATTERNS = (VERTICAL_SLASH,)
SPARSE_BLOCK = 64  # sparse prefill's query/key tile (ops.sparse.plan.BLOCK); DCA chunk_len must be a multiple
INT32_MAX = 2**31 - 1  # budgets travel in int32 tensors
# Absent-key defaults, as in Qwen's vLLM fork and SGLang's in-tree backend (dual_chunk_flashattention_backend.py:139-160).
DCA_DEFAULTS = {"chunk_size": 8192, "local_size": 1024, "original_max_position_embeddings": 0}
# Every key Qwen's released configs carry (the first three), plus the sparse keys SGLang/vLLM read or inject.
KNOWN_DCA_KEYS = (
    "chunk_size",
    "local_size",
    "original_max_position_embeddings",
    "sparse_attention_config",  # injected by SGLang/vLLM from sparse_attention_config.json
    "sparse_attention_enabled",
    "sparse_attention_threshold",
    "sparse_attention_last_q",
)


class ConfigError(ValueError):
    """A configuration value breaks a rule; the message names field, value and rule."""


def runs_sparse(seq_len: int, extend_len: int, threshold: int) -> bool:
    """Whether a request's prefill piece runs sparse: it attends more than ``threshold`` keys after this extend and
    extends by at least :data:`MIN_SPARSE_QUERIES` tokens. One rule for the sparse planner
    (``ops/sparse/plan.py:plan_pieces``) and the scheduler's cost model."""
    return seq_len > threshold and extend_len >= MIN_SPARSE_QUERIES


def _int_field(cfg: Mapping[str, Any], name: str, default: Optional[int], where: str) -> int:
    value = cfg.get(name, default)
    if value is None:
        raise ConfigError(f"{where}.{name} is required (got nothing)")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.{name} must be an integer, got {value!r}")
    return value


@dataclass(frozen=True)
class DCAConfig:
    """Dual Chunk Attention settings of one model.

    ``chunk_len = chunk_size - local_size`` is the DCA chunk: keys are rotated at ``pos % chunk_len``,
    and a query attends to its own chunk (intra), the previous chunk (successive) and all earlier
    chunks (inter) with three different query rotations.
    """

    chunk_size: int
    local_size: int
    original_max_position_embeddings: int = 0
    sparse_attention_enabled: bool = False
    sparse_attention_threshold: int = DEFAULT_SPARSE_THRESHOLD
    sparse_attention_last_q: int = DEFAULT_LAST_Q

    def __post_init__(self) -> None:
        where = "dual_chunk_attention_config"
        if self.chunk_size <= 0:
            raise ConfigError(f"{where}.chunk_size must be > 0, got {self.chunk_size}")
        if self.local_size < 0:
            raise ConfigError(f"{where}.local_size must be >= 0, got {self.local_size}")
        if self.local_size >= self.chunk_size:
            raise ConfigError(
                f"{where}.local_size must be < chunk_size ({self.chunk_size}), got {self.local_size}"
            )
        if self.original_max_position_embeddings < 0:
            raise ConfigError(
                f"{where}.original_max_position_embeddings must be >= 0 (0 disables YaRN scaling), "
                f"got {self.original_max_position_embeddings}"
            )
        if self.sparse_attention_threshold < 0:
            raise ConfigError(
                f"{where}.sparse_attention_threshold must be >= 0, got {self.sparse_attention_threshold}"
            )
        if self.sparse_attention_last_q <= 0:
            raise ConfigError(
                f"{where}.sparse_attention_last_q must be > 0, got {self.sparse_attention_last_q}"
            )

    @property
    def chunk_len(self) -> int:
        """Tokens per DCA chunk: ``chunk_size - local_size`` (253,952 for the 1M models)."""
        return self.chunk_size - self.local_size

    @classmethod
    def from_hf_config(cls, hf_config: Union[Mapping[str, Any], Any]) -> Optional["DCAConfig"]:
        """Read ``dual_chunk_attention_config`` from an HF config (dict or object).

        Returns ``None`` when the model has no DCA config (plain RoPE attention).
        Defaults for absent keys follow Qwen's implementation (chunk_size 8192, local_size 1024); unknown keys
        (e.g. a misspelled ``chunk_sise``) are a ConfigError listing :data:`KNOWN_DCA_KEYS`.
        """
        if isinstance(hf_config, Mapping):
            raw = hf_config.get("dual_chunk_attention_config")
        else:
            raw = getattr(hf_config, "dual_chunk_attention_config", None)
        if raw is None:
            return None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> "DCAConfig":
        where = "dual_chunk_attention_config"
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{where} must be a JSON object, got {type(raw).__name__}")
        unknown = [k for k in raw if k not in KNOWN_DCA_KEYS]
        if unknown:
            raise ConfigError(
                f"{where} in config.json has unknown key(s) {unknown} (a misspelling would silently fall back to a "
                f"default); known keys: {list(KNOWN_DCA_KEYS)}"
            )
        enabled = raw.get("sparse_attention_enabled", raw.get("sparse_attention_config") is not None)
        if not isinstance(enabled, bool):
            raise ConfigError(f"{where}.sparse_attention_enabled must be true or false, got {enabled!r}")
        return cls(
            chunk_size=_int_field(raw, "chunk_size", DCA_DEFAULTS["chunk_size"], where),
            local_size=_int_field(raw, "local_size", DCA_DEFAULTS["local_size"], where),
            original_max_position_embeddings=_int_field(
                raw, "original_max_position_embeddings", DCA_DEFAULTS["original_max_position_embeddings"], where
            ),
            sparse_attention_enabled=enabled,
            sparse_attention_threshold=_int_field(
                raw, "sparse_attention_threshold", DEFAULT_SPARSE_THRESHOLD, where
            ),
            sparse_attention_last_q=_int_field(raw, "sparse_attention_last_q", DEFAULT_LAST_Q, where),
        )


@dataclass(frozen=True)
class HeadBudget:
    """Sparse-prefill budget of one query head: keep ``vertical`` key columns and ``slash`` diagonals."""

    pattern: str
    vertical: int
    slash: int
    score: Optional[float] = None


@dataclass(frozen=True)
class SparseBudgets:
    """Per-layer, per-query-head vertical/slash budgets (``sparse_attention_config.json``)."""

    heads: tuple[tuple[HeadBudget, ...], ...] = field(default_factory=tuple)

    @property
    def num_layers(self) -> int:
        return len(self.heads)

    @property
    def num_heads(self) -> int:
        return len(self.heads[0]) if self.heads else 0

    @classmethod
    def from_list(
        cls,
        raw: Sequence[Mapping[str, Sequence[Any]]],
        num_layers: Optional[int] = None,
        num_heads: Optional[int] = None,
    ) -> "SparseBudgets":
        """Parse Qwen's list-per-layer format and check it against the model's layer and head counts."""
        where = "sparse_attention_config"
        if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
            raise ConfigError(f"{where} must be a list with one entry per layer, got {type(raw).__name__}")
        if num_layers is not None and len(raw) != num_layers:
            raise ConfigError(f"{where} has {len(raw)} layers, the model has num_hidden_layers={num_layers}")
        layers = []
        for li, layer in enumerate(raw):
            if not isinstance(layer, Mapping):
                raise ConfigError(f"{where}[{li}] must be an object {{head: [...]}}, got {type(layer).__name__}")
            expected = num_heads if num_heads is not None else len(layer)
            keys = sorted(layer, key=lambda k: int(k) if str(k).lstrip("-").isdigit() else -1)
            if [str(k) for k in keys] != [str(h) for h in range(expected)]:
                got, want = [str(k) for k in layer], {str(h) for h in range(expected)}
                missing = sorted(want - set(got), key=int)
                unexpected = sorted({k for k in got if k not in want or got.count(k) > 1})
                raise ConfigError(
                    f"{where}[{li}] has {len(layer)} head entries; expected heads 0..{expected - 1} "
                    f"(num_attention_heads={expected}): missing {missing[:8]}, unexpected/duplicate {unexpected[:8]}"
                )
            layers.append(tuple(_parse_head(layer[k], f"{where}[{li}][{k!r}]") for k in keys))
        for li, layer in enumerate(layers):
            if len(layer) != len(layers[0]):
                raise ConfigError(
                    f"{where}: layers have different head counts {sorted({len(l) for l in layers})}; "
                    f"{where}[{li}] has {len(layer)} heads but {where}[0] has {len(layers[0])}"
                )
        return cls(heads=tuple(layers))

    @classmethod
    def from_json(
        cls, path: Union[str, Path], num_layers: Optional[int] = None, num_heads: Optional[int] = None
    ) -> "SparseBudgets":
        with open(path) as f:
            return cls.from_list(json.load(f), num_layers=num_layers, num_heads=num_heads)

    def to_list(self) -> list[dict[str, list[Any]]]:
        return [
            {str(h): [b.pattern, b.vertical, b.slash, b.score] for h, b in enumerate(layer)} for layer in self.heads
        ]

    def for_tp_rank(self, tp_rank: int, tp_size: int) -> "SparseBudgets":
        """The slice of query heads that tensor-parallel rank ``tp_rank`` of ``tp_size`` owns."""
        if tp_size <= 0:
            raise ConfigError(f"tp_size={tp_size} is invalid: tp_size must be >= 1")
        if not 0 <= tp_rank < tp_size:
            raise ConfigError(f"tp_rank must be in [0, tp_size={tp_size}), got {tp_rank}")
        if self.num_heads % tp_size:
            raise ConfigError(f"num_heads={self.num_heads} is not divisible by tp_size={tp_size}")
        per = self.num_heads // tp_size
        return SparseBudgets(heads=tuple(layer[tp_rank * per : (tp_rank + 1) * per] for layer in self.heads))


def _parse_head(entry: Sequence[Any], where: str) -> HeadBudget:
    if not isinstance(entry, Sequence) or isinstance(entry, (str, bytes)) or len(entry) < 3:
        raise ConfigError(f"{where} must be [pattern, vertical_size, slash_size, score], got {entry!r}")
    pattern, vertical, slash = entry[0], entry[1], entry[2]
    score = entry[3] if len(entry) > 3 else None
    if pattern not in _KNOWN_PATTERNS:
        raise ConfigError(f"{where} pattern {pattern!r} is unknown; supported: {list(_KNOWN_PATTERNS)}")
    for name, value in (("vertical_size", vertical), ("slash_size", slash)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} {name} must be an integer in [0, {INT32_MAX}], got {value!r}")
        if value < 0:
            raise ConfigError(f"{where} {name} must be >= 0, got {value}")
        if value > INT32_MAX:
            raise ConfigError(
                f"{where} {name}={value} exceeds the int32 limit {INT32_MAX} (budgets are int32 on the GPU); "
                f"fix {name} in sparse_attention_config.json"
            )
    if score is not None and (isinstance(score, bool) or not isinstance(score, (int, float))):
        raise ConfigError(f"{where} score must be a number or null, got {score!r}")
    if isinstance(score, float) and not math.isfinite(score):
        raise ConfigError(f"{where} score must be finite or null, got {score!r}")
    return HeadBudget(pattern=pattern, vertical=vertical, slash=slash, score=score)


def sparse_budgets_from_hf(
    hf_config: Union[Mapping[str, Any], Any], cfg: Optional[DCAConfig]
) -> Optional[SparseBudgets]:
    """The per-head budgets sparse prefill should use, or None when it is off.

    SGLang puts ``sparse_attention_config.json`` (found beside ``config.json``) into
    ``dual_chunk_attention_config["sparse_attention_config"]`` and sets ``sparse_attention_enabled``. Budgets are
    checked against the model's layer and query-head counts (slice them per tensor-parallel rank afterwards).
    """
    if cfg is None or not cfg.sparse_attention_enabled:
        return None
    get = hf_config.get if isinstance(hf_config, Mapping) else (lambda k, d=None: getattr(hf_config, k, d))
    raw = get("dual_chunk_attention_config") or {}
    budgets_raw = raw.get("sparse_attention_config")
    if not budgets_raw:
        raise ConfigError(
            "dual_chunk_attention_config.sparse_attention_enabled is true but no sparse_attention_config.json "
            "was found beside config.json; add the budgets file or set sparse_attention_enabled to false"
        )
    if isinstance(budgets_raw, Mapping):  # inline in the DCA block, keyed by layer index ("0".."L-1" or ints)
        idx = sorted(budgets_raw, key=lambda k: int(k) if str(k).isdigit() else -1)
        if [str(k) for k in idx] != [str(i) for i in range(len(idx))]:
            raise ConfigError(f"dual_chunk_attention_config.sparse_attention_config keyed by layer must have keys "
                              f"0..{len(idx) - 1}, got {[str(k) for k in idx][:8]}")
        budgets_raw = [budgets_raw[k] for k in idx]
    return SparseBudgets.from_list(
        budgets_raw, num_layers=get("num_hidden_layers"), num_heads=get("num_attention_heads")
    )
