"""``bench load`` and ``bench profile`` (the scheduler's benchmarks): parsers, and the profiling run.

``bench profile --url URL --model-dir DIR --out P.json`` times the probes of
:func:`sgl_qwen1m.scheduler.profile.measurement_plan` against a running server (one prompt grown through the radix
cache: each prefill probe is one step of ``extend`` tokens after a cached ``prefix``; decode probes stream ``batch``
requests of the cached prompt), computes each probe's work with the cost model of ``DIR`` (its budgets when
``sparse_attention_config.json`` is there) and fits the profile. The server must run with
``--chunked-prefill-size`` at least the largest probe chunk and the radix cache on.
``bench profile --from-committed benchmarks/results --out P.json`` derives the H100 profile from committed rows (CPU).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from sgl_qwen1m.args import length_or_zero, positive_float, positive_int
from sgl_qwen1m.config import DCAConfig, SparseBudgets
from sgl_qwen1m.scheduler.calibrate import derive_profile
from sgl_qwen1m.scheduler.cost import CostModel
from sgl_qwen1m.scheduler.profile import Profile, Sample, fit, measurement_plan
from sgl_qwen1m.sizing import ModelShape

from .common import make_prompt
from .load import LoadOptions, StreamTrace, run_load, stream_generate

__all__ = ["register", "cost_model_for", "run_profile"]


def register(sub: Any) -> None:
    """Add ``load`` and ``profile`` to the ``bench`` subparsers."""
    ld = sub.add_parser("load", help="chat streams decoding while one long prompt prefills (running server)")
    ld.add_argument("--url", required=True, help="server base URL, e.g. http://127.0.0.1:30000 (loopback)")
    ld.add_argument("--long-tokens", type=length_or_zero, default=1 << 20, help="long prompt, e.g. 256K, 1M")
    ld.add_argument("--streams", type=int, default=8, help="chats decoding when it arrives (%(default)s)")
    ld.add_argument("--chat-prompt", type=positive_int, default=2048)
    ld.add_argument("--chat-rate", type=float, default=0.5, help="new chats per second during the prefill")
    ld.add_argument("--scenario", default="long+chats", help="label of this run (rows are keyed by it)")
    ld.add_argument("--backend", default="qwen1m-sparse", help="label of the server's configuration")
    ld.add_argument("--kv-dtype", default="", help="the server's --kv-cache-dtype, stored on the rows (e.g. fp8_e4m3)")
    ld.add_argument("--timeout-s", type=positive_float, default=1800.0)
    ld.add_argument("--skip-idle", action="store_true", help="no idle TTFT run (no ttft_ratio_vs_idle)")
    ld.add_argument("--no-plot", dest="plot", action="store_false")
    ld.add_argument("--out", default="benchmarks/results/load/load.json")
    ld.set_defaults(handler=_run_load)

    lw = sub.add_parser("local-weights", help="give a running server the distance-decaying -local weights")
    lw.add_argument("--url", required=True, help="server base URL (loopback; the tensors travel as shared memory)")
    lw.add_argument("--model-dir", required=True, help="the served model's directory (config.json picks the recipe)")
    lw.add_argument("--tp-size", type=positive_int, default=1, help="the server's --tp-size (%(default)s)")
    lw.set_defaults(handler=_run_local_weights)

    pf = sub.add_parser("profile", help="fit the scheduler's step-time profile (running server, or committed rows)")
    src = pf.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="server base URL (loopback) to time the measurement plan against")
    src.add_argument("--from-committed", metavar="RESULTS_DIR", help="derive from committed H100 rows (CPU)")
    pf.add_argument("--model-dir", default="benchmarks/models/qwen2.5-7b-1m-shape",
                    help="config.json (+ sparse_attention_config.json) of the served model (%(default)s)")
    pf.add_argument("--max-tokens", type=length_or_zero, default=1 << 20, help="longest prefix probed")
    pf.add_argument("--chunks", default="1024,4096,8192,16384", help="probe chunk sizes (comma list)")
    pf.add_argument("--gpu", default="", help="GPU name stored in the profile (default: nvidia-smi's)")
    pf.add_argument("--timeout-s", type=positive_float, default=600.0, help="per request")
    pf.add_argument("--out", required=True, help="profile JSON, e.g. sgl_qwen1m/scheduler/profiles/h200.json")
    pf.set_defaults(handler=_run_profile)


def _run_local_weights(ns: argparse.Namespace, argv: list[str]) -> int:
    """Send :mod:`.local_weights`' tensors for ``--model-dir`` to the server, in <= 1 GiB batches."""
    from sgl_qwen1m.adapter.engine import update_weights_over_http
    from sgl_qwen1m.args import CommandError

    from .local_weights import local_attention_tensors, local_recipe, update_batches

    config = json.loads((Path(ns.model_dir) / "config.json").read_text())
    recipe = local_recipe(config)
    batches = list(update_batches(local_attention_tensors(config)))
    for i, batch in enumerate(batches):
        ok, msg = update_weights_over_http(ns.url, batch, tp_size=ns.tp_size, flush_cache=i == len(batches) - 1)
        if not ok:
            raise CommandError(f"{ns.url} refused the {recipe['recipe']} local weights (update {i + 1} of "
                               f"{len(batches)}): {msg}")
    print(f"local weights ({recipe['recipe']}) set on {ns.url} in {len(batches)} update(s): {json.dumps(recipe)}")
    return 0


def _gpu(name: str) -> str:
    if name:
        return name
    from .results import gpu_name

    return gpu_name().split(",")[0].strip()


def _run_load(ns: argparse.Namespace, argv: list[str]) -> int:
    o = LoadOptions(url=ns.url, out=ns.out, scenario=ns.scenario, backend=ns.backend, long_tokens=ns.long_tokens,
                    streams=ns.streams, chat_prompt=ns.chat_prompt, chat_rate=ns.chat_rate, timeout_s=ns.timeout_s,
                    skip_idle=ns.skip_idle, plot=ns.plot, gpu=_gpu(""), kv_dtype=ns.kv_dtype)
    print(json.dumps(run_load(o, argv), indent=1))
    return 0


def cost_model_for(model_dir: str) -> CostModel:
    """Cost model of a served model directory (budgets when ``sparse_attention_config.json`` is beside it)."""
    d = Path(model_dir)
    hf = json.loads((d / "config.json").read_text())
    dca = DCAConfig.from_hf_config(hf)
    bfile = d / "sparse_attention_config.json"
    budgets = SparseBudgets.from_json(bfile) if bfile.exists() else None
    return CostModel.from_sparse_budgets(ModelShape.from_config(hf), budgets,
                                         dca_chunk_len=dca.chunk_len if dca else None)


def _timed(url: str, ids: list[int], new: int, timeout_s: float, n: int = 1) -> list[StreamTrace]:
    traces = [StreamTrace(f"p{i}", 0.0) for i in range(n)]
    stop = threading.Event()
    ths = [threading.Thread(target=stream_generate, args=(url, ids, new, t, stop, timeout_s)) for t in traces]
    for th in ths:
        th.start()
    for th in ths:
        th.join()
    bad = [t.error for t in traces if t.error or not t.events]
    if bad:
        raise RuntimeError(f"profile probe failed: {bad[0] or 'no token'}")
    return traces


OUTLIER_FACTOR = 3.0  # a probe that compiled a kernel took 10-100x its neighbours on the 2026-12-08 H100 ladder


def run_profile(url: str, model_dir: str, max_tokens: int, chunks: list[int], timeout_s: float,
                gpu: str) -> tuple[Profile, list[Sample]]:
    """Time the measurement plan against ``url`` and fit (see the module docstring)."""
    cost = cost_model_for(model_dir)
    prompt = make_prompt(max_tokens, seed=7)
    samples: list[Sample] = []
    for p in measurement_plan(max_tokens, chunks):
        if p.kind == "prefill":
            tr = _timed(url, prompt[: p.prefix + p.extend], 1, timeout_s)[0]
            samples.append(Sample(p.work(cost), tr.first_token - tr.sent, p.name))
        else:
            trs = _timed(url, prompt[: p.prefix], p.steps + 1, timeout_s, n=p.batch)
            gaps = sorted(g for t in trs for g in t.gaps())
            samples.append(Sample(p.work(cost), gaps[len(gaps) // 2], p.name))  # median gap: one batch's step
    res = fit(samples, outlier_factor=OUTLIER_FACTOR)
    prov = {"how": "sgl_qwen1m bench profile --url (radix-cache probe ladder, relative least squares, outliers "
                   f"more than {OUTLIER_FACTOR:g}x off left out)",
            "model_dir": model_dir, "max_tokens": max_tokens, "chunks": chunks, "date": time.strftime("%F"),
            "not_measured": [k for k, v in res.coefficients.items() if v is None]}
    return Profile.from_fit(gpu, res, prov, samples), samples


def _run_profile(ns: argparse.Namespace, argv: list[str]) -> int:
    if ns.from_committed:
        models = Path(ns.model_dir).parent
        prof, _ = derive_profile(ns.from_committed, models, ns.gpu or "NVIDIA H100 80GB HBM3")
    else:
        chunks = [int(c) for c in ns.chunks.split(",") if c.strip()]
        prof, _ = run_profile(ns.url, ns.model_dir, ns.max_tokens, chunks, ns.timeout_s, _gpu(ns.gpu))
    prof.save(ns.out)
    print(json.dumps({"gpu": prof.gpu, "coefficients": prof.coefficients, "missing": prof.missing,
                      "out": ns.out}, indent=1))
    return 0
