"""``python -m sgl_qwen1m eval longtext``: perplexity by position and code retrieval of a real-text LM at 1x-32x its
training length, through the torch reference, an ``sglang.Engine`` or a running server.

    # torch reference (CPU or CUDA), DCA from the config (or --rope for plain RoPE)
    python -m sgl_qwen1m eval longtext --model runs/lm/model --data runs/lm/data --runner torch --device cuda \\
        --multiples 1,2,4,8,16,32 --samples 20 --out benchmarks/results/text-lm/ref-dca.json
    # SGLang Engine on the GPU host (backend labels of issue 17: qwen1m-dense, qwen1m-sparse, qwen1m-sparse-refined,
    # flashinfer-rope on the export-rope-variant copy)
    python -m sgl_qwen1m eval longtext --model runs/lm/model --data runs/lm/data --runner engine \\
        --attention-backend qwen1m --backend-name qwen1m-dense --multiples 1,2,4,8,16,32 --out ...

Rows: ``perplexity`` per position bucket (one training length wide) and overall, per multiple, on held-out
documents concatenated to the length (``--ppl-seqs`` sequences, seeded), and the same sequences scored one training
length at a time (``case`` "in-length windows", the content-matched in-length baseline); ``accuracy`` of
``code_retrieval`` and ``code_retrieval_restate`` (``--retrieval-styles``; per-prompt records beside ``--out``); all
labelled with ``model`` (``--model-name``), ``backend``, ``task``, ``length_multiple``.
"""

from __future__ import annotations

import argparse
import math
import shlex
from pathlib import Path
from typing import Any, Optional

__all__ = ["register", "run_longtext", "retrieval_probe"]


def register(sub: Any) -> None:
    """Add ``longtext`` under ``eval``'s subparsers."""
    from sgl_qwen1m.args import key_value, positive_floats, positive_int

    p = sub.add_parser("longtext", help="perplexity by position + code retrieval of a real-text LM (1x-32x)")
    p.add_argument("--model", required=True, help="model directory (train-lm output)")
    p.add_argument("--data", required=True, help="train-lm data directory (heldout.bin, heldout_docs.json)")
    p.add_argument("--model-name", default=None, help="row label (default: the model directory's name)")
    p.add_argument("--runner", choices=("torch", "engine", "http"), default="torch")
    p.add_argument("--backend-name", default=None)
    p.add_argument("--rope", action="store_true", help="torch runner: plain RoPE even if the config has DCA")
    p.add_argument("--sparse", action="store_true", help="torch runner: sparse prefill for retrieval "
                   "(sparse_attention_config.json); the torch perplexity stays dense (one training-style forward)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--attention-backend", default="qwen1m")
    p.add_argument("--engine-arg", type=key_value, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--url", default="http://127.0.0.1:30000")
    p.add_argument("--multiples", type=positive_floats, default=[1.0, 2.0, 4.0])
    p.add_argument("--samples", type=positive_int, default=20, help="code-retrieval prompts per multiple and style")
    p.add_argument("--retrieval-styles", type=_styles, default=["assert", "restate"],
                   help="code-retrieval query styles, comma list of assert,restate (evals/code_retrieval.py)")
    p.add_argument("--ppl-seqs", type=positive_int, default=4, help="perplexity sequences per multiple")
    p.add_argument("--skip", choices=("perplexity", "retrieval"), default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="results JSON")
    p.set_defaults(handler=_run)


def _styles(text: str) -> list[str]:
    from sgl_qwen1m.evals.code_retrieval import STYLES

    out = [x for x in text.split(",") if x]
    bad = [x for x in out if x not in STYLES]
    if bad or not out:
        raise argparse.ArgumentTypeError(f"retrieval styles {text!r}: choose from {', '.join(STYLES)}")
    return out


def run_longtext(args: argparse.Namespace, records: Optional[list] = None) -> list[dict[str, Any]]:
    """Rows for every multiple (see the module docstring); per-prompt retrieval records are appended to
    ``records`` if given."""
    from tokenizers import Tokenizer

    from sgl_qwen1m.evals.code_retrieval import code_samples, evaluate_code
    from sgl_qwen1m.evals.harness import aggregate
    from sgl_qwen1m.evals.perplexity import concat_documents, position_edges, position_rows
    from sgl_qwen1m.model.spec import read_config, train_length
    from sgl_qwen1m.model.text_data import heldout_documents

    cfg = read_config(args.model)
    train_len = train_length(cfg)
    eos = int(cfg.get("eos_token_id") or 0)
    tok = Tokenizer.from_file(str(Path(args.model) / "tokenizer.json"))
    docs = heldout_documents(args.data)
    label = {"model": args.model_name or Path(args.model).name}
    runner, scorer = _backends(args, int(max(args.multiples) * train_len) + 64)
    rows: list[dict[str, Any]] = []
    try:
        if args.skip != "perplexity":
            for m in args.multiples:
                n = int(round(m * train_len))
                seqs = [concat_documents(docs, n, seed=args.seed * 1000 + i, eos_id=eos) for i in range(args.ppl_seqs)]
                per_seq = [scorer.token_nll(ids) for ids in seqs]
                import torch

                nll = torch.stack([x.double() for x in per_seq]).mean(0)
                common = {**label, "backend": runner.name, "task": "heldout_text", "length_multiple": m,
                          "prompt_tokens": n}
                edges = position_edges(n, train_len)
                windows = len(edges) > 2  # one window per training length; at 1x the window is the whole sequence
                if windows:
                    rows += position_rows(nll, edges, **common, sequences=args.ppl_seqs)
                overall = float(nll.mean())
                rows.append({"metric": "perplexity", **common, "case": "whole sequence", "position_start": 0,
                             "position_end": n,
                             "tokens": int(nll.numel()), "sequences": args.ppl_seqs, "nll": overall,
                             "value": math.exp(overall)})
                print(f"{runner.name} {m:g}x: perplexity {math.exp(overall):.3f}")
                if windows:
                    rows.append(_in_length_row(scorer, seqs, per_seq, edges, common))
        if args.skip != "retrieval":
            work = code_samples(tok, docs, args.multiples, args.samples, train_len, seed=args.seed, eos_id=eos,
                                styles=args.retrieval_styles)
            recs = evaluate_code(runner, work, tok, eos_id=eos)
            if records is not None:
                records += recs
            for r in aggregate(recs):
                rows.append({**label, **r})
                print(f"{runner.name} {r['length_multiple']:g}x: {r['task']} {r['value']:.3f}")
    finally:
        runner.close()
    return rows


def retrieval_probe(data_dir: str, seq_len: int, samples: int, seed: int = 0,
                    styles: tuple[str, ...] = ("assert", "restate")) -> Any:
    """A ``probe(model) -> {task: accuracy}`` for ``train-lm --probe-every``: code retrieval at the training length
    (``samples`` prompts per style from ``data_dir``'s held-out documents, fixed for the whole run) through the
    torch reference on the model being trained (eval mode and no grad while it runs, then back)."""
    import torch
    from tokenizers import Tokenizer

    from sgl_qwen1m.evals.code_retrieval import code_samples, evaluate_code
    from sgl_qwen1m.evals.harness import aggregate
    from sgl_qwen1m.evals.runners import TorchRunner
    from sgl_qwen1m.model.text_data import heldout_documents

    tok = Tokenizer.from_file(str(Path(data_dir) / "tokenizer.json"))
    work = code_samples(tok, heldout_documents(data_dir), [1.0], samples, seq_len, seed=seed, styles=styles)

    def probe(model: Any) -> dict[str, float]:
        eos = int(model.config.get("eos_token_id") or 0)
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                recs = evaluate_code(TorchRunner(model=model, progress=False), work, tok, eos_id=eos)
        finally:
            model.train(was)
        return {r["task"]: r["value"] for r in aggregate(recs)}

    return probe


def _in_length_row(scorer: Any, seqs: list[list[int]], per_seq: list, edges: list[int],
                   common: dict[str, Any]) -> dict[str, Any]:
    """The sequences ``seqs`` (whose long-context NLLs are ``per_seq``) scored one training-length window at a time
    (each window alone: in-length), against the long-context NLL of the same predicted positions (every window's
    first token is left out of both: alone it has no context). ``value``: in-length perplexity;
    ``long_context_value`` and ``ratio`` = long / in-length."""
    import torch

    alone, along = [], []
    for ids, long_nll in zip(seqs, per_seq):
        for a, b in zip(edges[:-1], edges[1:]):
            if b - a < 2:
                continue
            alone.append(scorer.token_nll(ids[a:b]).double())  # positions a+1 .. b-1
            along.append(long_nll[a:b - 1].double())  # long_nll[t] scores position t + 1
    short, long_ = float(torch.cat(alone).mean()), float(torch.cat(along).mean())
    return {"metric": "perplexity", **common, "case": "in-length windows", "position_start": 0,
            "position_end": common["prompt_tokens"], "tokens": int(sum(x.numel() for x in alone)),
            "sequences": len(seqs), "nll": short, "value": math.exp(short), "long_context_value": math.exp(long_),
            "ratio": math.exp(long_ - short)}


def _backends(args: argparse.Namespace, longest: int) -> tuple[Any, Any]:
    from sgl_qwen1m.evals.perplexity import HttpScorer, TorchScorer, engine_scorer
    from sgl_qwen1m.evals.runners import EngineRunner, HttpRunner, TorchRunner

    if args.runner == "torch":
        from sgl_qwen1m.model.torch_qwen2 import TinyQwen2

        model = TinyQwen2.from_pretrained(args.model, device=args.device, use_dca=False if args.rope else None,
                                          use_sparse=args.sparse)
        runner = TorchRunner(model=model, name=args.backend_name)
        return runner, TorchScorer(model, name=runner.name)
    if args.runner == "engine":
        kw = {"context_length": longest + 256, **dict(args.engine_arg)}
        runner = EngineRunner(args.model, args.attention_backend, name=args.backend_name, **kw)
        return runner, engine_scorer(runner._start(), runner.name)
    runner = HttpRunner(args.url, name=args.backend_name or "http")
    runner.check_reachable()
    return runner, HttpScorer(args.url, name=runner.name)


def _run(args: argparse.Namespace, argv: list[str]) -> int:
    from sgl_qwen1m.evals.harness import write_results

    records: list = []
    rows = run_longtext(args, records)
    if args.out:
        cmd = "python -m sgl_qwen1m eval " + shlex.join(argv)
        print(f"wrote {write_results(args.out, rows, cmd, records or None)}")
    return 0
