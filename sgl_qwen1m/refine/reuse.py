"""Pattern-reuse experiment (issue 16, item 4) on the bundled tiny model, on CPU: recall, passkey, estimation work.

    python -m sgl_qwen1m.refine.reuse run --out benchmarks/results/pattern-reuse-cpu/pattern_reuse_cpu.json \\
        [--multiples 4,8,16] [--chunks 128,512,1024] [--every 1,2,4,8] [--samples 20] [--recall-seqs 2] [--jobs 2]
    python -m sgl_qwen1m.refine.reuse plot benchmarks/results/pattern-reuse-cpu/pattern_reuse_cpu.json

Setup: the tiny model with every head at ``--vertical`` 256 / ``--slash`` 512 and ``--threshold`` 2048 (the
committed ``tiny-model-accuracy`` sparse runs; or per-head ``--budgets FILE``), prefilled with
``--chunked-prefill-size`` ``C`` as serving cuts it (:func:`~sgl_qwen1m.refine.reuse_prefill.serving_pieces`:
prefill chunks inside DCA chunks; chunks whose prefix ends at or below the threshold run dense and are left out of
recall and estimation counts). ``reestimate_every`` ``k`` follows :mod:`sgl_qwen1m.ops.sparse.reuse` over the
sparse pieces (``k == 1``: today's behaviour). ``--samples 0``: recall and estimation only.

* **Recall** (:mod:`.recall`'s machinery, ``evaluate(..., reestimate_every=k)``): per layer and head,
  ``exp(lse_sparse - lse_full)`` of sampled query rows of every sparse piece (its last ``--tail-rows`` plus
  ``--random-rows`` random), dense-model activations, on the first ``--recall-seqs`` passkey prompts of each length.
  Rows: ``recall`` (mean over heads, rows and sequences; it lists every head's mean and min and ``head_mean_min``,
  the smallest per-head mean: the refine tool's pass criterion) and ``recall_min`` (the minimum over all of them).
* **Accuracy**: greedy passkey answers of ``--samples`` prompts per length (the eval harness's prompts: seed
  ``"{seed}/passkey/{m}"``, ``m * 1024 - 40`` tokens) through the reference model with chunked sparse prefill
  (:func:`~sgl_qwen1m.refine.reuse_prefill.chunked_sparse_prefill`; decode steps dense, as in serving), scored as
  the harness does. Settings whose estimation schedule equals a smaller ``k``'s (same estimating pieces, e.g. every
  ``k >= 2`` when no DCA chunk holds more than 2 sparse pieces) compute the same thing: they are run once and the
  row says ``same_schedule_as_k``. ``--oracle-check N`` re-runs N prompts per setting through the fp32 oracle.
* **Estimation**: ``estimation_ratio`` = passes run / passes without reuse; ``scored_pairs_ratio`` weights each
  pass by the (query, key) pairs it scores (its cost).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from sgl_qwen1m.jsonout import dumps
from sgl_qwen1m.ops.sparse.reuse import estimation_anchors, estimation_work
from sgl_qwen1m.refine.reuse_prefill import chunked_sparse_prefill, serving_pieces

__all__ = ["Setup", "load_model", "passkey_samples", "schedules", "run_experiment", "main"]

RESERVE = 40  # tokens the eval harness keeps free for the answer (evals.harness.RESERVE; refine never imports evals)
BACKEND = "qwen1m-sparse"
_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class Setup:
    """What every worker needs to rebuild the model and the prompts."""

    model_dir: str
    vertical: int
    slash: int
    threshold: int
    seed: int
    budgets: Optional[str] = None  # a sparse_attention_config.json instead of the uniform budgets


def load_model(setup: Setup) -> Any:
    """The reference model sparse above ``setup.threshold``: every head at ``setup.vertical`` / ``setup.slash``, or
    the per-head budgets of ``setup.budgets``."""
    from sgl_qwen1m.config import SparseBudgets
    from sgl_qwen1m.model.torch_qwen2 import TinyQwen2
    from sgl_qwen1m.refine.tool import uniform_budgets

    model = TinyQwen2.from_pretrained(setup.model_dir)
    nl, nh = len(model.model.layers), model.model.layers[0].self_attn.h
    budgets = (SparseBudgets.from_json(setup.budgets, nl, nh) if setup.budgets
               else uniform_budgets(nl, nh, setup.vertical, setup.slash))
    model.set_sparse(budgets, threshold=setup.threshold)
    return model


def passkey_samples(builder: Any, multiple: float, train_len: int, samples: int, seed: int = 0) -> list[Any]:
    """The eval harness's passkey prompts (``evals.harness.make_samples``, rebuilt here: refine never imports
    evals; ``tests/test_pattern_reuse.py`` checks they are equal)."""
    rng = random.Random(f"{seed}/passkey/{multiple}")
    n = int(round(multiple * train_len)) - RESERVE
    return [builder.make("passkey", n, rng) for _ in range(samples)]


def _answer(model: Any, builder: Any, sample: Any) -> tuple[list[int], float]:
    from sgl_qwen1m.model.tasks import score_output

    ids = model.generate(sample.prompt_ids, sample.max_new_tokens)
    ids = ids[: ids.index(builder.eos)] if builder.eos in ids else ids
    return ids, score_output(sample, builder.decode(ids))


def _init_worker(setup: Setup, threads: int) -> None:
    from sgl_qwen1m.model.tasks import TaskBuilder

    torch.set_num_threads(threads)
    _WORKER.update(setup=setup, model=load_model(setup), builder=TaskBuilder())


def accuracy_task(task: tuple[float, int, int, bool, int]) -> list[tuple[list[int], float]]:
    """``(multiple, chunk, k, oracle, samples)`` -> ``(output ids, score)`` of the first ``samples`` prompts."""
    from sgl_qwen1m.model.spec import train_length

    m, c, k, oracle, count = task
    model, builder, setup = _WORKER["model"], _WORKER["builder"], _WORKER["setup"]
    prompts = passkey_samples(builder, m, train_length(model.config), count, setup.seed)
    with chunked_sparse_prefill(model, c, k, oracle=oracle):
        return [_answer(model, builder, s) for s in prompts]


def schedules(length: int, chunk_len: Optional[int], chunks: Sequence[int], every: Sequence[int],
              threshold: int) -> dict[tuple[int, int], dict[str, Any]]:
    """Per ``(chunk, k)``: the sparse pieces, their anchors and ``same_as`` (the first ``k`` with these anchors)."""
    out: dict[tuple[int, int], dict[str, Any]] = {}
    for c in chunks:
        sp = [(a, b) for a, b, s in serving_pieces(length, chunk_len, c, threshold) if s]
        groups: dict[int, int] = {}
        for a, _ in sp:
            g = a // chunk_len if chunk_len else 0
            groups[g] = groups.get(g, 0) + 1
        seen: dict[tuple[int, ...], int] = {}
        for k in every:
            anchors = estimation_anchors(sp, chunk_len, k)
            out[(c, k)] = {"pieces": sp, "anchors": anchors, "same_as": seen.setdefault(tuple(anchors), k),
                           "max_per_dca_chunk": max(groups.values(), default=0)}
    return out


def _recall_rows(model: Any, prompts: Sequence[Any], sched: dict, ns: argparse.Namespace, base: dict) -> list[dict]:
    from sgl_qwen1m.model.capture import LayerInputs, capture_layers
    from sgl_qwen1m.refine.recall import RowSampling, evaluate, prepare

    nl, nh = len(model.model.layers), model.model.layers[0].self_attn.h
    sampling = RowSampling(ns.tail_rows, ns.random_rows, ns.seed)
    seqs: dict[int, list[list[Any]]] = {c: [[] for _ in range(nl)] for c in ns.chunks}
    for s in prompts:  # one dense capture per prompt; every chunk size prepared from it, sparse pieces only

        def on_layer(inp: LayerInputs) -> None:
            for c in ns.chunks:
                sd = prepare(inp, sampling, last_q=model.sparse_last_q, prefill_chunk=c)
                keep = set(sched[(c, ns.every[0])]["pieces"])
                sd.pieces = [p for p in sd.pieces if (p.q_pos0, p.q_end) in keep]
                seqs[c][inp.layer].append(sd)

        capture_layers(model, s.prompt_ids, on_layer)
    rows = []
    for c in ns.chunks:
        for k in ns.every:
            case = {**base, "chunked_prefill_size": c, "reestimate_every": k, "case": f"chunk{c}/k{k}"}
            heads, allr, share = [], [], []
            for li in range(nl):
                got = evaluate(seqs[c][li], model.sparse[li], reestimate_every=k)
                r = got.recall.double()
                allr.append(r)
                share.append(got.keys.double() / got.causal.double()[:, None])
                heads += [{"layer": li, "head": h, "mean": float(r[:, h].mean()), "min": float(r[:, h].min())}
                          for h in range(nh)]
            rr = torch.cat(allr)
            extra = {"sequences": len(prompts), "query_rows": allr[0].shape[0],  # per layer and head
                     "attended_share": float(torch.cat(share).mean())}
            rec = {**case, "metric": "recall", "value": float(rr.mean()), **extra,
                   "head_mean_min": min(x["mean"] for x in heads), "heads": heads}
            low = {**case, "metric": "recall_min", "value": float(rr.min()), **extra}
            if k == ns.every[0]:
                base_rec, base_low = rec, low
            rec["delta_vs_k1"] = rec["value"] - base_rec["value"]
            rec["head_mean_min_delta_vs_k1"] = rec["head_mean_min"] - base_rec["head_mean_min"]
            low["delta_vs_k1"] = low["value"] - base_low["value"]
            rows += [rec, low]
    return rows


def _run_tasks(tasks: list, setup: Setup, jobs: int, log) -> dict:  # noqa: ANN001
    done: dict = {}
    t0 = time.time()
    if not tasks:
        return done
    if jobs <= 1:
        _init_worker(setup, torch.get_num_threads())
        for t in tasks:
            done[t] = accuracy_task(t)
            log(f"  passkey {t}: {sum(s for _, s in done[t])}/{len(done[t])} ({time.time() - t0:.0f}s)")
        return done
    import multiprocessing as mp

    threads = max(1, torch.get_num_threads() // jobs)
    with ProcessPoolExecutor(jobs, mp.get_context("spawn"), _init_worker, (setup, threads)) as pool:
        futs = {pool.submit(accuracy_task, t): t for t in sorted(tasks, key=lambda t: -t[0])}  # longest first
        for f in as_completed(futs):
            t = futs[f]
            done[t] = f.result()
            log(f"  passkey {t}: {sum(s for _, s in done[t])}/{len(done[t])} ({time.time() - t0:.0f}s)")
    return done


def run_experiment(ns: argparse.Namespace, log=print) -> dict[str, Any]:  # noqa: ANN001
    """All measurements of ``run`` (see the module docstring); returns the results document."""
    from sgl_qwen1m.model.spec import train_length
    from sgl_qwen1m.model.tasks import TaskBuilder

    t0 = time.time()
    setup = Setup(ns.model, ns.vertical, ns.slash, ns.threshold, ns.seed, ns.budgets)
    count = dict(zip(ns.multiples, ns.samples * len(ns.multiples) if len(ns.samples) == 1 else ns.samples))
    model = load_model(setup)
    cl, last_q, train_len = model.dca.chunk_len, model.sparse_last_q, train_length(model.config)
    builder = TaskBuilder()
    tag = Path(ns.budgets).name if ns.budgets else f"uniform-v{ns.vertical}-s{ns.slash}"
    rows: list[dict] = []
    sched_of, prompts_of, base_of = {}, {}, {}
    for m in ns.multiples:
        prompts = passkey_samples(builder, m, train_len, max(count[m], ns.recall_seqs), ns.seed)
        n = len(prompts[0].prompt_ids)
        prompts_of[m], sched_of[m] = prompts, schedules(n, cl, ns.chunks, ns.every, ns.threshold)
        base = base_of[m] = {"backend": BACKEND, "model": "tiny-dca", "task": "passkey", "length_multiple": m,
                             "prompt_tokens": n, "budgets": tag}
        rows += _recall_rows(model, prompts[: ns.recall_seqs], sched_of[m], ns, base)
        for (c, k), sc in sched_of[m].items():
            w = estimation_work(sc["pieces"], sc["anchors"], last_q)
            rows.append({**base, "chunked_prefill_size": c, "reestimate_every": k, "case": f"chunk{c}/k{k}",
                         "metric": "estimation_ratio", "value": w["passes"] / w["passes_all"],
                         "estimation_passes": w["passes"], "estimation_passes_without_reuse": w["passes_all"],
                         "scored_pairs_ratio": w["pairs"] / w["pairs_all"], "sparse_pieces": len(sc["pieces"]),
                         "max_pieces_per_dca_chunk": sc["max_per_dca_chunk"]})
        log(f"{n} tokens: recall and estimation done ({time.time() - t0:.0f}s)")
    tasks = [(m, c, k, False, count[m]) for m in ns.multiples for (c, k), sc in sched_of[m].items()
             if sc["same_as"] == k and count[m] > 0]
    tasks += [(m, c, k, True, ns.oracle_check) for m in ns.oracle_multiples or ns.multiples[:1]
              for (c, k), sc in sched_of[m].items() if sc["same_as"] == k and ns.oracle_check > 0 and count[m] > 0]
    done = _run_tasks(tasks, setup, ns.jobs, log)
    records, checks = [], []
    for m in [m for m in ns.multiples if count[m] > 0]:
        base, n = base_of[m], base_of[m]["prompt_tokens"]
        for (c, k), sc in sched_of[m].items():
            res = done[(m, c, k_run := sc["same_as"], False, count[m])]
            ref = done[(m, c, ns.every[0], False, count[m])]
            row = {**base, "chunked_prefill_size": c, "reestimate_every": k, "case": f"chunk{c}/k{k}",
                   "metric": "accuracy", "value": sum(s for _, s in res) / len(res), "samples": len(res),
                   "same_output_share_vs_k": ns.every[0],
                   "same_output_share": sum(a[0] == b[0] for a, b in zip(res, ref)) / len(res)}
            if k_run != k:
                row["same_schedule_as_k"] = k_run
            else:
                records += [{"prompt_tokens": n, "chunked_prefill_size": c, "reestimate_every": k,
                             "answers": list(p.answers), "output_ids": ids, "score": s}
                            for p, (ids, s) in zip(prompts_of[m], res)]
            rows.append(row)
            orc = done.get((m, c, k_run, True, ns.oracle_check))
            if orc is not None and k_run == k:
                checks.append({"prompt_tokens": n, "chunked_prefill_size": c, "reestimate_every": k,
                               "prompts": len(orc), "outputs_equal": sum(o[0] == f[0] for o, f in zip(orc, res)),
                               "oracle_scores": [s for _, s in orc]})
    budgets = (f"per-head budgets {ns.budgets}" if ns.budgets
               else f"every head at vertical {ns.vertical} / slash {ns.slash}")
    counts = ", ".join(f"{count[m]} at {m:g}x" for m in ns.multiples)
    note = " ".join([
        f"CPU run of the bundled tiny-dca model (trained at {train_len} tokens; DCA chunk_len {cl}),",
        f"{budgets}, threshold {ns.threshold}, last_q {last_q}. Pieces as serving",
        "cuts them (prefill chunks inside DCA chunks); prefill chunks whose prefix ends <= threshold run dense and",
        "are left out of recall and estimation counts. reestimate_every k: sparse pieces 0, k, 2k, ... of each DCA",
        "chunk estimate, the others reuse the last estimate extended (sgl_qwen1m.ops.sparse.reuse); with",
        f"chunk_len {cl} a DCA chunk holds few prefill pieces (max_pieces_per_dca_chunk), so large k only differ",
        f"from small k at small chunks. Recall: first {ns.recall_seqs} passkey prompt(s) per length, per sparse",
        f"piece its last {ns.tail_rows} + {ns.random_rows} random query rows (seed {ns.seed}), dense-model",
        "activations; recall = mean over layers/heads/rows/sequences, recall_min = min over them, head_mean_min =",
        "smallest per-head mean, attended_share = mean attended keys / causal keys. Accuracy: the first",
        f"{counts} harness passkey prompts (seed {ns.seed}), greedy, chunked sparse prefill with the gathered-key",
        "attention (equal to the fp32 oracle up to summation order; oracle_check: prompts re-run through the",
        "oracle itself); same_schedule_as_k: identical estimating pieces, so computed once; same_output_share:",
        "outputs identical to k=1's. estimation_ratio: estimation passes run / without reuse (scored_pairs_ratio:",
        f"weighted by scored query-key pairs). Wall time {time.time() - t0:.0f} s, {ns.jobs} job(s),",
        f"{torch.get_num_threads()} CPU threads.",
    ])
    return _document(ns, rows, records, checks, note)


def _document(ns: argparse.Namespace, rows: list, records: list, checks: list, note: str) -> dict[str, Any]:
    from sgl_qwen1m.provenance import collect_versions, header

    return header("python -m sgl_qwen1m.refine.reuse " + " ".join(ns.argv), gpu="cpu",
                  versions=collect_versions(with_torch_cuda=False), note=note, rows=rows, oracle_check=checks,
                  records=records)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def main(argv: Optional[list[str]] = None) -> int:
    from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR

    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="python -m sgl_qwen1m.refine.reuse", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="measure recall, passkey accuracy and estimation work per k (CPU)")
    r.add_argument("--out", required=True, help="results JSON to write")
    r.add_argument("--model", default=str(BUNDLED_MODEL_DIR), help="model dir (%(default)s)")
    r.add_argument("--multiples", type=_floats, default=[4.0, 8.0, 16.0], help="lengths / training length")
    r.add_argument("--chunks", type=_ints, default=[128, 512, 1024], help="--chunked-prefill-size values")
    r.add_argument("--every", type=_ints, default=[1, 2, 4, 8], help="reestimate_every values (first: baseline)")
    r.add_argument("--samples", type=_ints, default=[20], help="passkey prompts per length (one, or one per "
                   "multiple; the first N of the harness's prompts)")
    r.add_argument("--recall-seqs", type=int, default=2, help="prompts per length measured for recall")
    r.add_argument("--tail-rows", type=int, default=16)
    r.add_argument("--random-rows", type=int, default=128)
    r.add_argument("--oracle-check", type=int, default=0, help="prompts per setting re-run through the oracle")
    r.add_argument("--oracle-multiples", type=_floats, default=None, help="lengths of the oracle check (first)")
    r.add_argument("--vertical", type=int, default=256, help="uniform budget per head (%(default)s)")
    r.add_argument("--slash", type=int, default=512, help="uniform budget per head (%(default)s)")
    r.add_argument("--budgets", default=None, help="sparse_attention_config.json (per-head budgets) instead")
    r.add_argument("--threshold", type=int, default=2048)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--jobs", type=int, default=1, help="worker processes for the passkey runs (threads split)")
    q = sub.add_parser("plot", help="PNG from a results JSON (needs matplotlib)")
    q.add_argument("path")
    q.add_argument("--out", default=None)
    ns = p.parse_args(argv)
    if ns.cmd == "plot":
        from sgl_qwen1m.refine.reuse_plot import plot

        print(f"wrote {plot(ns.path, ns.out)}")
        return 0
    if len(ns.samples) not in (1, len(ns.multiples)):
        p.error("--samples: one value or one per --multiples entry")
    if ns.every[0] != 1:
        p.error("--every must start with 1 (the baseline without reuse)")
    ns.argv = argv
    doc = run_experiment(ns)
    out = Path(ns.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(dumps(doc) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
