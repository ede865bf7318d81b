"""A small Qwen2 language model pretrained from scratch on real text, with plain RoPE (no DCA, no long-context trick).

    python -m sgl_qwen1m train-lm --roots /tmp/site,/usr/lib/python3/dist-packages --data runs/lm/data \\
        --out runs/lm/model --device cuda                       # defaults below: ~107M parameters, 105M tokens
    python -m sgl_qwen1m train-lm --roots sgl_qwen1m --data /tmp/d --out /tmp/m --preset smoke --device cpu

Data: :mod:`sgl_qwen1m.model.text_data` (built into ``--data`` unless its manifest exists). Model: Qwen2 with
head_dim 128, GQA (``--heads`` : ``--kv-heads``), tied embeddings, trained at ``--seq-len`` tokens on random windows
of the training stream through :meth:`TinyQwen2.forward` with ``dca=None`` (causal SDPA, plain RoPE). The written
``config.json`` carries ``dual_chunk_attention_config`` (``chunk_size`` = ``original_max_position_embeddings`` =
``--seq-len``, ``local_size`` = ``seq_len / 8``) so SGLang serves it with ``qwen1m`` past its length; the
``export-rope-variant`` copy is the plain-RoPE baseline. Seeded (data order, init); bf16 autocast on CUDA.

Size arithmetic of the default (``gpu``) preset, for one H200 (989 TFLOP/s dense bf16 peak):

* parameters: per layer q/k/v/o ``1024 x (1024 + 2 x 256) + 1024 x 1024`` = 2.62M and MLP ``3 x 1024 x 2816`` = 8.65M,
  x 8 layers = 90.2M; tied embedding ``16384 x 1024`` = 16.8M; ~107M in all;
* training FLOPs per token: ``6 x (90.2M + 16.8M)`` (layers + LM head) = 642M, plus attention
  ``3 x 4 x 128 x 8 heads x 8 layers x 1024`` (mean causal keys at 2048) = 101M: ~0.74 GFLOP/token;
* 800 steps x 64 x 2,048 = 105M tokens = 7.8e16 FLOP: 3.8 min at 35% of peak (346 TFLOP/s), 5.3 min at 25%
  (estimates, not measurements: the log prints tokens/s; plain eager PyTorch, no ``torch.compile``). That is about
  one token per parameter, far from compute-optimal, on purpose: minutes, not hours. The data (Python sources and
  docs of the installed packages) is expected to hold ~50-150M training tokens, so about one epoch.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F

from sgl_qwen1m.model.spec import TOKENIZER_FILES, make_config
from sgl_qwen1m.model.text_data import MANIFEST, build_dataset, read_tokens
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2
from sgl_qwen1m.model.train import _lr

__all__ = ["PRESETS", "lm_config", "train_lm", "heldout_loss", "DESCRIPTION"]

PRESETS: dict[str, dict[str, Any]] = {
    "gpu": {"layers": 8, "heads": 8, "kv_heads": 2, "intermediate": 2816, "seq_len": 2048, "vocab": 16384,
            "batch": 64, "micro_batch": 16, "steps": 800, "lr": 1e-3},
    "smoke": {"layers": 1, "heads": 2, "kv_heads": 1, "intermediate": 256, "seq_len": 512, "vocab": 512,
              "batch": 4, "micro_batch": 4, "steps": 30, "lr": 3e-3},
}
DESCRIPTION = "Pretrain a small Qwen2 LM (plain RoPE) on Python package sources/docs; writes a servable model dir."


def lm_config(vocab: int, seq_len: int, layers: int, heads: int, kv_heads: int, intermediate: int,
              rope_theta: float = 10000.0) -> dict[str, Any]:
    """``config.json`` of the text LM (Qwen2ForCausalLM, head_dim 128, DCA block for serving)."""
    if seq_len % 64 or (seq_len - seq_len // 8) % 64:
        raise ValueError(f"--seq-len must be a multiple of 512 (DCA chunk_len 7/8 of it a multiple of 64), got {seq_len}")
    cfg = make_config(seq_len=seq_len, num_layers=layers, num_heads=heads, num_kv_heads=kv_heads,
                      intermediate_size=intermediate, rope_theta=rope_theta, max_position_embeddings=1 << 20)
    cfg["vocab_size"] = int(vocab)
    cfg["train_seq_len"] = seq_len
    return cfg


def _windows(data, n: int, seq_len: int, gen: torch.Generator) -> torch.Tensor:  # noqa: ANN001
    import numpy as np

    starts = torch.randint(0, len(data) - seq_len - 1, (n,), generator=gen).tolist()
    return torch.from_numpy(np.stack([np.asarray(data[s : s + seq_len + 1], dtype=np.int64) for s in starts]))


@torch.no_grad()
def heldout_loss(model: TinyQwen2, data, seq_len: int, windows: int, dev: torch.device, seed: int) -> float:  # noqa: ANN001
    """Mean next-token NLL (nats) over ``windows`` random held-out windows of ``seq_len`` (in-length)."""
    gen = torch.Generator().manual_seed(seed)
    tot, n = 0.0, 0
    for _ in range(windows):
        ids = _windows(data, 1, seq_len, gen).to(dev)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(ids[:, :-1])
        tot += float(F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="sum"))
        n += ids.shape[1] - 1
    return tot / n


def train_lm(args: argparse.Namespace, probe: Optional[Any] = None) -> Path:
    """Build data if needed, train, write the model dir + ``training_log.json`` (+ ``loss_curve.png``); with
    ``args.data_only`` stop after the data (returns the data directory).

    ``probe(model) -> {name: value}`` runs every ``args.probe_every`` steps and after the last (its time is not
    training time); the results go to ``training_log.json``'s ``retrieval_probes``."""
    data_dir, out = Path(args.data), Path(args.out)
    if not (data_dir / MANIFEST).is_file():
        if not args.roots:
            raise ValueError(f"{data_dir} holds no {MANIFEST}: pass --roots to build the data set")
        build_dataset(args.roots.split(","), data_dir, vocab_size=args.vocab, heldout_pct=args.heldout_pct)
    manifest = json.loads((data_dir / MANIFEST).read_text())
    print(f"data {data_dir}: {json.dumps(manifest['counts'])}")
    if getattr(args, "data_only", False):
        return data_dir
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    cfg = lm_config(manifest["vocab_size"], args.seq_len, args.layers, args.heads, args.kv_heads, args.intermediate)
    model = TinyQwen2(cfg, use_dca=False).to(dev)
    train, held = read_tokens(data_dir / "train.bin"), read_tokens(data_dir / "heldout.bin")
    if args.batch % args.micro_batch:
        raise ValueError(f"--batch {args.batch} must be a multiple of --micro-batch {args.micro_batch}")
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), fused=dev.type == "cuda")
    gen = torch.Generator().manual_seed(args.seed)
    n_params, tokens_per_step = model.num_params(), args.batch * args.seq_len
    print(f"text LM: {n_params:,} parameters; {manifest['counts']['train_tokens']:,} training tokens; "
          f"{args.steps} steps x {tokens_per_step:,} tokens; device {dev}")
    log: list[dict[str, float]] = []
    probes: list[dict[str, Any]] = []  # in-length retrieval during training (--probe-every), outside the timing
    probe_every = int(getattr(args, "probe_every", 0) or 0)
    if probe_every > 0 and probe is None:
        raise ValueError("--probe-every needs a probe (the train-lm verb passes evals.longtext.retrieval_probe)")
    probe_s = 0.0
    warmup = max(1, args.steps // 20)
    model.train()
    t0 = time.time()
    for step in range(args.steps):
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr, warmup)
        ids = _windows(train, args.batch, args.seq_len, gen).to(dev, non_blocking=True)
        loss_sum = 0.0
        for mb in ids.split(args.micro_batch):
            with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                logits = model(mb[:, :-1])
            loss = F.cross_entropy(logits.float().flatten(0, 1), mb[:, 1:].flatten()) * (mb.shape[0] / args.batch)
            loss.backward()
            loss_sum += loss.detach().item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if probe_every > 0 and ((step + 1) % probe_every == 0 or step + 1 == args.steps):
            tp = time.time()
            probes.append({"step": step + 1, "tokens": (step + 1) * tokens_per_step, **probe(model)})
            probe_s += time.time() - tp
            print(f"step {step + 1:>6}  retrieval at {args.seq_len}: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in probes[-1].items() if k not in ("step", "tokens")),
                  flush=True)
        if (step + 1) % args.log_every == 0 or step == 0 or step + 1 == args.steps:
            el = time.time() - t0 - probe_s
            log.append({"step": step + 1, "loss": loss_sum, "lr": opt.param_groups[0]["lr"], "seconds": el,
                        "tokens_per_s": (step + 1) * tokens_per_step / max(el, 1e-9)})
            print(f"step {step + 1:>6}  loss {loss_sum:.4f}  {el:.0f}s  {log[-1]['tokens_per_s']:,.0f} tok/s", flush=True)
    train_s = time.time() - t0 - probe_s
    model.eval()
    nll = heldout_loss(model, held, args.seq_len, args.eval_windows, dev, args.seed + 1)
    _write_model_dir(model, cfg, data_dir, out)
    meta = {"args": vars(args), "params": n_params, "train_seconds": train_s, "tokens": args.steps * tokens_per_step,
            "data_counts": manifest["counts"], "heldout_nll": nll, "heldout_perplexity": math.exp(nll),
            "heldout_windows": args.eval_windows, "log": log}
    if probes:
        meta["retrieval_probes"] = probes
        meta["probe_seconds"] = probe_s
    (out / "training_log.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "data_manifest_counts.json").write_text(json.dumps(manifest["counts"], indent=1) + "\n")
    _plot(log, out / "loss_curve.png")
    print(f"held-out in-length perplexity {math.exp(nll):.3f} ({args.eval_windows} windows); wrote {out} "
          f"in {time.time() - t0:.0f}s")
    return out


def _write_model_dir(model: TinyQwen2, cfg: dict[str, Any], data_dir: Path, out: Path) -> None:
    import shutil

    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    gen = {"eos_token_id": cfg["eos_token_id"], "pad_token_id": cfg["pad_token_id"], "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        shutil.copyfile(data_dir / name, out / name)
    model.save_weights(out)


def _plot(log: list[dict[str, float]], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sgl_qwen1m.figures import save_png
    except ImportError:  # the log holds the curve anyway
        return
    fig, ax = plt.subplots(figsize=(5, 3))
    ax.plot([e["step"] for e in log], [e["loss"] for e in log])
    ax.set(xlabel="step", ylabel="training loss (nats/token)", yscale="log")
    fig.tight_layout()
    save_png(fig, path, dpi=80)
