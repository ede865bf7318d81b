"""Arguments of ``python -m sgl_qwen1m bench {e2e,serve-smoke,reliability,ops-decode,ops-sparse,plot,plan,load,
profile,stages}`` and of the top-level ``python -m sgl_qwen1m plan`` (the same planner): :func:`register` and
:func:`register_plan`, called by :mod:`sgl_qwen1m.cli`.
``python -m sgl_qwen1m.bench ...`` is the same command line.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from sgl_qwen1m.args import (
    CommandError,
    key_value,
    length_or_zero,
    lengths,
    lengths_or_none,
    positive_float,
    positive_int,
    unit_fraction,
)
from sgl_qwen1m.sizing import ModelShape, auto_context_length, plan_memory, prefill_floor_s

from .backends import SPECS, default_model_dirs, parse_backends

__all__ = ["register", "register_plan", "e2e_options", "serve_options", "reliability_options"]

_DESCRIPTION = """\
Benchmarks of sgl_qwen1m on SGLang 0.5.17 with dummy weights (random, same shapes and kernels as the real model).

  e2e          TTFT per prompt length, decode step at one length, peak GPU memory, per backend
               (flashinfer, dual_chunk_flash_attn, qwen1m-dense, qwen1m-sparse); one sgl.Engine per backend,
               each in its own worker process; a correctness check on a short prompt runs before any timing.
  serve-smoke  one long request (default 600K tokens) through `python -m sglang.launch_server`.
  reliability  hostile requests against one launch_server (bad ids and types, over the context and the KV pool,
               dropped streams, aborts, concurrency over the pool, radix-cache prefix pair); each must leave the
               server alive, its KV pool idle and the next request served.
  plot         TTFT vs prompt length with the arithmetic floor, from a results JSON (needs matplotlib).
  plan         FLOP floor and SGLang memory split for given lengths (CPU only).
  load, profile  the scheduler's benchmarks (chat streams under a long prefill; step-time profile), running server.
  profile-check  step-time profiles against the steps a server logged, and a refit from them (CPU).
  stages       GPU time per prefill stage of one long prompt (torch-profiler trace of a running server).
"""

_EPILOG = """\
Run on the GPU host after `source scripts/gpu/prologue.sh` (unpacks the offline bundle, sets PYTHONPATH).
Results: benchmarks/results/<name>.json (merged across runs; a killed run keeps what it measured), plot beside it.
"""


def _backends(text: str) -> list[str]:
    try:
        return parse_backends(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _common(p: argparse.ArgumentParser, mfs: float) -> None:
    dirs = default_model_dirs()
    p.add_argument(
        "--model-shape", default=str(dirs["shape"]), help="plain (no DCA) config dir for flashinfer (%(default)s)"
    )
    p.add_argument(
        "--model-1m",
        dest="model_dca",
        default=str(dirs["dca"]),
        help="DCA config dir (with sparse_attention_config.json) for qwen1m-*/dual_chunk_flash_attn (%(default)s)",
    )
    p.add_argument(
        "--context-length", type=int, default=0, help="default: longest prompt + new tokens + 1024, rounded up to 4096"
    )
    p.add_argument(
        "--chunked-prefill-size", type=positive_int, default=8192, help="tokens per prefill chunk (%(default)s)"
    )
    p.add_argument(
        "--mem-fraction-static",
        type=unit_fraction,
        default=mfs,
        help="weights + KV pool share of GPU memory, in (0, 1) (%(default)s)",
    )
    p.add_argument(
        "--max-running-requests",
        type=positive_int,
        default=4,
        help="bounds SGLang's req_to_token table (rows x context x 4 B; 2048 rows if unset) (%(default)s)",
    )
    p.add_argument(
        "--max-total-tokens",
        type=int,
        default=-1,
        help="KV pool tokens; -1 = context length (pool fits one request), 0 = SGLang's sizing (%(default)s)",
    )
    p.add_argument(
        "--cuda-graph",
        action="store_true",
        help="keep SGLang's decode CUDA graphs (default: disabled, as the baselines)",
    )
    p.add_argument(
        "--mem-budget-gib",
        type=float,
        default=0.0,
        help="device memory budget the run must stay within (e.g. 48 for an L40S-class card): recorded on every "
        "row, and each peak_mem_gib row says whether the measured peak stayed within it (0 = none)",
    )
    p.add_argument(
        "--deadline-s", type=float, default=0, help="stop starting new work after this many seconds (0 = none)"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompts and of SGLang (%(default)s)")
    p.add_argument(
        "--work-dir", default="/tmp/sgl_qwen1m_bench", help="scratch: dense model variants, logs (%(default)s)"
    )


def register(subparsers: Any) -> None:
    """Add the ``bench`` verb and its subverbs to ``subparsers`` (the top-level ``plan``: :func:`register_plan`).

    Every leaf parser sets ``handler(ns, argv) -> int``, ``argv`` being the words after ``bench``.
    """
    ap = subparsers.add_parser(
        "bench",
        help="benchmarks on SGLang with dummy weights: e2e, serve-smoke, reliability, ops-decode, ops-sparse, plot, "
        "plan",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(required=True, metavar="{e2e,serve-smoke,reliability,ops-decode,ops-sparse,plot,plan,load,profile,profile-check,stages}")

    e = sub.add_parser("e2e", help="TTFT / decode step / peak memory per backend through sgl.Engine (dummy weights)")
    e.add_argument(
        "--backends",
        type=_backends,
        default=["flashinfer", "qwen1m-dense"],
        help=f"comma list of {','.join(SPECS)} (default flashinfer,qwen1m-dense)",
    )
    e.add_argument("--lengths", type=lengths, default=[131072, 262144], help="prompt lengths, e.g. 128K,256K")
    e.add_argument(
        "--decode-at", type=lengths_or_none, default=[262144],
        help="prompt lengths of the decode timing, e.g. 256K,1000000 (0 = none)"
    )
    e.add_argument("--decode-tokens", type=positive_int, default=32, help="decode steps timed (%(default)s)")
    e.add_argument(
        "--decode-method",
        choices=("stream", "diff"),
        default="stream",
        help="stream: one streamed request, prefix from the radix cache; diff: (t(N+1)-t(1))/N",
    )
    e.add_argument("--repeats", type=positive_int, default=1, help="TTFT samples per length; the median is reported")
    e.add_argument("--check-tokens", type=int, default=1024, help="prompt of the pre-timing correctness check")
    e.add_argument("--warmup-tokens", type=int, default=40960, help="warm-up prompt (> 32K so sparse paths compile)")
    e.add_argument(
        "--peak-tflops", type=positive_float, default=800.0, help="for the arithmetic floor (H100 dense bf16 ~800)"
    )
    e.add_argument("--backend-timeout-s", type=float, default=1800.0, help="kill a backend's worker after this long")
    e.add_argument("--time-unchecked", action="store_true", help="time a backend even if its check failed")
    e.add_argument("--log-level", default="warning", help="SGLang log level inside the Engine (%(default)s)")
    e.add_argument(
        "--engine-arg",
        type=key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra sgl.Engine/ServerArgs field (JSON value), repeatable",
    )
    e.add_argument("--no-plot", dest="plot", action="store_false", help="skip the PNG")
    e.add_argument("--out", default="benchmarks/results/e2e/e2e_7b.json", help="results JSON (%(default)s)")
    _common(e, 0.80)
    e.set_defaults(handler=_run_e2e)

    s = sub.add_parser("serve-smoke", help="one long request through `python -m sglang.launch_server`")
    serve_backends = [n for n, sp in SPECS.items() if sp.decode and sp.weights == "dummy"]  # no -local over HTTP
    s.add_argument("--backend", choices=serve_backends, default="qwen1m-sparse")
    s.add_argument("--prompt-tokens", type=length_or_zero, default=600_000)
    s.add_argument("--new-tokens", type=positive_int, default=32)
    s.add_argument("--port", type=int, default=0, help="0 = a free port")
    s.add_argument("--start-timeout-s", type=float, default=300.0)
    s.add_argument("--request-timeout-s", type=float, default=480.0)
    s.add_argument("--log-file", default="", help="server log (default <work-dir>/serve-<backend>-<tokens>.log)")
    s.add_argument("--log-level", default="info", help="server --log-level (%(default)s)")
    s.add_argument(
        "--server-arg",
        dest="server_args",
        action="append",
        default=[],
        metavar="ARG",
        help="extra launch_server argument, repeatable (e.g. --server-arg=--enable-metrics)",
    )
    s.add_argument("--out", default="benchmarks/results/serve-smoke/serve_smoke_600k.json")
    _common(s, 0.70)
    s.set_defaults(handler=_run_serve_smoke)

    _reliability_arguments(sub.add_parser("reliability", help="hostile requests against one launch_server"))

    p = sub.add_parser("plot", help="(re)draw the TTFT plot of one or more results JSONs")
    p.add_argument("json", nargs="+", help="results files; with several, a row of an earlier file wins on ties")
    p.add_argument("--out", default="", help="PNG path (default: beside the first JSON)")
    p.add_argument("--peak-tflops", type=float, default=800.0)
    p.add_argument("--kind", choices=["ttft", "runs", "timeline", "stages"], default="ttft",
                   help="ttft: TTFT vs length per backend; runs: peak memory / TTFT / decode per model and KV dtype; "
                        "timeline: bench load scenarios' *.timeline.json (one panel each); "
                        "stages: bench stages files, one bar each")
    p.add_argument("--gpu-gib", type=float, default=0.0, help="runs: draw the GPU's memory as a line (0 = none)")
    p.set_defaults(handler=_run_plot)

    _plan_arguments(sub.add_parser("plan", help=_PLAN_HELP))
    from .load_cli import register as register_load  # load, profile (the scheduler's benchmarks)

    register_load(sub)
    from .profile_check import register as register_profile_check  # profiles vs a server's logged steps (CPU)

    register_profile_check(sub)
    from .stages import register as register_stages  # GPU time per prefill stage (issue 18)

    register_stages(sub)

    from .ops import add_parser as add_ops_parser
    from .ops import run as run_ops
    from .ops_sparse import add_parser as add_ops_sparse_parser
    from .ops_sparse import run as run_ops_sparse

    add_ops_parser(sub, lengths)
    sub.choices["ops-decode"].set_defaults(handler=run_ops)
    add_ops_sparse_parser(sub, lengths)
    sub.choices["ops-sparse"].set_defaults(handler=run_ops_sparse)
    w = sub.add_parser("_worker")  # internal: one backend in its own process
    w.add_argument("--options", required=True)
    w.add_argument("--backend", required=True, choices=list(SPECS))
    w.set_defaults(handler=_run_worker)


def _reliability_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("--backend", choices=["qwen1m-sparse", "qwen1m-dense"], default="qwen1m-sparse")
    r.add_argument("--port", type=int, default=0, help="0 = a free port")
    r.add_argument("--url", default="", help="test an already running server on loopback instead (no launch)")
    r.add_argument("--start-timeout-s", type=float, default=240.0)
    r.add_argument("--request-timeout-s", type=float, default=60.0, help="per simple request (%(default)s)")
    r.add_argument("--idle-timeout-s", type=float, default=60.0, help="wait for the KV pool to drain (%(default)s)")
    r.add_argument("--max-restarts", type=int, default=2, help="restarts after the server dies (%(default)s)")
    r.add_argument("--log-file", default="", help="server log (default <work-dir>/<out stem>.server.log)")
    r.add_argument("--log-level", default="info", help="server --log-level (%(default)s)")
    r.add_argument("--server-arg", dest="server_args", action="append", default=[], metavar="ARG",
                   help="extra launch_server argument, repeatable")
    r.add_argument("--size", dest="sizes", type=key_value, action="append", default=[], metavar="FIELD=N",
                   help="override a case size of sgl_qwen1m.bench.reliability_cases.Sizes, e.g. concurrent=2")
    r.add_argument("--out", default="benchmarks/results/reliability-h200/reliability_h200.json")
    _common(r, 0.70)
    r.set_defaults(handler=_run_reliability, context_length=245760, max_total_tokens=204800, deadline_s=500.0)


_PLAN_HELP = "print FLOP floors and the memory split for given lengths (no GPU)"


def register_plan(subparsers: Any) -> None:
    """Add the top-level ``plan`` verb: the same planner as ``bench plan``."""
    _plan_arguments(subparsers.add_parser("plan", help=_PLAN_HELP + "; = bench plan"))


def _plan_arguments(f: argparse.ArgumentParser) -> None:
    f.add_argument("--lengths", type=lengths, default=[131072, 262144, 524288, 1048576])
    f.add_argument("--model", default=str(default_model_dirs()["dca"]), help="model directory with config.json")
    f.add_argument("--peak-tflops", type=positive_float, default=800.0)
    f.add_argument(
        "--gpu-gib", type=positive_float, default=79.1, help="free GPU memory at start (H100 80GB: ~79.1)"
    )
    f.add_argument("--mem-fraction-static", type=unit_fraction, default=0.80, help="in (0, 1)")
    f.add_argument("--max-running-requests", type=positive_int, default=4)
    f.add_argument("--kv-cache-dtype", choices=["auto", "bf16", "fp8_e4m3", "fp8_e5m2"], default="auto",
                   help="KV pool element type: auto/bf16 2 bytes, fp8_* 1 byte (%(default)s)")
    f.set_defaults(handler=_run_plan)


def e2e_options(ns: argparse.Namespace) -> "Any":
    """Namespace -> :class:`E2EOptions`."""
    from .e2e import E2EOptions

    keys = {k: v for k, v in vars(ns).items() if k in E2EOptions.__dataclass_fields__}
    keys["engine_args"] = dict(ns.engine_arg)
    return E2EOptions(**keys)


def serve_options(ns: argparse.Namespace) -> "Any":
    """Namespace -> :class:`ServeOptions`."""
    from .serve import ServeOptions

    return ServeOptions(**{k: v for k, v in vars(ns).items() if k in ServeOptions.__dataclass_fields__})


def _run_plan(ns: argparse.Namespace, argv: list[str]) -> int:
    if not (Path(ns.model) / "config.json").is_file():
        raise CommandError(f"--model {ns.model}: no config.json there (give a Hugging Face model directory)")
    try:
        shape = ModelShape.from_dir(ns.model)
    except (ValueError, KeyError, TypeError) as e:
        raise CommandError(f"--model {ns.model}: cannot read its config.json ({type(e).__name__}: {e})") from None
    kv_b = 1 if ns.kv_cache_dtype.startswith("fp8") else 2
    print(f"{'tokens':>9} {'floor_s':>8} {'ctx':>9} {'pool_tok':>9} {'pool_GiB':>8} {'headroom':>8} fits")
    for n in ns.lengths:
        ctx = auto_context_length(n, 33)
        m = plan_memory(shape, ns.gpu_gib, ns.mem_fraction_static, ctx, ns.max_running_requests, kv_dtype_bytes=kv_b)
        print(
            f"{n:>9} {prefill_floor_s(shape, n, ns.peak_tflops):>8.2f} {ctx:>9} {m.kv_pool_tokens:>9} "
            f"{m.kv_pool_gib:>8.1f} {m.headroom_gib:>8.1f} {m.fits}"
        )
    print(f"weights {shape.weight_bytes() / 1e9:.2f} GB, KV {shape.kv_bytes_per_token(kv_b)} B/token "
          f"({ns.kv_cache_dtype})")
    return 0


def _run_e2e(ns: argparse.Namespace, argv: list[str]) -> int:
    from .e2e import run_e2e

    return run_e2e(e2e_options(ns), argv)


def _run_serve_smoke(ns: argparse.Namespace, argv: list[str]) -> int:
    from .serve import run_serve_smoke

    return run_serve_smoke(serve_options(ns), argv)


def reliability_options(ns: argparse.Namespace) -> "Any":
    """Namespace -> :class:`ReliabilityOptions`."""
    from .reliability import ReliabilityOptions
    from .reliability_cases import Sizes

    keys = {k: v for k, v in vars(ns).items() if k in ReliabilityOptions.__dataclass_fields__}
    keys["sizes"] = dict(ns.sizes)
    for k, v in keys["sizes"].items():
        if k not in Sizes.__dataclass_fields__ or not isinstance(v, int) or v <= 0:
            raise CommandError(f"--size {k}={v}: expected FIELD=N with N > 0 and FIELD one of "
                               f"{', '.join(Sizes.__dataclass_fields__)}", exit_code=2)
    return ReliabilityOptions(**keys)


def _run_reliability(ns: argparse.Namespace, argv: list[str]) -> int:
    from .reliability import run_reliability

    return run_reliability(reliability_options(ns), argv)


def _run_plot(ns: argparse.Namespace, argv: list[str]) -> int:
    from .plot import plot_runs, plot_ttft
    from .results import Results, merge_rows

    first = Path(ns.json[0])
    out = Path(ns.out) if ns.out else first.with_name(first.name.removesuffix(".gz")).with_suffix(".png")
    if ns.kind == "stages":
        from .stages import plot_stages

        docs = [(Path(j).stem, json.loads(Path(j).read_text())) for j in ns.json]
        path = plot_stages(docs, out)
        print(f"{path} ({path.stat().st_size // 1024} KB)")
        return 0
    if ns.kind == "timeline":
        from .load import plot_timeline

        from sgl_qwen1m.jsonout import load

        # *.timeline.json or their gzip (*.timeline.json.gz); several: one panel each, in the order given
        if not plot_timeline([load(j) for j in ns.json], out):
            raise SystemExit("bench plot --kind timeline needs matplotlib")
        print(f"{out} ({out.stat().st_size // 1024} KB)")
        return 0
    data = merge_rows([Results.load(j) for j in ns.json])
    if ns.kind == "runs":
        path = plot_runs(data, out, ns.gpu_gib or None)
    else:
        path = plot_ttft(data, out, ns.peak_tflops)
    print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


def _run_worker(ns: argparse.Namespace, argv: list[str]) -> int:
    from .e2e import E2EOptions
    from .engine_worker import run_worker

    return run_worker(E2EOptions.from_json(Path(ns.options).read_text()), ns.backend)
