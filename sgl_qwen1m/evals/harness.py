"""Accuracy harness: build samples, run them through a runner, score, aggregate, write results JSON.

Rows use the project's results format::

    {"metric": "accuracy", "backend": "qwen1m-dense", "task": "passkey", "length_multiple": 8,
     "prompt_tokens": 32736, "samples": 20, "value": 0.95}

and a results file is ``{"command", "gpu", "versions", "date", "rows"}`` (see :func:`write_results`).
Lengths are multiples of the model's training length; ``RESERVE`` tokens are left for the answer, so a 1x prompt
plus its answer stays within the training length.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

from sgl_qwen1m.evals.runners import EOS_ID, Runner
from sgl_qwen1m.model.tasks import Sample, TaskBuilder, score_output

__all__ = [
    "write_records",
    "read_records",
    "RESERVE",
    "Record",
    "prompt_length",
    "make_samples",
    "evaluate",
    "aggregate",
    "agreement_rows",
    "format_table",
    "environment",
    "write_results",
    "reference_accuracy",
]

RESERVE = 40  # tokens kept free for the answer (the longest, niah_multivalue, has 33)


@dataclass
class Record:
    """One scored prompt."""

    backend: str
    task: str
    length_multiple: float
    prompt_tokens: int
    answers: list[str]
    output_ids: list[int]
    output_text: str
    score: float


def prompt_length(multiple: float, train_len: int) -> int:
    return int(round(multiple * train_len)) - RESERVE


def make_samples(
    tasks: Sequence[str],
    multiples: Sequence[float],
    samples: int,
    train_len: int,
    seed: int = 0,
    builder: Optional[TaskBuilder] = None,
) -> list[tuple[float, Sample]]:
    """``samples`` prompts per (task, multiple), deterministic in ``seed`` (independent of the other pairs)."""
    builder = builder or TaskBuilder()
    out = []
    for task in tasks:
        for m in multiples:
            rng = random.Random(f"{seed}/{task}/{m}")
            n = prompt_length(m, train_len)
            out += [(m, builder.make(task, n, rng)) for _ in range(samples)]
    return out


def _cut(ids: Sequence[int]) -> list[int]:
    ids = list(ids)
    return ids[: ids.index(EOS_ID)] if EOS_ID in ids else ids


def evaluate(
    runner: Runner, samples: Sequence[tuple[float, Sample]], builder: Optional[TaskBuilder] = None
) -> list[Record]:
    """Greedy continuations of every sample through ``runner``, scored."""
    builder = builder or TaskBuilder()
    outs = runner.generate([s.prompt_ids for _, s in samples], [s.max_new_tokens for _, s in samples])
    records = []
    for (m, s), o in zip(samples, outs):
        ids = _cut(o)
        text = builder.decode(ids)
        score = score_output(s, text)
        records.append(Record(runner.name, s.task, m, len(s.prompt_ids), list(s.answers), ids, text, score))
    return records


def _groups(records: Sequence[Record]) -> dict[tuple[str, str, float], list[Record]]:
    groups: dict[tuple[str, str, float], list[Record]] = {}
    for r in records:
        groups.setdefault((r.backend, r.task, r.length_multiple), []).append(r)
    return groups


def aggregate(records: Sequence[Record]) -> list[dict[str, Any]]:
    """Mean score per (backend, task, multiple) as ``accuracy`` rows."""
    rows = []
    for (backend, task, m), rs in _groups(records).items():
        rows.append(
            {
                "metric": "accuracy",
                "backend": backend,
                "task": task,
                "length_multiple": m,
                "prompt_tokens": rs[0].prompt_tokens,
                "samples": len(rs),
                "value": sum(r.score for r in rs) / len(rs),
            }
        )
    return rows


def agreement_rows(a: Sequence[Record], b: Sequence[Record]) -> list[dict[str, Any]]:
    """Share of prompts whose greedy outputs (cut at EOS) are identical, per (task, multiple) and overall.

    ``a`` and ``b`` must be records of the same samples in the same order.
    """
    if len(a) != len(b) or any(
        (x.task, x.length_multiple, x.answers) != (y.task, y.length_multiple, y.answers) for x, y in zip(a, b)
    ):
        raise ValueError("agreement_rows: the two record lists are not over the same samples")
    pair = f"{a[0].backend} vs {b[0].backend}" if a else "none"
    same = [x.output_ids == y.output_ids for x, y in zip(a, b)]
    rows = []
    keys = list(dict.fromkeys((x.task, x.length_multiple) for x in a))
    for task, m in keys:
        idx = [i for i, x in enumerate(a) if (x.task, x.length_multiple) == (task, m)]
        rows.append(
            {
                "metric": "greedy_agreement",
                "backend": pair,
                "task": task,
                "length_multiple": m,
                "prompt_tokens": a[idx[0]].prompt_tokens,
                "samples": len(idx),
                "value": sum(same[i] for i in idx) / len(idx),
            }
        )
    rows.append(
        {
            "metric": "greedy_agreement",
            "backend": pair,
            "task": "all",
            "length_multiple": None,
            "prompt_tokens": None,
            "samples": len(same),
            "value": sum(same) / max(len(same), 1),
        }
    )
    return rows


def format_table(
    rows: Sequence[dict[str, Any]], backends: Sequence[str], labels: Optional[Sequence[str]] = None
) -> str:
    """A plain-text table: one line per (task, multiple), one accuracy column per backend."""
    labels = list(labels or backends)
    acc = {(r["backend"], r["task"], r["length_multiple"]): r for r in rows if r["metric"] == "accuracy"}
    keys = list(dict.fromkeys((r["task"], r["length_multiple"]) for r in rows if r["metric"] == "accuracy"))
    width = max([len(k[0]) for k in keys] + [4])
    head = f"{'task':<{width}}  {'x train':>7}  {'tokens':>7}  " + "  ".join(f"{name:>16}" for name in labels)
    lines = [head, "-" * len(head)]
    for task, m in keys:
        cells = []
        tokens = next((acc[(b, task, m)]["prompt_tokens"] for b in backends if (b, task, m) in acc), 0)
        for b in backends:
            r = acc.get((b, task, m))
            cells.append(f"{100 * r['value']:>14.1f} %" if r else f"{'-':>16}")
        lines.append(f"{task:<{width}}  {m:>7g}  {tokens:>7}  " + "  ".join(cells))
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    """GPU name and package versions (without importing SGLang): :mod:`sgl_qwen1m.provenance`."""
    from sgl_qwen1m.provenance import collect_versions, short_gpu_name

    return {"gpu": short_gpu_name(), "versions": collect_versions()}


def write_results(
    path: Union[str, Path], rows: Sequence[dict[str, Any]], command: str, records: Optional[Sequence[Record]] = None
) -> Path:
    """Write ``{"command", "gpu", "versions", "date", "rows"}``; per-prompt ``records`` (if given) go to
    ``<name>.records.json.gz`` beside it (gzip, ``zcat`` reads it; the tree has a size budget), named by the
    document's ``records_file``. :func:`read_records` reads them back."""
    from sgl_qwen1m.jsonout import dumps
    from sgl_qwen1m.provenance import header

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    doc: dict[str, Any] = header(command, **environment(), rows=list(rows))
    if records is not None:
        doc["records_file"] = write_records(out, [asdict(r) for r in records]).name
    out.write_text(dumps(doc) + "\n")
    return out


def write_records(results_path: Union[str, Path], records: Sequence[dict[str, Any]]) -> Path:
    """``records`` as gzip-compressed JSON at ``<results stem>.records.json.gz`` (:func:`sgl_qwen1m.jsonout.write`:
    same bytes for the same records)."""
    from sgl_qwen1m.jsonout import write

    p = Path(results_path)
    return write(p.with_name(p.stem + ".records.json.gz"), list(records))


def read_records(results_path: Union[str, Path]) -> list[dict[str, Any]]:
    """Per-prompt records of a results file: its ``records_file`` (or an inline ``records`` list)."""
    from sgl_qwen1m.jsonout import load

    p = Path(results_path)
    doc = json.loads(p.read_text())
    if "records" in doc:
        return list(doc["records"])
    if "records_file" not in doc:
        raise ValueError(f"{p} has no per-prompt records")
    return load(p.parent / doc["records_file"])


def reference_accuracy(
    model: Any, tasks: Sequence[str], multiples: Sequence[float], samples: int, train_len: int, seed: int
) -> list[dict[str, Any]]:
    """Accuracy rows of an in-memory ``TinyQwen2`` through the torch reference (DCA), printed as a table.

    The check after training (:data:`sgl_qwen1m.model.train.Evaluate`; the ``train`` verb passes this function).
    """
    from sgl_qwen1m.evals.runners import TorchRunner

    work = make_samples(tasks, multiples, samples, train_len, seed=seed)
    rows = aggregate(evaluate(TorchRunner(model=model, name="reference-dca"), work))
    print(format_table(rows, ["reference-dca"], ["DCA (reference)"]))
    return rows
