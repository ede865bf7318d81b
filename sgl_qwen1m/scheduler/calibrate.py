"""An initial H100 profile from committed benchmark rows (no GPU needed): each row becomes a :class:`Sample` whose
work the cost model computes, and :func:`sgl_qwen1m.scheduler.profile.fit` fits all six coefficients at once.

Rows used (paths relative to ``benchmarks/results``; every one names the file and row in the profile's provenance):

* ``sparse-ops-h100/*.json`` ``attn_ms`` of ``flashinfer`` (dense attention of one chunk at the end of the context,
  mean per layer) -> ``dense_flops``;
* the same files' ``qwen1m-sparse`` ``attn_ms`` with that row's measured ``computed_fraction`` (tiles the kernel
  really computed) -> ``sparse_blocks``; ``estimate_ms`` (estimation passes + selection per layer, one piece)
  -> ``estimate_key_layers``;
* ``decode-ops-h100/decode_ops_h100.json`` ``decode_attn_ms`` of ``qwen1m-dense`` (28 layers, batch 1) ->
  ``kv_bytes``;
* end-to-end ``ttft_s`` of ``qwen1m-dense`` (``e2e-dense-7b-h100``, chunk 8192) and ``qwen1m-sparse-local``
  (``sparse-e2e-h100/sparse_e2e_local_h100.json``, chunk 16384; ``sparse-ab-h100`` run 1, chunk 8192): whole
  prefills, work summed over their fixed chunks -> with everything above, ``tokens``;
* stock ``flashinfer`` ``ttft_s`` of the same prompt at chunk 8192 (``e2e-dense-7b-h100``) and 16384
  (``sparse-e2e-h100``): same tokens and attention work, only the step count differs -> ``steps``. (The qwen1m e2e
  rows alone cannot separate it: their chunk-8192 rows are faster than the chunk-16384 ones, other revisions.)

Caveats the provenance repeats: the op rows are kernel-only on synthetic patterns ("vertical = random"), the e2e rows
are other dates and kernel revisions, and no row has decode rows inside a prefill step (mixed batches never ran with
``qwen1m``), so the fitted ``steps`` is an eager prefill step's overhead and the decode coefficient is a CUDA-graph
attention time. ``bench profile`` on the GPU replaces all of it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterable, Union

from sgl_qwen1m.config import DCAConfig, SparseBudgets
from sgl_qwen1m.sizing import ModelShape

from .cost import CostModel, StepWork
from .profile import FitResult, Profile, Sample, fit

__all__ = ["OPS_FILES", "DECODE_FILE", "E2E_ROWS", "FLASHINFER_TTFT_FILES", "h100_samples", "derive_profile", "model_7b_1m"]

OPS_FILES = ("sparse-ops-h100/sparse_ops_h100.json", "sparse-ops-h100/sparse_select_stages_h100.json",
             "sparse-ops-h100/sparse_ops_dca_8192_h100.json")
DECODE_FILE = "decode-ops-h100/decode_ops_h100.json"
FLASHINFER_TTFT_FILES = ("e2e-dense-7b-h100/e2e_7b_h100.json", "sparse-e2e-h100/sparse_e2e_h100.json",
                         "sparse-e2e-h100/sparse_e2e_local_h100.json")
# (file, backend, run or None): whole prefills at a fixed chunk (the row's chunked_prefill_size)
E2E_ROWS = (("e2e-dense-7b-h100/e2e_7b_h100.json", "qwen1m-dense", None),
            ("sparse-e2e-h100/sparse_e2e_local_h100.json", "qwen1m-sparse-local", None),
            ("sparse-ab-h100/sparse_e2e_ab_8192_h100.json", "qwen1m-sparse-local", 1))


def model_7b_1m(models_dir: Union[str, Path], sparse: bool = True) -> CostModel:
    """Cost model of the 7B-1M shape (``benchmarks/models/qwen2.5-7b-1m-shape``) with its real budgets."""
    d = Path(models_dir) / "qwen2.5-7b-1m-shape"
    hf = json.loads((d / "config.json").read_text())
    dca = DCAConfig.from_hf_config(hf)
    budgets = SparseBudgets.from_json(d / "sparse_attention_config.json") if sparse else None
    return CostModel.from_sparse_budgets(ModelShape.from_config(hf), budgets,
                                         dca_chunk_len=dca.chunk_len if dca else None)


def _rows(path: Path) -> list[dict[str, Any]]:
    return list(json.loads(path.read_text())["rows"])


def _pairs(prompt: int, chunk: int) -> float:
    """Causal query-key pairs of the last ``chunk`` queries of a ``prompt``-token context."""
    prefix = prompt - chunk
    return chunk * prefix + chunk * (chunk + 1) / 2.0


def _op_samples(results: Path, name: str, heads: int, head_dim: int) -> Iterable[Sample]:
    rows = _rows(results / name)
    frac = {(r["prompt_tokens"], r.get("run")): r["value"] for r in rows
            if r["metric"] == "computed_fraction" and r["backend"] == "qwen1m-sparse"}
    for r in rows:
        n, c, run = r["prompt_tokens"], r["chunk_queries"], r.get("run")
        src = f"{name}: {r['backend']} {r['metric']} @ {n} (chunk {c}, run {run})"
        sec = r["value"] / 1e3
        if r["metric"] == "attn_ms" and r["backend"] == "flashinfer":
            yield Sample(StepWork(dense_flops=4.0 * head_dim * heads * _pairs(n, c)), sec, src)
        elif r["metric"] == "attn_ms" and r["backend"] == "qwen1m-sparse" and (n, run) in frac:
            blocks = frac[(n, run)] * heads * _pairs(n, c) / 4096.0
            yield Sample(StepWork(sparse_blocks=blocks), sec, src)
        elif r["metric"] == "estimate_ms" and r["backend"] == "qwen1m-sparse":
            yield Sample(StepWork(estimate_key_layers=float(n)), sec, src)


def h100_samples(results_dir: Union[str, Path], models_dir: Union[str, Path]) -> list[Sample]:
    """Every committed H100 row the profile is fitted from (see the module docstring)."""
    results = Path(results_dir)
    sparse, dense = model_7b_1m(models_dir, True), model_7b_1m(models_dir, False)
    shape = sparse.shape
    out: list[Sample] = []
    for name in OPS_FILES:
        out += _op_samples(results, name, shape.heads, shape.head_dim)
    for r in _rows(results / DECODE_FILE):
        if r["metric"] == "decode_attn_ms" and r["backend"] == "qwen1m-dense":
            out.append(Sample(dense.decode_work(r["prompt_tokens"]), r["value"] / 1e3,
                              f"{DECODE_FILE}: qwen1m-dense decode_attn_ms @ {r['prompt_tokens']}"))
    for name, backend, run in E2E_ROWS:
        model = dense if backend == "qwen1m-dense" else sparse
        for r in _rows(results / name):
            if r["metric"] != "ttft_s" or r["backend"] != backend or (run is not None and r.get("run") != run):
                continue
            n, c = r["prompt_tokens"], r["chunked_prefill_size"]
            work, done = StepWork(), 0
            while done < n:
                step = min(c, n - done)
                work = work + model.prefill_work(done, step) + StepWork(steps=1.0)
                done += step
            out.append(Sample(work, r["value"], f"{name}: {backend} ttft_s @ {n} (chunk {c}, run {r.get('run')})"))
    out += _step_difference_samples(results)
    return out


def _step_difference_samples(results: Path) -> list[Sample]:
    """Per-step overhead from stock flashinfer TTFTs of the same prompt at chunk 8192 and 16384: the linear and
    attention work of a causal prefill does not depend on the chunking, so the TTFT difference is the extra steps'
    fixed cost (assumed backend-independent: scheduler, launches, sampling)."""
    by_chunk: dict[int, dict[int, list[tuple[float, str]]]] = {}
    for name in FLASHINFER_TTFT_FILES:
        for r in _rows(results / name):
            if r["metric"] == "ttft_s" and r["backend"] == "flashinfer" and r["value"]:
                by_chunk.setdefault(r["chunked_prefill_size"], {}).setdefault(r["prompt_tokens"], []).append(
                    (r["value"], f"{name} run {r.get('run')}"))
    out = []
    small, large = by_chunk.get(8192, {}), by_chunk.get(16384, {})
    for n in sorted(set(small) & set(large)):
        extra = -(-n // 8192) - -(-n // 16384)
        for t_s, src_s in small[n]:
            for t_l, src_l in large[n]:
                if t_s > t_l:
                    out.append(Sample(StepWork(steps=float(extra)), t_s - t_l,
                                      f"flashinfer ttft_s @ {n}: chunk 8192 ({src_s}) - chunk 16384 ({src_l})"))
    return out


def derive_profile(results_dir: Union[str, Path], models_dir: Union[str, Path], gpu: str) -> tuple[Profile, FitResult]:
    """Fit the six coefficients to :func:`h100_samples` (relative least squares) and record provenance."""
    samples = h100_samples(results_dir, models_dir)
    res = fit(samples)
    used: dict[str, list[str]] = {}
    for s in samples:
        for f, v in zip(StepWork.__dataclass_fields__, s.work.vector()):
            if v:
                used.setdefault(f, []).append(s.source)
    prov = {
        "how": "sgl_qwen1m.scheduler.calibrate.derive_profile: relative least squares over committed H100 rows",
        "results_dir": "benchmarks/results",
        "files": sorted({s.source.split(":")[0] for s in samples}),
        "rows_per_coefficient": used,
        "not_measured": [f for f, v in res.coefficients.items() if v is None],
        "caveats": ["kernel rows are synthetic patterns (vertical = random) at one chunk size per file",
                    "e2e rows come from other dates and kernel revisions than the kernel rows",
                    "no committed row has decode rows inside a prefill step (mixed batches never ran with qwen1m): "
                    "'steps' is an eager prefill step's overhead, 'kv_bytes' a CUDA-graph decode attention time",
                    "replace with `python -m sgl_qwen1m bench profile` on the GPU"],
    }
    return Profile.from_fit(gpu, res, prov), res
