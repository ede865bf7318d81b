"""Train the bundled tiny DCA model from scratch on synthetic long-context retrieval.

    python -m sgl_qwen1m train --out sgl_qwen1m/data/tiny-dca --seq-len 1024 --rope-theta 2500 \
        --steps 2000 --tasks copy,passkey --dca-aug 0.5 --seed 0 --device cuda --eval-multiples 1,8   # bundled
    python -m sgl_qwen1m train --out /tmp/smoke --steps 20 --seq-len 256 --device cpu   # smoke, < 1 min

The arguments are defined in :mod:`sgl_qwen1m.model.cli`. Data: every step draws one length ``L`` (half the time the current longest, else log-uniform from ``--min-len``;
the longest grows geometrically from ``--min-len`` to ``--seq-len`` over the first ``--ramp`` of the steps) and
``tokens_per_step // L`` samples of a random task: the five eval tasks (needles at random depths) plus a
training-only ``copy`` task whose dense signal grows induction heads early. Loss: cross-entropy on answer tokens,
each sample weighted equally (plus ``--other-weight`` on the rest).

Attention: plain RoPE with causal SDPA (at the training length that *is* DCA), except that a ``--dca-aug`` share
of steps runs through exact DCA with a chunk 1.5-16x shorter than the sequence and its YaRN scale. Relative
positions never exceed the training length either way; the augmentation teaches a tiny model the robustness to
DCA's inexact long-range distances that large pretrained models bring. Seeded: same arguments, same data stream
(GPU kernels may still differ in the last bits).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm.auto import tqdm

from sgl_qwen1m.config import DCAConfig
from sgl_qwen1m.model.tasks import TASKS, TaskBuilder
from sgl_qwen1m.model.spec import make_config, write_model_dir
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2
from sgl_qwen1m.model.vocab import KEY_NOUNS, TASK_WORDS

__all__ = ["TaskStream", "train", "DEFAULT_MIX", "Evaluate"]

# "copy" (training only): a random word/digit sequence, filler, the same sequence again; loss on the repeat.
# Its dense copy signal grows induction heads quickly; the retrieval tasks then reuse them.
DEFAULT_MIX = {
    "copy": 0.2,
    "passkey": 0.25,
    "niah_single": 0.1,
    "niah_multikey": 0.15,
    "niah_multivalue": 0.1,
    "variable_tracking": 0.2,
}

# The accuracy check after training: (model, tasks, length multiples, samples per cell, train_len, seed) -> rows.
# The ``train`` verb passes the eval harness's (sgl_qwen1m.evals.harness.reference_accuracy); model never imports it.
Evaluate = Callable[[TinyQwen2, list[str], list[float], int, int, int], list[dict]]

COPY_BOOST = 0.4  # extra weight of "copy" at step 0, fading to 0 at the end of the length ramp


def _copy_row(builder: TaskBuilder, rng: random.Random, n: int, pool: list[int]) -> tuple[list[int], list[bool]]:
    """``n`` tokens: ``seg`` + filler + ``seg``; the mask marks the repeat (bar its unpredictable first token)."""
    k = rng.randint(max(4, n // 16), n // 2)
    seg = [rng.choice(pool) for _ in range(k)]
    gap: list[int] = []
    while len(gap) < n - 2 * k:
        gap += rng.choice(builder.filler)
    gap = gap[: n - 2 * k]
    return seg + gap + seg, [False] * (n - k + 1) + [True] * (k - 1)


class TaskStream(IterableDataset):
    """Endless batches ``(ids [B, L+1] int64, answer_mask [B, L+1] bool)``; every row is exactly ``L+1`` tokens."""

    def __init__(
        self,
        seq_len: int,
        min_len: int,
        tokens_per_step: int,
        seed: int,
        mix: dict[str, float],
        full_frac: float = 0.5,
        ramp_steps: int = 0,
    ) -> None:
        self.seq_len, self.min_len, self.tokens = seq_len, min_len, tokens_per_step
        self.seed, self.mix, self.full_frac, self.ramp = seed, mix, full_frac, ramp_steps

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = random.Random(self.seed * 1000 + wid)
        builder = TaskBuilder()
        tasks, weights = list(self.mix), list(self.mix.values())
        alen = {t: builder.answer_len(t) for t in tasks if t != "copy"}
        lo = max([self.min_len, 16] + [builder.min_prompt_len(t) + alen[t] for t in alen])
        pool = sorted({i for w in KEY_NOUNS + TASK_WORDS for i in builder.ids(w)} | set(builder.ids("0123456789")))
        if lo > self.seq_len:
            raise ValueError(f"--seq-len {self.seq_len} is too short for tasks {tasks} (need >= {lo})")
        step = wid  # global step of the next batch (workers take turns)
        while True:
            # Curriculum: the longest length grows geometrically from lo to seq_len over the first ramp steps.
            top = self.seq_len if step >= self.ramp else int(lo * (self.seq_len / lo) ** (step / self.ramp))
            # ... and copy gets extra weight early (it forms the induction heads the other tasks need).
            boost = COPY_BOOST * max(0.0, 1.0 - step / self.ramp) if "copy" in self.mix and self.ramp else 0.0
            step += nw
            if rng.random() < self.full_frac:
                n = top
            else:
                n = int(math.exp(rng.uniform(math.log(lo), math.log(max(top, lo + 1)))))
                n = max(lo, n // 64 * 64)
            rows, masks = [], []
            for _ in range(max(1, self.tokens // n)):
                task = rng.choices(tasks, [w + boost if t == "copy" else w for t, w in zip(tasks, weights)])[0]
                if task == "copy":
                    row, mask = _copy_row(builder, rng, n + 1, pool)
                    rows.append(row)
                    masks.append(mask)
                    continue
                s = builder.make(task, n + 1 - alen[task], rng)
                rows.append(list(s.prompt_ids) + list(s.target_ids))
                masks.append([False] * len(s.prompt_ids) + [True] * len(s.target_ids))
            yield torch.tensor(rows), torch.tensor(masks)


def _dca_augmentation(rng: random.Random, n: int, prob: float) -> Optional[DCAConfig]:
    """With probability ``prob``, a DCA config whose chunk is ``n / r`` (``r`` log-uniform in [1.5, 16]).

    Training some steps through DCA at a chunk *shorter* than the sequence shows the model, inside the training
    length, the position geometry it meets at inference past it (aliased, clamped distances beyond ``local``,
    YaRN-scaled logits, many more keys per query than the chunk). Relative positions never exceed ``n``.
    """
    if prob <= 0 or rng.random() >= prob:
        return None
    chunk = int(n / math.exp(rng.uniform(math.log(1.5), math.log(16.0))))
    if chunk < 16:
        return None
    return DCAConfig(chunk_size=chunk, local_size=max(1, chunk // 8), original_max_position_embeddings=chunk)


def _lr(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    p = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))


def train(args: argparse.Namespace, evaluate: Optional[Evaluate] = None) -> TinyQwen2:
    """Train per ``args`` (the ``train`` verb's namespace, defaults filled in), write the model directory, return the
    model (eval mode). With ``evaluate`` and ``args.eval_samples > 0`` the written model is checked with it and the
    rows land in ``training_args.json`` (``"final"``)."""
    on_cpu = torch.device(args.device).type == "cpu"
    if on_cpu:
        torch.set_flush_denormal(True)  # subnormal floats make CPU training several times slower
    try:
        return _train(args, evaluate)
    finally:
        if on_cpu:  # a process-wide switch: give the caller (a test run, a notebook) its default back
            torch.set_flush_denormal(False)


def _train(args: argparse.Namespace, evaluate: Optional[Evaluate]) -> TinyQwen2:
    random.seed(args.seed)
    torch.manual_seed(args.seed)
    dev = torch.device(args.device)
    config = make_config(
        seq_len=args.seq_len,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.kv_heads,
        intermediate_size=args.intermediate,
        rope_theta=args.rope_theta,
    )
    model = TinyQwen2(config).to(dev)
    if args.init:  # continue from a model directory of the same shape (weights only; optimizer starts fresh)
        model.load_state_dict(TinyQwen2.from_pretrained(args.init).state_dict())
    n_params = model.num_params()
    print(f"model: {n_params:,} parameters, {2 * n_params / 2**20:.2f} MiB in bf16; device {dev}")
    mix = {t: w for t, w in DEFAULT_MIX.items() if t in args.tasks.split(",")}
    stream = TaskStream(
        args.seq_len, args.min_len, args.tokens_per_step, args.seed, mix, ramp_steps=int(args.ramp * args.steps)
    )
    loader = DataLoader(
        stream,
        batch_size=None,
        num_workers=args.workers,
        prefetch_factor=4 if args.workers else None,
        persistent_workers=bool(args.workers),
    )
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n)]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": other, "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=args.lr, betas=(0.9, 0.95), fused=dev.type == "cuda")
    use_amp = dev.type == "cuda"
    model.train()
    log: list[dict[str, float]] = []
    aug_rng = random.Random(args.seed + 1)
    t0 = time.time()
    bar = tqdm(zip(range(args.steps), loader), total=args.steps, desc="train", unit="step")
    acc_sum = tok_acc_sum = loss_sum = 0.0
    for step, (ids, mask) in bar:
        for g in opt.param_groups:
            g["lr"] = _lr(step, args.steps, args.lr, args.warmup)
        ids, mask = ids.to(dev, non_blocking=True), mask.to(dev, non_blocking=True)
        aug = _dca_augmentation(aug_rng, ids.shape[1] - 1, args.dca_aug)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_amp):
            logits = model(ids[:, :-1], dca=aug)
        ce = F.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten(), reduction="none")
        ce = ce.view(ids.shape[0], -1)
        m = mask[:, 1:].float()
        loss = ((ce * m).sum(1) / m.sum(1).clamp(min=1)).mean()  # every sample counts the same
        if args.other_weight > 0:
            loss = loss + args.other_weight * (ce * (1 - m)).sum() / (1 - m).sum().clamp(min=1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            hit = ((logits.argmax(-1) == ids[:, 1:]) | ~mask[:, 1:]).all(-1).float().mean()
            tok = ((logits.argmax(-1) == ids[:, 1:]).float() * m).sum() / m.sum()
        loss_sum, acc_sum, tok_acc_sum = loss_sum + loss.item(), acc_sum + hit.item(), tok_acc_sum + tok.item()
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            k = (step % args.log_every) + 1
            entry = {
                "step": step + 1,
                "loss": loss_sum / k,
                "answer_acc": acc_sum / k,
                "token_acc": tok_acc_sum / k,
                "seconds": time.time() - t0,
            }
            log.append(entry)
            bar.write(
                f"step {entry['step']:>6}  loss {entry['loss']:.4f}  answer acc {entry['answer_acc']:.3f}  "
                f"token acc {entry['token_acc']:.3f}  {entry['seconds']:.0f}s"
            )
            acc_sum = tok_acc_sum = loss_sum = 0.0
    model.eval()
    out = write_model_dir(args.out, config)
    model.save_weights(out)
    reloaded = TinyQwen2.from_pretrained(out, device=dev)  # evaluate what is shipped (bf16 weights)
    final = _final_eval(reloaded, args, evaluate)
    meta = {"args": vars(args), "params": n_params, "train_seconds": time.time() - t0, "log": log, "final": final}
    (Path(out) / "training_args.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(f"wrote {out} in {time.time() - t0:.0f}s")
    return reloaded


def _final_eval(model: TinyQwen2, args: argparse.Namespace, evaluate: Optional[Evaluate]) -> list[dict]:
    if evaluate is None or args.eval_samples <= 0:
        return []
    tasks = [t for t in args.tasks.split(",") if t in TASKS]
    multiples = [float(m) for m in args.eval_multiples.split(",")]
    return evaluate(model, tasks, multiples, args.eval_samples, args.seq_len, args.seed + 12345)
