"""``python -m sgl_qwen1m eval longtext-plot FILE.json [FILE.json ...] --out PNG``: one figure of ``eval longtext``
results, one line per backend: perplexity of the whole sequence (positions ``0..L``) against the length multiple,
with the same text scored in training-length windows (``in-length windows``) dotted, and code-retrieval accuracy
(every task) against the multiple. ``--merge-out`` also writes one results file of all the rows.
Reads the rows only; draws nothing that is not in them. Needs matplotlib.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional, Sequence, Union

__all__ = ["IN_LENGTH", "whole_sequence_rows", "in_length_rows", "merge_longtext", "refine_rows", "plot_longtext",
           "plot_training_loss", "register"]

IN_LENGTH = "in-length windows"  # eval longtext's content-matched in-length row


def in_length_rows(rows: Sequence[dict[str, Any]]) -> dict[str, dict[float, dict[str, Any]]]:
    """``{backend: {multiple: row}}`` of the "in-length windows" rows (the same sequences scored one training
    length at a time; ``ratio`` = long-context / in-length perplexity of the same predicted tokens)."""
    out: dict[str, dict[float, dict[str, Any]]] = {}
    for r in rows:
        if r.get("metric") == "perplexity" and r.get("case") == IN_LENGTH and r.get("value") is not None:
            out.setdefault(r["backend"], {})[float(r["length_multiple"])] = r
    return out


def _train_len(rows: Sequence[dict[str, Any]]) -> Optional[int]:
    """The training length the rows' ``prompt_tokens`` / ``length_multiple`` imply (None if no row has both)."""
    return next((round(r["prompt_tokens"] / r["length_multiple"]) for r in rows
                 if r.get("length_multiple") and r.get("prompt_tokens")), None)


def _train_len_label(rows: Sequence[dict[str, Any]]) -> str:
    n = _train_len(rows)
    return f"{n:,}-token" if n else "training-length"


def merge_longtext(paths: Sequence[Union[str, Path]], command: str, agree_with: Optional[str] = None,
                   refine_report: Optional[Union[str, Path]] = None) -> dict[str, Any]:
    """One results document with the rows of every ``eval longtext`` file in ``paths`` (each backend once),
    ``command`` the command that made them all, and ``runs`` the command, date and GPU of each file.

    ``agree_with`` (a backend): also ``greedy_agreement`` rows (:func:`sgl_qwen1m.evals.harness.agreement_rows`:
    share of retrieval prompts whose greedy outputs are identical) of every other backend against it, from the
    files' per-prompt records. ``refine_report`` (``refine``'s report, ``.json`` or ``.json.gz``): also its
    :func:`refine_rows`."""
    docs = [json.loads(Path(p).read_text()) for p in paths]
    if not docs:
        raise ValueError("merge_longtext: no results files given")
    rows, seen = [], set()
    for p, d in zip(paths, docs):
        backends = {r["backend"] for r in d["rows"]}
        if backends & seen:
            raise ValueError(f"{p}: backend(s) {sorted(backends & seen)} already came from another file")
        seen |= backends
        rows += d["rows"]
    if agree_with is not None:
        rows += _agreement(paths, docs, agree_with, rows[0].get("model"))
    if refine_report is not None:
        from sgl_qwen1m.jsonout import load

        rows += refine_rows(load(refine_report), rows[0].get("model"), _train_len(rows))
    runs = [{"file": Path(p).name, "command": d.get("command"), "date": d.get("date"), "gpu": d.get("gpu"),
             **({"records_file": d["records_file"]} if "records_file" in d else {})} for p, d in zip(paths, docs)]
    return {"command": command, "gpu": docs[0].get("gpu"), "versions": docs[0].get("versions"),
            "date": max(str(d.get("date", "")) for d in docs), "runs": runs, "rows": rows}


def whole_sequence_rows(rows: Sequence[dict[str, Any]]) -> dict[str, dict[float, float]]:
    """``{backend: {multiple: perplexity}}`` of the rows that cover a whole sequence (``position_start`` 0 and the
    widest ``position_end`` of their multiple)."""
    widest: dict[tuple[str, float], dict[str, Any]] = {}
    for r in rows:
        if (r.get("metric") != "perplexity" or r.get("position_start", 0) != 0 or r.get("value") is None
                or r.get("case") == IN_LENGTH):
            continue
        key = (r["backend"], float(r["length_multiple"]))
        if key not in widest or r.get("position_end", 0) > widest[key].get("position_end", 0):
            widest[key] = r
    out: dict[str, dict[float, float]] = {}
    for (backend, m), r in sorted(widest.items()):
        out.setdefault(backend, {})[m] = float(r["value"])
    return out


def refine_rows(report: dict[str, Any], model: Optional[str], train_len: Optional[int]) -> list[dict[str, Any]]:
    """Results rows of a ``refine`` report: attention recall at the calibration length before (backend
    ``qwen1m-sparse-start``, the starting budgets) and after (``qwen1m-sparse-refined``) refinement. ``recall``: mean
    over heads of each head's mean recall over its sampled queries; ``recall_min``: the smallest head mean (the
    statistic the target applies to); ``query_recall_min``: the worst single sampled query of any head."""
    s, heads = report["summary"], report["heads"]
    n = int(s["calibration_length"])
    out = []
    for backend, when in (("qwen1m-sparse-start", "before"), ("qwen1m-sparse-refined", "after")):
        common = {"backend": backend, "task": "refine_calibration", "prompt_tokens": n,
                  "length_multiple": n / train_len if train_len else None, "sequences": s["calibration_sequences"],
                  "heads": len(heads), "target": s["target"], **({"model": model} if model else {})}
        out.append({"metric": "recall", **common,
                    "value": sum(h[f"recall_mean_{when}"] for h in heads) / len(heads)})
        out.append({"metric": "recall_min", **common, "value": min(h[f"recall_{when}"] for h in heads),
                    "statistic": f"smallest per-head {s['stat']} recall",
                    "query_recall_min": min(h[f"recall_min_{when}"] for h in heads),
                    "budget_keys_per_query": s[f"budget_keys_per_query_{when}"]})
    return out


def _agreement(paths: Sequence[Union[str, Path]], docs: list[dict[str, Any]], reference: str,
               model: Optional[str]) -> list[dict[str, Any]]:
    from sgl_qwen1m.evals.harness import Record, agreement_rows, read_records

    recs: dict[str, list[Record]] = {}
    for p, d in zip(paths, docs):
        if "records_file" in d:
            raw = read_records(p)
            if raw:
                recs[raw[0]["backend"]] = [Record(**r) for r in raw]
    if reference not in recs:
        raise ValueError(f"--agree-with {reference}: no per-prompt records of that backend (have: {sorted(recs)})")
    out = []
    for backend, rs in recs.items():
        if backend != reference:
            out += [dict(r, model=model) if model else r for r in agreement_rows(rs, recs[reference])]
    return out


def plot_longtext(paths: Sequence[Union[str, Path]], out: Union[str, Path]) -> Path:
    """The figure described in the module docstring, from every results file in ``paths``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sgl_qwen1m.figures import save_png

    rows: list[dict[str, Any]] = []
    gpu = ""
    for p in paths:
        d = json.loads(Path(p).read_text())
        rows += d["rows"]
        gpu = gpu or str(d.get("gpu", "")).split(",")[0]
    model = next((str(r["model"]) for r in rows if r.get("model")), "")
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.8))
    ppl = whole_sequence_rows(rows)
    alone = in_length_rows(rows)
    for i, (backend, by_m) in enumerate(ppl.items()):
        ms = sorted(by_m)
        a1.plot(ms, [by_m[m] for m in ms], marker="o", ms=3, color=f"C{i}", label=backend)
    drawn = None  # every backend scores the in-length windows with plain attention inside the training length (equal
    for backend in ppl:  # up to rounding in the rows): drawn once, from the first backend that has them
        if alone.get(backend) and drawn is None:
            am = sorted(alone[backend])
            a1.plot(am, [alone[backend][m]["value"] for m in am], marker="x", ms=4, lw=0.8, ls=":", color="0.3",
                    label=f"same text in {_train_len_label(rows)} windows ({backend})")
            drawn = backend
    a1.set(xscale="log", yscale="log", xlabel="prompt length / training length",
           ylabel="perplexity of the whole sequence")
    a1.set_xticks([m for m in sorted({m for b in ppl.values() for m in b})])
    a1.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    a1.legend(fontsize=7)
    acc: dict[tuple[str, str], dict[float, float]] = {}
    for r in rows:
        if r.get("metric") == "accuracy" and r.get("value") is not None:
            acc.setdefault((r["backend"], str(r.get("task", ""))), {})[float(r["length_multiple"])] = float(r["value"])
    tasks = sorted({t for _, t in acc})
    for i, backend in enumerate(ppl):
        for j, task in enumerate(tasks):
            if (backend, task) in acc:
                by_m = acc[(backend, task)]
                ms = sorted(by_m)
                a2.plot(ms, [by_m[m] for m in ms], marker="os^v"[j % 4], ms=3, color=f"C{i}",
                        ls=("-", "--", ":", "-.")[j % 4], label=f"{backend} {task}")
    if len(acc) > 1:
        a2.legend(fontsize=6)
    a2.set(xscale="log", xlabel="prompt length / training length", ylabel="code retrieval accuracy", ylim=(-0.02, 1.02))
    a2.set_xticks(a1.get_xticks())
    a2.get_xaxis().set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    fig.suptitle(f"{model}: long-context evaluation" + (f" ({gpu})" if gpu else ""), fontsize=10)
    fig.tight_layout()
    return save_png(fig, out)


def plot_training_loss(log_path: Union[str, Path], out: Union[str, Path]) -> Path:
    """Training loss (and learning rate) against step from ``train-lm``'s ``training_log.json``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from sgl_qwen1m.figures import save_png

    meta = json.loads(Path(log_path).read_text())
    log = meta["log"]
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([x["step"] for x in log], [x["loss"] for x in log], marker=".", ms=3, label="training loss")
    ax.set(xlabel="step", ylabel="loss (nats/token)", yscale="log")
    ax2 = ax.twinx()
    ax2.plot([x["step"] for x in log], [x["lr"] for x in log], color="0.6", lw=0.8, ls="--")
    ax2.set_ylabel("learning rate", color="0.5")
    ppl = meta.get("heldout_perplexity")
    ax.set_title(f"{meta.get('params', 0) / 1e6:.0f}M parameters, {meta.get('tokens', 0) / 1e6:.0f}M tokens, "
                 f"{meta.get('train_seconds', 0):.0f} s" + (f"; held-out ppl {ppl:.2f}" if ppl else ""), fontsize=8)
    fig.tight_layout()
    return save_png(fig, out)


def register(sub: Any) -> None:
    """Add ``longtext-plot``, ``loss-plot`` and ``retrieval-breakdown`` under ``eval``'s subparsers."""
    q = sub.add_parser("loss-plot", help="plot train-lm's training_log.json (loss and learning rate vs step)")
    q.add_argument("log", help="training_log.json of train-lm")
    q.add_argument("--out", required=True, help="PNG path")
    q.set_defaults(handler=lambda a, argv: print(plot_training_loss(a.log, a.out)) or 0)
    b = sub.add_parser("retrieval-breakdown", help="where code retrieval fails: first digit / first 3 / exact per "
                       "backend, task and length (from *.records.json.gz)")
    b.add_argument("records", nargs="+", help="per-prompt records files of eval longtext")
    b.set_defaults(handler=_run_breakdown)
    p = sub.add_parser("longtext-plot", help="plot eval longtext results (perplexity and retrieval vs length)")
    p.add_argument("json", nargs="+", help="results files of eval longtext")
    p.add_argument("--out", required=True, help="PNG path")
    p.add_argument("--merge-out", default=None, help="also write one results file with every file's rows")
    p.add_argument("--command", default=None, help="the command that made the files (the merged file's command)")
    p.add_argument("--refine-report", default=None, help="with --merge-out: also the recall rows of this refine "
                   "report (before and after)")
    p.add_argument("--agree-with", default=None, help="with --merge-out: greedy agreement of every backend's "
                   "retrieval outputs with this backend's (e.g. qwen1m-dense)")
    p.set_defaults(handler=_run)


def _run_breakdown(args: Any, argv: list[str]) -> int:
    from sgl_qwen1m.evals.code_retrieval import prefix_breakdown
    from sgl_qwen1m.jsonout import load

    rows = prefix_breakdown([r for f in args.records for r in load(f)])
    print("backend                 task                    x    prompts  first_digit  first_3  exact")
    for r in rows:
        print(f"{r['backend']:<23} {r['task']:<23} {r['length_multiple']:<4g} {r['prompts']:>8} {r['first_digit']:>12}"
              f" {r['first_3']:>8} {r['exact']:>6}")
    return 0


def _run(args: Any, argv: list[str]) -> int:
    if args.merge_out:
        from sgl_qwen1m.jsonout import write

        doc = merge_longtext(args.json, args.command or "python -m sgl_qwen1m eval " + " ".join(argv),
                             args.agree_with, args.refine_report)
        import shlex

        doc["merged_by"] = "python -m sgl_qwen1m eval " + shlex.join(argv)
        write(args.merge_out, doc)
        print(f"wrote {args.merge_out} ({len(doc['rows'])} rows from {len(args.json)} files)")
    path = plot_longtext(args.json, args.out)
    print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0
