"""The results file every benchmark figure lives in: ``benchmarks/results/<name>.json``.

Schema (``validate`` checks it)::

    {"command": str, "gpu": str, "versions": {pkg: version}, "date": ISO-8601 str,
     "rows": [{"metric": str, "backend": str, "prompt_tokens": int, "value": float | null, ...extra}],
     "backends": {name: {"checked": bool, "error": str, ...}},   # optional
     "runs": [{"command", "date", "gpu"}]}                       # optional, one entry per invocation

A row is keyed by ``(metric, backend, prompt_tokens)``, plus its ``case`` when it has one (the reliability suite:
many cases share a length); writing a row with the same key replaces it, so several invocations (one backend
each, say) merge into one file. A measurement that failed is a row whose ``value`` is
``null`` with an ``"error"``. The file is rewritten atomically after every change, so a killed run keeps what it had.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, Union

from sgl_qwen1m.provenance import collect_versions, gpu_name
from sgl_qwen1m.provenance import now_iso as _now_iso

__all__ = [
    "METRICS",
    "Results",
    "validate",
    "row_key",
    "merge_rows",
    "command_line",
    "now_iso",
    "gpu_name",
    "collect_versions",
]

METRICS = (
    "ttft_s",
    "decode_step_ms",
    "peak_mem_gib",
    "tflops",
    "engine_start_s",
    "e2e_latency_s",
    "output_tokens",
)
_REQUIRED = ("command", "gpu", "versions", "date", "rows")
_ROW_REQUIRED = ("metric", "backend", "prompt_tokens", "value")


def now_iso() -> str:
    """Local time with offset, to the second."""
    return _now_iso(utc=False)


def command_line(argv: Optional[list[str]] = None) -> str:
    """The command as typed: ``python3 -m sgl_qwen1m.bench <args>`` (interpreter name as it ran)."""
    args = sys.argv[1:] if argv is None else argv
    return f"{Path(sys.executable).name or 'python3'} -m sgl_qwen1m.bench " + shlex.join(args)


def row_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """``(metric, backend, prompt_tokens)``, with each of :data:`KEY_FIELDS` a row names appended (the same backend
    on two models, KV dtypes, tasks or code variants gives two rows)."""
    key = (row.get("metric"), row.get("backend"), row.get("prompt_tokens"))
    return key + tuple((f, row[f]) for f in KEY_FIELDS if f in row)


KEY_FIELDS = ("case", "model", "kv_dtype", "task", "variant")


def validate(data: Any) -> list[str]:
    """Problems with a results dict (empty list when it follows the schema)."""
    errs: list[str] = []
    if not isinstance(data, dict):
        return [f"results must be a JSON object, got {type(data).__name__}"]
    for key in _REQUIRED:
        if key not in data:
            errs.append(f"missing top-level key {key!r}")
    if not isinstance(data.get("versions", {}), dict):
        errs.append("versions must be an object")
    rows = data.get("rows", [])
    if not isinstance(rows, list):
        return errs + ["rows must be a list"]
    seen: set[tuple[Any, ...]] = set()
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            errs.append(f"rows[{i}] must be an object")
            continue
        for key in _ROW_REQUIRED:
            if key not in row:
                errs.append(f"rows[{i}] missing {key!r}")
        value = row.get("value")
        if value is not None and not isinstance(value, (int, float)):
            errs.append(f"rows[{i}].value must be a number or null, got {value!r}")
        if value is None and "error" not in row:
            errs.append(f"rows[{i}] has value null but no 'error'")
        key = row_key(row)
        if key in seen:
            errs.append(f"rows[{i}] duplicates {key}")
        seen.add(key)
    return errs


class Results:
    """A results file that is merged into, not overwritten, and saved after every change."""

    def __init__(self, path: Union[str, Path], data: dict[str, Any]) -> None:
        self.path = Path(path)
        self.data = data
        self.row_defaults: dict[str, Any] = {}  # fields every row of this invocation carries unless given (model)

    @classmethod
    def open(
        cls,
        path: Union[str, Path],
        command: Optional[str] = None,
        gpu: Optional[str] = None,
        versions: Optional[dict[str, Any]] = None,
        extra: Optional[dict[str, Any]] = None,
    ) -> "Results":
        """Load ``path`` if it exists (keeping its rows), then stamp this invocation's provenance on it.

        With ``command`` None the file is opened as-is (a worker adding rows to its parent's file).
        """
        p = Path(path)
        data: dict[str, Any] = {}
        if p.exists():
            with open(p) as f:
                data = json.load(f)
        data.setdefault("rows", [])
        data.setdefault("backends", {})
        data.setdefault("runs", [])
        if command is not None:
            date = now_iso()
            data.update(command=command, gpu=gpu or "unknown", versions=versions or {}, date=date)
            data["runs"].append({"command": command, "date": date, "gpu": gpu or "unknown"})
            if extra:
                data.update(extra)
        for key, default in (("command", ""), ("gpu", "unknown"), ("versions", {}), ("date", now_iso())):
            data.setdefault(key, default)
        res = cls(p, data)
        res.save()
        return res

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.data["rows"]

    def upsert(
        self, metric: str, backend: str, prompt_tokens: int, value: Optional[float], save: bool = True, **extra: Any
    ) -> dict[str, Any]:
        """Add or replace the row ``(metric, backend, prompt_tokens)``; ``value=None`` needs ``error=...``."""
        if value is None and "error" not in extra:
            raise ValueError("a row without a value needs an 'error'")
        row: dict[str, Any] = {"metric": metric, "backend": backend, "prompt_tokens": int(prompt_tokens)}
        row["value"] = None if value is None else float(value)
        row.update(extra)
        for key, value in self.row_defaults.items():
            row.setdefault(key, value)
        row.setdefault("run", len(self.data["runs"]) - 1)
        self.data["rows"] = [r for r in self.rows if row_key(r) != row_key(row)] + [row]
        if save:
            self.save()
        return row

    def backend_info(self, backend: str, save: bool = True, **info: Any) -> dict[str, Any]:
        """Merge ``info`` into ``backends[backend]`` (``checked``, ``error``, memory usage, ...)."""
        entry = self.data["backends"].setdefault(backend, {})
        entry.update(info)
        if save:
            self.save()
        return entry

    def find(self, metric: str, backend: Optional[str] = None) -> list[dict[str, Any]]:
        """Rows of one metric (optionally one backend), sorted by prompt length."""
        rows = [r for r in self.rows if r["metric"] == metric and (backend is None or r["backend"] == backend)]
        return sorted(rows, key=lambda r: r["prompt_tokens"])

    def save(self) -> None:
        """Atomic rewrite: a reader never sees half a file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".tmp{os.getpid()}")
        from sgl_qwen1m.jsonout import dumps

        with open(tmp, "w") as f:
            f.write(dumps(self.data) + "\n")
        os.replace(tmp, self.path)

    @staticmethod
    def load(path: Union[str, Path]) -> dict[str, Any]:
        """Read a results file as a dict."""
        with open(path) as f:
            return json.load(f)


def merge_rows(datas: list[dict[str, Any]]) -> dict[str, Any]:
    """One results dict with the rows of all ``datas`` (the first file's ``config``, ``gpu`` and ``command``).

    A row whose (metric, backend, prompt_tokens) already came from an earlier file is dropped.
    """
    if not datas:
        raise ValueError("merge_rows: no results given")
    seen: set[tuple[Any, ...]] = set()
    rows: list[dict[str, Any]] = []
    for data in datas:
        for r in data.get("rows", []):
            key = row_key(r)
            if key not in seen:
                seen.add(key)
                rows.append(r)
    return dict(datas[0], rows=rows)


def backends_in(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Backends in first-seen order."""
    out: list[str] = []
    for r in rows:
        if r["backend"] not in out:
            out.append(r["backend"])
    return out
