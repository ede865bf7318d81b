"""The per-head budget search of sparsity refinement (design: :mod:`sgl_qwen1m.refine`).

:func:`refine_layer` takes one layer's prepared calibration data and its starting budgets and raises the vertical
or slash budget of every head whose recall statistic is below the target, one multiplicative step per round, on the
axis that buys more recall per attended key, until every head passes or its budgets reach the cap.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional, Sequence

import torch

from sgl_qwen1m.refine.recall import Measured, SeqData, evaluate, make_budget

__all__ = ["SearchConfig", "HeadResult", "refine_layer", "grow"]


@dataclass(frozen=True)
class SearchConfig:
    """``target``: recall statistic every head must reach; ``stat``: ``mean`` (over sampled queries), ``min`` or
    ``pNN``; a step multiplies a budget by ``growth`` and adds at least ``min_step`` keys; ``cap``: the largest
    budget (the calibration length; a slash budget of ``cap`` keeps every diagonal, i.e. dense attention)."""

    target: float = 0.95
    stat: str = "mean"
    growth: float = 1.5
    min_step: int = 64
    max_rounds: int = 40

    def __post_init__(self) -> None:
        if not 0.0 < self.target <= 1.0:
            raise ValueError(f"target recall must be in (0, 1], got {self.target}")
        if self.growth < 1.0 or self.min_step < 1:
            raise ValueError(f"growth must be >= 1 and min_step >= 1, got {self.growth}, {self.min_step}")


@dataclass
class HeadResult:
    layer: int
    head: int
    vertical_before: int
    slash_before: int
    vertical_after: int
    slash_after: int
    recall_before: float  # the search statistic
    recall_after: float
    recall_min_before: float
    recall_min_after: float
    recall_mean_before: float
    recall_mean_after: float
    keys_before: float  # mean causal keys attended per sampled query
    keys_after: float
    steps: list[dict] = field(default_factory=list)  # [{"axis", "vertical", "slash", "recall", "keys"}]

    @property
    def budget_added(self) -> int:
        return (self.vertical_after - self.vertical_before) + (self.slash_after - self.slash_before)

    def to_dict(self) -> dict:
        return {**asdict(self), "budget_added": self.budget_added}


def grow(x: int, cfg: SearchConfig, cap: int) -> int:
    """The next budget after ``x``: ``max(x + min_step, ceil(x * growth))``, at most ``cap`` (never below ``x``)."""
    return max(x, min(cap, max(x + cfg.min_step, math.ceil(x * cfg.growth))))


def refine_layer(
    layer: int,
    seqs: Sequence[SeqData],
    vertical: Sequence[int],
    slash: Sequence[int],
    cfg: SearchConfig,
    cap: int,
    device: Optional[torch.device] = None,
    log=print,  # noqa: ANN001
) -> list[HeadResult]:
    """Refined budgets of one layer's heads, with recall before and after (see the module docstring)."""
    dev = device or seqs[0].k.device
    v, s = [int(x) for x in vertical], [int(x) for x in slash]  # starts above cap stay (no-op)
    h = len(v)

    def run(vv: Sequence[int], ss: Sequence[int]) -> Measured:
        return evaluate(seqs, make_budget(vv, ss, dev))

    cur = run(v, s)
    first = cur
    steps: list[list[dict]] = [[] for _ in range(h)]
    for rnd in range(cfg.max_rounds):
        st, keys = cur.stat(cfg.stat), cur.mean_keys()
        need = [i for i in range(h) if st[i] < cfg.target and (v[i] < cap or s[i] < cap)]
        if not need:
            break
        cand_v = [grow(x, cfg, cap) if i in need else x for i, x in enumerate(v)]
        cand_s = [grow(x, cfg, cap) if i in need else x for i, x in enumerate(s)]
        mv, ms = run(cand_v, s), run(v, cand_s)
        st_v, st_s, k_v, k_s = mv.stat(cfg.stat), ms.stat(cfg.stat), mv.mean_keys(), ms.mean_keys()
        for i in need:
            gain_v = (st_v[i] - st[i]) / max(float(k_v[i] - keys[i]), 1.0) if cand_v[i] > v[i] else -math.inf
            gain_s = (st_s[i] - st[i]) / max(float(k_s[i] - keys[i]), 1.0) if cand_s[i] > s[i] else -math.inf
            if max(gain_v, gain_s) <= 0:  # neither step alone helps (yet): take both
                axis = "both"
                v[i], s[i] = cand_v[i], cand_s[i]
            elif gain_v >= gain_s:
                axis, v[i] = "vertical", cand_v[i]
            else:
                axis, s[i] = "slash", cand_s[i]
            steps[i].append({"round": rnd, "axis": axis, "vertical": v[i], "slash": s[i],
                             "gain_per_key": {"vertical": _finite(gain_v), "slash": _finite(gain_s)}})
        cur = run(v, s)
        st_now = cur.stat(cfg.stat)
        for i in need:
            steps[i][-1]["recall"] = float(st_now[i])
        log(f"layer {layer} round {rnd}: {len(need)} head(s) raised; recall ({cfg.stat}) "
            + " ".join(f"{float(x):.3f}" for x in st_now))
    out = []
    b_st, a_st = first.stat(cfg.stat), cur.stat(cfg.stat)
    b_min, a_min, b_mean, a_mean = first.stat("min"), cur.stat("min"), first.stat("mean"), cur.stat("mean")
    bk, ak = first.mean_keys(), cur.mean_keys()
    for i in range(h):
        out.append(HeadResult(layer, i, int(vertical[i]), int(slash[i]), v[i], s[i],
                              float(b_st[i]), float(a_st[i]), float(b_min[i]), float(a_min[i]), float(b_mean[i]),
                              float(a_mean[i]), float(bk[i]), float(ak[i]), steps[i]))
    return out


def _finite(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None
