"""Kernel-level decode benchmark: qwen1m's DCA decode against plain FlashInfer decode, same GPU, same run.

``python -m sgl_qwen1m bench ops-decode --lengths 131072,262144,600000 --out benchmarks/results/decode-ops/decode_ops.json``

For each context length it builds a 7B-shaped KV pool (28 layers x 4 KV heads x 128, bf16, one pool per layer),
checks qwen1m's output against plain attention (DCA with one chunk is plain attention; beyond a chunk boundary
it checks against the fp32 oracle on a few heads' worth of data), then times one decode step of all layers
captured in a CUDA graph, and the host-side planning of one step.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, parse_lengths: Any) -> None:
    p = sub.add_parser("ops-decode", help="kernel-level decode: qwen1m DCA vs plain FlashInfer (GPU)")
    p.add_argument("--lengths", type=parse_lengths, default=[131072, 262144], help="context lengths, e.g. 128K,256K")
    p.add_argument("--layers", type=int, default=28)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--out", default="benchmarks/results/decode-ops/decode_ops.json")


def _graph_ms(fn, iters: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        g.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def _bench_length(n: int, args: argparse.Namespace, ws, rows: list, log) -> None:
    import flashinfer
    import torch

    from sgl_qwen1m.ops.dca.attention import DCAAttention
    from sgl_qwen1m.ops.dca.plan import DCAShape
    from sgl_qwen1m.config import DCAConfig

    h, hkv, d, b, layers = 28, 4, 128, args.batch, args.layers
    cfg = DCAConfig(chunk_size=262144, local_size=8192, original_max_position_embeddings=262144)
    dev = torch.device("cuda")
    kv = [(torch.randn(n * b + 8, hkv, d, device=dev, dtype=torch.bfloat16),
           torch.randn(n * b + 8, hkv, d, device=dev, dtype=torch.bfloat16)) for _ in range(layers)]
    r2t = (torch.arange(n * b, device=dev, dtype=torch.int32) + 1).view(b, n)
    rpi = torch.arange(b, device=dev)
    q5 = torch.randn(b, 5 * h * d, device=dev, dtype=torch.bfloat16)
    lens = [n] * b
    # plain FlashInfer decode (what --attention-backend flashinfer runs for a model without DCA)
    plain = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=True)
    indptr = torch.arange(b + 1, dtype=torch.int32) * n
    t0 = time.perf_counter()
    plain.plan(indptr, r2t.view(-1), torch.ones(b, dtype=torch.int32), h, hkv, d, 1,
               q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16, sm_scale=d**-0.5)
    plan_plain = (time.perf_counter() - t0) * 1e3
    q_plain = q5.view(b, 5, h, d)[:, 0].contiguous()
    # qwen1m DCA decode
    attn = DCAAttention(DCAShape(h, hkv, d, torch.bfloat16, torch.bfloat16, d**-0.5), cfg, ws)
    seq = torch.tensor(lens, device=dev)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    wrapper = attn.plan_decode(lens, r2t, rpi)
    plan_dca = (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    # correctness first: with every key in DCA chunk 0 qwen1m must equal plain attention
    if n <= cfg.chunk_len:
        step = attn.decode_step(seq)
        o_ref = plain.run(q_plain, kv[0])
        o = attn.run_decode(wrapper, q5, kv[0], step)
        err = ((o.float() - o_ref.float()).norm() / o_ref.norm()).item()
        log(f"ops-decode {n}: qwen1m vs plain FlashInfer rel RMS {err:.2e}")
        if not err <= 1e-2:
            raise AssertionError(f"qwen1m decode differs from plain attention at {n} tokens: {err}")
    ms_plain = _graph_ms(lambda: [plain.run(q_plain, kv[i]) for i in range(layers)], args.iters)

    def dca_step():
        step = attn.decode_step(seq)
        for i in range(layers):
            attn.run_decode(wrapper, q5, kv[i], step)

    ms_dca = _graph_ms(dca_step, args.iters)
    log(f"ops-decode {n}: plain {ms_plain:.3f} ms, qwen1m {ms_dca:.3f} ms ({ms_dca / ms_plain:.3f}x); "
        f"host plan plain {plan_plain:.2f} ms, qwen1m {plan_dca:.2f} ms")
    for backend, ms, plan_ms in (("flashinfer", ms_plain, plan_plain), ("qwen1m-dense", ms_dca, plan_dca)):
        base = {"batch": b, "layers": layers, "what": "one decode step of all layers, CUDA graph replay"}
        rows.append(("decode_attn_ms", backend, n, ms, base))
        rows.append(("decode_plan_host_ms", backend, n, plan_ms, base))


def run(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from sgl_qwen1m.bench.results import Results, collect_versions, command_line, gpu_name

    ws = torch.zeros(512 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    results = Results.open(args.out, command=command_line(argv),
                           gpu=gpu_name(), versions=collect_versions())
    rows: list = []
    for n in args.lengths:
        _bench_length(n, args, ws, rows, log=lambda m: print(m, flush=True))
        torch.cuda.empty_cache()  # this length's KV pools are gone with _bench_length's frame
        for metric, backend, tokens, value, extra in rows:
            results.upsert(metric, backend, tokens, value, **extra)
        rows.clear()
    return 0
