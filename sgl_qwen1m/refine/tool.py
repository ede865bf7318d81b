"""``python -m sgl_qwen1m refine``: the whole tool (model + calibration -> budgets file + report).

:func:`refine_model` runs every calibration sequence once through the reference model (dense, DCA as served),
reduces each layer to its budget-independent data as the forward pass goes, then refines layer by layer
(:func:`sgl_qwen1m.refine.search.refine_layer`) and returns the refined :class:`SparseBudgets` and the report.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch

from sgl_qwen1m.config import VERTICAL_SLASH, HeadBudget, SparseBudgets
from sgl_qwen1m.model.capture import LayerInputs, capture_layers
from sgl_qwen1m.model.spec import read_config
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2
from sgl_qwen1m.refine.maps import layer_maps
from sgl_qwen1m.refine.recall import RowSampling, SeqData, prepare
from sgl_qwen1m.refine.search import HeadResult, SearchConfig, refine_layer
from sgl_qwen1m.sizing import ModelShape, prefill_floor_s

__all__ = ["uniform_budgets", "refine_model", "write_outputs", "PEAK_TFLOPS"]

PEAK_TFLOPS = 800.0  # the sizing floor's dense bf16 rate (H100-class); the report states it


def uniform_budgets(num_layers: int, num_heads: int, vertical: int, slash: int) -> SparseBudgets:
    head = HeadBudget(VERTICAL_SLASH, vertical, slash)
    return SparseBudgets(heads=tuple(tuple(head for _ in range(num_heads)) for _ in range(num_layers)))


def refine_model(
    model: TinyQwen2,
    sequences: Sequence[Sequence[int]],
    start: SparseBudgets,
    cfg: SearchConfig,
    sampling: RowSampling = RowSampling(),
    prefill_chunk: Optional[int] = None,
    layers: Optional[Sequence[int]] = None,
    log=print,  # noqa: ANN001
    maps: Optional[list[dict[str, Any]]] = None,
) -> tuple[SparseBudgets, dict[str, Any]]:
    """Refined budgets and the report (``heads``: one :meth:`HeadResult.to_dict` per head; ``summary``).

    ``maps`` (a list, filled in layer order): each layer's estimator score profiles of the first sequence's last
    piece (:func:`sgl_qwen1m.refine.maps.layer_maps`)."""
    n_layers, n_heads = len(model.model.layers), model.model.layers[0].self_attn.h
    if (start.num_layers, start.num_heads) != (n_layers, n_heads):
        raise ValueError(f"start budgets cover {start.num_layers} layers x {start.num_heads} heads; the model has "
                         f"{n_layers} x {n_heads}")
    if model.dca is None:
        raise ValueError("refinement needs a DCA model (sparse prefill runs only with dual_chunk_attention_config)")
    todo = list(range(n_layers)) if layers is None else sorted(set(layers))
    length = len(sequences[0])
    last_q = model.dca.sparse_attention_last_q
    per_layer: list[list[SeqData]] = [[] for _ in range(n_layers)]
    t0 = time.time()
    for n, ids in enumerate(sequences):
        if len(ids) != length:
            raise ValueError("all calibration sequences must have the same length")

        def on_layer(inp: LayerInputs) -> None:
            if inp.layer in todo:
                per_layer[inp.layer].append(prepare(inp, sampling, last_q=last_q, prefill_chunk=prefill_chunk))
                if maps is not None and n == 0:
                    last = per_layer[inp.layer][-1].pieces[-1]
                    maps.append({"layer": inp.layer, **layer_maps(last.vertical, last.slash)})

        capture_layers(model, ids, on_layer)
        log(f"calibration sequence {n + 1}/{len(sequences)} captured ({length} tokens, {time.time() - t0:.1f}s)")
    heads: list[HeadResult] = []
    rows = [list(layer) for layer in start.heads]
    for li in todo:
        v0 = [b.vertical for b in start.heads[li]]
        s0 = [b.slash for b in start.heads[li]]
        res = refine_layer(li, per_layer[li], v0, s0, cfg, cap=length, log=log)
        per_layer[li] = []  # free the layer's data
        heads += res
        for r in res:
            rows[li][r.head] = HeadBudget(VERTICAL_SLASH, r.vertical_after, r.slash_after, round(r.recall_after, 4))
    refined = SparseBudgets(heads=tuple(tuple(layer) for layer in rows))
    return refined, _report(model, start, refined, heads, cfg, sampling, length, len(sequences), prefill_chunk,
                            time.time() - t0)


def _mean_budget(b: SparseBudgets, length: int) -> float:
    vals = [min(h.vertical + h.slash, length) for layer in b.heads for h in layer]
    return sum(vals) / len(vals)


def _report(model: TinyQwen2, start: SparseBudgets, refined: SparseBudgets, heads: list[HeadResult],
            cfg: SearchConfig, sampling: RowSampling, length: int, num_seqs: int, prefill_chunk: Optional[int],
            seconds: float) -> dict[str, Any]:
    shape = ModelShape.from_config(model.config)
    kb, ka = _mean_budget(start, length), _mean_budget(refined, length)
    keys_b = sum(h.keys_before for h in heads) / len(heads)
    keys_a = sum(h.keys_after for h in heads) / len(heads)
    floor = {name: prefill_floor_s(shape, length, PEAK_TFLOPS, kpq)
             for name, kpq in (("dense", None), ("before", kb), ("after", ka))}
    summary = {
        "calibration_length": length,
        "calibration_sequences": num_seqs,
        "prefill_chunk": prefill_chunk,
        "target": cfg.target,
        "stat": cfg.stat,
        "growth": cfg.growth,
        "min_step": cfg.min_step,
        "row_sampling": {"tail": sampling.tail, "random": sampling.random, "seed": sampling.seed},
        "heads": len(heads),
        "heads_below_target_before": sum(h.recall_before < cfg.target for h in heads),
        "heads_below_target_after": sum(h.recall_after < cfg.target for h in heads),
        "heads_raised": sum(h.budget_added > 0 for h in heads),
        "recall_min_over_heads_before": min(h.recall_before for h in heads),
        "recall_min_over_heads_after": min(h.recall_after for h in heads),
        "budget_keys_per_query_before": kb,
        "budget_keys_per_query_after": ka,
        "measured_keys_per_query_before": keys_b,
        "measured_keys_per_query_after": keys_a,
        "prefill_floor_peak_tflops": PEAK_TFLOPS,
        "prefill_floor_s": floor,
        "seconds": seconds,
        "note": "recall: exp(lse_sparse - lse_full) per sampled query (serving's selection, fp32 oracles); "
                "budget keys: mean min(vertical + slash, L) over heads (sizing.prefill_floor_s input); measured "
                "keys: mean causal keys inside the selected pattern over the sampled queries (64x64 tiles "
                "included); prefill_floor_s: FLOP floor at the peak rate, not a measurement.",
    }
    return {"summary": summary, "heads": [h.to_dict() for h in heads]}


def write_outputs(refined: SparseBudgets, report: dict[str, Any], out: Union[str, Path],
                  report_path: Union[str, Path, None] = None) -> tuple[Path, Path]:
    """Write the budgets file (Qwen's format, re-read through :class:`SparseBudgets`) and the JSON report."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(refined.to_list()) + "\n")
    SparseBudgets.from_json(out, refined.num_layers, refined.num_heads)  # fails loudly if not loadable
    rp = Path(report_path) if report_path else out.with_name(out.stem + ".report.json")
    from sgl_qwen1m.jsonout import dumps

    rp.write_text(dumps(report) + "\n")
    return out, rp


def load_start(path: Optional[str], model_dir: Union[str, Path], vertical: int, slash: int) -> SparseBudgets:
    cfg = read_config(model_dir)
    nl, nh = int(cfg["num_hidden_layers"]), int(cfg["num_attention_heads"])
    if path:
        return SparseBudgets.from_json(path, nl, nh)
    return uniform_budgets(nl, nh, vertical, slash)


def device_of(name: Optional[str]) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
