"""Kernel-level sparse prefill: two vertical-slash designs against dense FlashInfer, same GPU, same run.

``python -m sgl_qwen1m bench ops-sparse --lengths 131072,262144 --chunk 16384 --out benchmarks/results/sparse-ops/sparse_ops.json``

Geometry: one prefill chunk of ``--chunk`` queries at the end of an ``n``-token context (what every chunk of a
chunked prefill runs), 7B shape (28 query heads, 4 KV heads, 128), bf16, budgets of every layer of the real 7B
``sparse_attention_config.json``. Pattern per head: the ``slash_size`` nearest diagonals (the local band) and
``vertical_size`` random columns (sinks included): the same index sets for every design.

Designs:

* ``flashinfer``: dense causal FlashInfer paged prefill (the baseline);
* ``qwen1m-sparse``: this package's Triton kernel on the paged pool (block diagonals + columns, all heads in one
  launch, GQA by KV-head indexing, no K/V copy);
* ``sgl_kernel-fwd_sparse``: SGLang's FA2-based ``sparse_attn_func`` after ``convert_vertical_slash_indexes_mergehead``
  (MInference's kernel; needs contiguous ``[1, n, Hkv, D]`` K/V, here the pool itself);
* ``estimate``: this package's pattern step (two estimation passes, top-k, block pattern, loop bounds).

Correctness first: with budgets covering every key, both sparse designs must equal dense FlashInfer (n = 8192).
"""

from __future__ import annotations

import argparse
from typing import Any, Sequence

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, parse_lengths: Any) -> None:
    p = sub.add_parser("ops-sparse", help="kernel-level sparse prefill designs vs dense FlashInfer (GPU)")
    p.add_argument("--lengths", type=parse_lengths, default=[131072, 262144], help="context lengths")
    p.add_argument("--chunk", type=int, default=16384, help="queries per prefill chunk (%(default)s)")
    p.add_argument("--budgets", default="benchmarks/models/qwen2.5-7b-1m-shape/sparse_attention_config.json")
    p.add_argument("--layers", default="all", help="'all' or comma-separated layer ids whose budgets are timed")
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--prefill-lengths", type=parse_lengths, default=[],
                   help="also time the pattern step of every chunk of a chunked prefill of these prompt lengths "
                        "(layer budgets cycle over chunks), x28 layers: rows estimate_prefill_s")
    p.add_argument("--stage-breakdown", action="store_true",
                   help="also time the pattern step's stages (estimate passes, top-k selection, block pattern + "
                        "loop bounds) per layer: rows pattern_stage_ms")
    p.add_argument("--est-designs", default="",
                   help="with --stage-breakdown: also time these estimation designs (comma list of "
                        "ops.sparse.estimate.DESIGNS: head, gqa), both passes and pass 1 alone: rows "
                        "pattern_stage_ms, stages estimate_passes_<design>_pps<n>, estimate_pass1_lse_<design>_pps<n>")
    p.add_argument("--est-programs-per-sm", default="",
                   help="with --est-designs: at each of these resident programs per SM (comma list; default the "
                        "kernels' ops.sparse.estimate.PROGRAMS_PER_SM)")
    p.add_argument("--dca", action="store_true",
                   help="run the sparse designs of this package in DCA mode with the model's "
                        "dual_chunk_attention_config (config.json beside --budgets), as the server does: five query "
                        "variants, three DCA stages; dense FlashInfer stays plain causal")
    p.add_argument("--out", default="benchmarks/results/sparse-ops/sparse_ops.json")


def _ms(fn, iters: int) -> float:
    import torch

    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(iters):
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


class _Setup:
    """One context of ``n`` keys and a chunk of ``c`` queries at its end, with all three designs planned."""

    def __init__(self, n: int, c: int, ws, cfg=None) -> None:
        import flashinfer
        import torch

        from sgl_qwen1m.ops.dca.plan import RequestSpan, plan_extend

        self.h, self.hkv, self.d, self.n, self.c = 28, 4, 128, n, c
        dev = torch.device("cuda")
        g = torch.Generator(device=dev).manual_seed(n)
        self.k = torch.randn(n, self.hkv, self.d, device=dev, dtype=torch.bfloat16, generator=g)
        self.v = torch.randn(n, self.hkv, self.d, device=dev, dtype=torch.bfloat16, generator=g)
        self.cfg = cfg
        nv = 1 if cfg is None else 5  # DCA: intra, succ, inter and the two critical variants
        self.q = torch.randn(c, nv, self.h, self.d, device=dev, dtype=torch.bfloat16, generator=g)
        self.r2t = torch.arange(n, device=dev, dtype=torch.int32).view(1, n)
        self.rpi = torch.zeros(1, dtype=torch.int64, device=dev)
        self.spans = [RequestSpan(n - c, c)]
        self.plan = plan_extend(self.spans, cfg)
        self.dense = flashinfer.BatchPrefillWithPagedKVCacheWrapper(ws, "NHD", backend="auto")
        self.dense.plan(torch.tensor([0, c], dtype=torch.int32), torch.tensor([0, n], dtype=torch.int32),
                        self.r2t.view(-1), torch.ones(1, dtype=torch.int32), self.h, self.hkv, self.d, 1,
                        causal=True, sm_scale=self.d**-0.5, q_data_type=torch.bfloat16, kv_data_type=torch.bfloat16)

    def q5(self):
        """``[c, 5, H, D]`` query variants as the server passes them (one shared variant without DCA)."""
        return self.q if self.cfg is not None else self.q.expand(self.c, 5, self.h, self.d)

    def run_dense(self):
        return self.dense.run(self.q[:, 0], (self.k, self.v), return_lse=True)

    def prefill(self, budgets):
        import torch

        from sgl_qwen1m.ops.dca.plan import DCAShape
        from sgl_qwen1m.ops.sparse.prefill import SparsePrefill

        shape = DCAShape(self.h, self.hkv, self.d, torch.bfloat16, torch.bfloat16, self.d**-0.5)
        sp = SparsePrefill(shape, self.cfg, budgets, self.k.device, threshold=0)
        return sp, sp.plan_extend(self.plan, self.spans, self.r2t, self.rpi, None)

    def synthetic_pattern(self, sp, state, layer: int, seed: int):
        """Local band of slash_size diagonals + vertical_size random columns (sinks first), per piece and head."""
        v_idx, s_idx = synthetic_indices(state.q_end, sp.budgets[layer], self.h, seed)
        return sp.build_pattern(state, v_idx, s_idx)

    def fwd_sparse_inputs(self, pat):
        """sgl_kernel's index format from the same column and diagonal sets."""
        import torch

        from sgl_qwen1m.bench.sgl_kernel_sparse import convert_indexes
        from sgl_qwen1m.ops.sparse.plan import PAD

        v = pat.v_idx.clone()
        s = pat.s_idx.clone()
        vcount = (v != PAD).sum(-1).view(-1).to(torch.int32)
        scount = (s != PAD).sum(-1).view(-1).to(torch.int32)
        s = torch.where(s == PAD, torch.iinfo(torch.int32).min, s).sort(dim=-1, descending=True).values

        def convert():
            return convert_indexes(self.c, self.n, v, s, vcount, scount)

        return convert

    def run_fwd_sparse(self, idx):
        from sgl_qwen1m.bench.sgl_kernel_sparse import sparse_attention

        return sparse_attention(self.q[:, 0].unsqueeze(0), self.k.unsqueeze(0), self.v.unsqueeze(0), idx, self.d**-0.5)


def synthetic_indices(q_end, budget, heads: int, seed: int):
    """The benchmark's pattern: per piece ``p`` and head ``h``, the ``slash[h]`` nearest diagonals (the local band)
    and ``vertical[h]`` random columns below ``q_end[p]`` (the first 30 always among them), ascending, PAD-padded.

    ``q_end``: ``[P]`` int64 key count of each piece (a chunk that crosses a DCA chunk boundary is two pieces);
    ``budget``: the layer's :class:`~sgl_qwen1m.ops.sparse.plan.LayerBudget`. Returns ``v_idx`` ``[P, H, KV]`` and
    ``s_idx`` ``[P, H, KS]`` int32 with ``KV = min(max_vertical, max q_end)``, ``KS = min(max_slash, max q_end)``.
    """
    import torch

    from sgl_qwen1m.ops.sparse.plan import PAD

    dev, p, n = q_end.device, q_end.shape[0], int(q_end.max())
    kv, ks = min(budget.max_vertical, n), min(budget.max_slash, n)
    g = torch.Generator(device=dev).manual_seed(seed)
    cols = torch.arange(n, device=dev)
    score = torch.rand(p, heads, n, device=dev, generator=g)
    score[..., :30] = 2.0
    score = torch.where(cols < q_end.view(p, 1, 1), score, -1.0)  # keys a piece does not have come last
    v_top = torch.topk(score, kv, dim=-1).indices
    rank = torch.arange(kv, device=dev).view(1, 1, -1)
    keep = (rank < budget.vertical.view(1, -1, 1)) & (v_top < q_end.view(p, 1, 1))
    v_idx = torch.sort(torch.where(keep, v_top, PAD), dim=-1).values.to(torch.int32)
    ar = torch.arange(ks, device=dev).view(1, 1, -1).expand(p, heads, ks)
    keep = (ar < budget.slash.view(1, -1, 1)) & (ar < q_end.view(p, 1, 1))
    return v_idx, torch.where(keep, ar, PAD).to(torch.int32)


def _stage_ms(sp, state, s, layer: int, iters: int, pps: Sequence[int] = (),
              designs: Sequence[str] = ()) -> dict[str, float]:
    """Per-stage times (ms) of ``SparsePrefill.pattern`` for one layer (each stage synchronised on its own), plus
    the torch reference stages it replaced (``*_torch``) and, for each estimation design of ``designs`` at each of
    ``pps`` resident programs per SM (default: the kernels' own), both passes and pass 1 alone
    (``estimate_passes_<design>_pps<n>``, ``estimate_pass1_lse_<design>_pps<n>``; scores checked equal to the
    default's first)."""
    import torch

    from sgl_qwen1m.config import LOCAL_DIAGONALS, SINK_COLUMNS
    from sgl_qwen1m.ops.sparse.estimate import PROGRAMS_PER_SM, _estimate, estimate_scores
    from sgl_qwen1m.ops.sparse.reference import select_vertical_slash
    from sgl_qwen1m.ops.sparse.select import pattern_bounds, select_vs

    q5 = s.q5()
    pp = state.plan
    cl = sp.chunk_len
    bud = sp.budgets[layer]

    def est():
        return estimate_scores(q5, state, s.k, sm_scale=sp.shape.sm_scale, chunk_len=cl)

    def sel():
        return select_vs(scores, state.q_end, state.dense, bud, sink=SINK_COLUMNS, local=LOCAL_DIAGONALS)

    scores = est()
    v_idx, s_idx = sel()
    sweep = {}
    for design in designs:
        for n in pps or [PROGRAMS_PER_SM]:
            def est_n(n=n, design=design, passes=2):
                return _estimate(q5, state, s.k, sm_scale=sp.shape.sm_scale, chunk_len=cl, programs_per_sm=n,
                                 design=design, passes=passes)

            torch.testing.assert_close(est_n(), scores, rtol=1e-4, atol=1e-6)  # same scores, other programs
            sweep[f"estimate_passes_{design}_pps{n}"] = _ms(est_n, iters)
            sweep[f"estimate_pass1_lse_{design}_pps{n}"] = _ms(lambda: est_n(passes=1), iters)
    sel_in = lambda: (scores[0].clone(), scores[1].clone())  # noqa: E731  (the torch select modifies its inputs)
    clone = _ms(sel_in, iters)
    return {
        "estimate_passes": _ms(est, iters),
        "estimate_pass1_lse": _ms(lambda: _estimate(q5, state, s.k, sm_scale=sp.shape.sm_scale, chunk_len=cl,
                                                    passes=1), iters),
        "select_topk": _ms(sel, iters),
        "block_pattern_loop_bounds": _ms(
            lambda: pattern_bounds(s_idx, v_idx, state.pieces, num_key_blocks=pp.key_blocks,
                                   max_blocks=pp.max_blocks, chunk_len=cl), iters),
        "select_topk_torch": _ms(lambda: select_vertical_slash(*sel_in(), state.q_end, bud), iters) - clone,
        "block_pattern_loop_bounds_torch": _ms(lambda: sp.build_pattern(state, v_idx, s_idx), iters),
        **sweep,
    }


def _dca_config(budgets_path: str):
    """The model's DCA settings from ``config.json`` beside its sparse budgets."""
    from pathlib import Path

    from sgl_qwen1m.config import DCAConfig
    from sgl_qwen1m.model.spec import read_config

    model_dir = Path(budgets_path).parent
    path = model_dir / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--dca needs the model's config.json beside --budgets, not found: {path}")
    cfg = DCAConfig.from_hf_config(read_config(model_dir))
    if cfg is None:
        raise ValueError(f"--dca: {path} has no dual_chunk_attention_config")
    return cfg


def _rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def _check(ws, log) -> None:
    """Full budgets: both sparse designs must equal dense FlashInfer."""
    from sgl_qwen1m.config import HeadBudget, SparseBudgets
    from sgl_qwen1m.ops.sparse.plan import PAD

    s = _Setup(8192, 4096, ws)
    full = SparseBudgets(heads=((HeadBudget("vertical_and_slash", 8192, 8192),) * 28,))
    sp, state = s.prefill(full)
    pat = s.synthetic_pattern(sp, state, 0, 0)
    assert int((pat.s_idx != PAD).sum()) == 28 * 8192
    ref, _ = s.run_dense()
    ours, _ = sp.attend(state, pat, s.q, (s.k, s.v))
    theirs = s.run_fwd_sparse(s.fwd_sparse_inputs(pat)())[0][0]
    e1, e2 = _rel(ours, ref), _rel(theirs, ref)
    log(f"ops-sparse check (full budgets, 8192 keys): qwen1m-sparse rel {e1:.2e}, fwd_sparse rel {e2:.2e}")
    if not (e1 < 1e-2 and e2 < 1e-2):
        raise AssertionError(f"full-budget sparse differs from dense: qwen1m {e1}, fwd_sparse {e2}")


def run(args: argparse.Namespace, argv: list[str]) -> int:
    import torch

    from sgl_qwen1m.bench.results import Results, collect_versions, command_line, gpu_name
    from sgl_qwen1m.config import SparseBudgets
    from sgl_qwen1m.ops.sparse.plan import BLOCK
    from sgl_qwen1m.ops.sparse.reference import computed_keys

    log = lambda m: print(m, flush=True)  # noqa: E731
    ws = torch.zeros(512 * 1024 * 1024, dtype=torch.uint8, device="cuda")
    budgets = SparseBudgets.from_json(args.budgets)
    cfg = _dca_config(args.budgets) if args.dca else None
    if cfg is not None:
        log(f"ops-sparse: DCA mode, chunk_size {cfg.chunk_size}, local_size {cfg.local_size}")
    layers = list(range(budgets.num_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    results = Results.open(args.out, command=command_line(argv), gpu=gpu_name(), versions=collect_versions())
    _check(ws, log)
    for n in args.lengths:
        s = _Setup(n, min(args.chunk, n), ws, cfg)
        sp, state = s.prefill(budgets)
        tot = {"flashinfer": 0.0, "qwen1m-sparse": 0.0, "sgl_kernel-fwd_sparse": 0.0, "estimate": 0.0,
               "convert": 0.0}
        stages: dict[str, float] = {}
        flops = {"flashinfer": 0.0, "qwen1m-sparse": 0.0, "sgl_kernel-fwd_sparse": 0.0}
        dense_ms = _ms(s.run_dense, args.iters)
        causal_pairs = s.c * (n - s.c) + s.c * (s.c + 1) / 2
        # sgl_kernel's index format describes one causal sequence: a chunk that crosses a DCA chunk boundary (two
        # pieces) has no equivalent there, so that design sits out this length
        one_piece = state.plan.num_pieces == 1
        if not one_piece:
            log(f"ops-sparse n={n}: the chunk spans {state.plan.num_pieces} DCA pieces: sgl_kernel-fwd_sparse skipped")
        for li in layers:
            pat = s.synthetic_pattern(sp, state, li, li)
            tot["flashinfer"] += dense_ms
            flops["flashinfer"] += 4 * s.d * s.h * causal_pairs
            tot["qwen1m-sparse"] += _ms(lambda: sp.attend(state, pat, s.q, (s.k, s.v)), args.iters)
            flops["qwen1m-sparse"] += 4 * s.d * BLOCK * float(computed_keys(state.plan, pat.dcnt, pat.vcnt).sum())
            if one_piece:
                convert = s.fwd_sparse_inputs(pat)
                idx = convert()
                tot["convert"] += _ms(convert, args.iters)
                tot["sgl_kernel-fwd_sparse"] += _ms(lambda: s.run_fwd_sparse(idx), args.iters)
                bc, _, cc, _ = idx
                flops["sgl_kernel-fwd_sparse"] += 4 * s.d * BLOCK * float(bc.long().sum() * BLOCK + cc.long().sum())
            q5 = s.q5()
            tot["estimate"] += _ms(lambda: sp.pattern(state, li, q5, s.k), args.iters)
            if args.stage_breakdown:
                pps = [int(x) for x in args.est_programs_per_sm.split(",") if x.strip()]
                designs = [x.strip() for x in args.est_designs.split(",") if x.strip()]
                for k, v in _stage_ms(sp, state, s, li, args.iters, pps, designs).items():
                    stages[k] = stages.get(k, 0.0) + v
        nl = len(layers)
        log(f"ops-sparse n={n} chunk={s.c} ({nl} layers): " + ", ".join(f"{k} {v / nl:.3f} ms" for k, v in tot.items()))
        extra = {"chunk_queries": s.c, "layers": nl, "dca": cfg is not None, "pieces": state.plan.num_pieces,
                 "what": "mean per layer over the 7B budgets; one chunk at the end of the context",
                 "pattern": "slash = local band of slash_size diagonals, vertical = random"}
        for name in ("flashinfer", "qwen1m-sparse") + (("sgl_kernel-fwd_sparse",) if one_piece else ()):
            results.upsert("attn_ms", name, n, tot[name] / nl, **extra)
            results.upsert("tflops", name, n, flops[name] / (tot[name] * 1e-3) / 1e12, **extra)
            results.upsert("computed_fraction", name, n, flops[name] / flops["flashinfer"], **extra)
        results.upsert("estimate_ms", "qwen1m-sparse", n, tot["estimate"] / nl, **extra)
        if one_piece:
            results.upsert("convert_ms", "sgl_kernel-fwd_sparse", n, tot["convert"] / nl, **extra)
        for stage, ms in stages.items():
            log(f"ops-sparse n={n}: pattern stage {stage} {ms / nl:.3f} ms")
            results.upsert("pattern_stage_ms", f"qwen1m-sparse-{stage}", n, ms / nl, stage=stage, **extra)
        results.upsert("estimate_share", "qwen1m-sparse", n,
                       tot["estimate"] / (tot["estimate"] + tot["qwen1m-sparse"]), **extra)
        del s, sp, state
        torch.cuda.empty_cache()
    for n in args.prefill_lengths:
        total = 0.0
        chunks = -(-n // args.chunk)
        for i in range(chunks):
            end = min(n, (i + 1) * args.chunk)
            s = _Setup(end, end - i * args.chunk, ws, cfg)
            sp, state = s.prefill(budgets)
            li = layers[i % len(layers)]
            total += _ms(lambda: sp.pattern(state, li, s.q5(), s.k), 3)
            del s, sp, state
        est_s = total * budgets.num_layers / 1e3
        log(f"ops-sparse prefill {n}: pattern step of {chunks} chunks x {budgets.num_layers} layers = {est_s:.2f} s")
        results.upsert("estimate_prefill_s", "qwen1m-sparse", n, est_s, chunk_queries=args.chunk, chunks=chunks,
                       dca=cfg is not None,
                       what="sum over the chunks of one chunked prefill of the pattern step (estimate, select, "
                            "block pattern, loop bounds), one layer per chunk (budgets cycling), times the layer count")
        torch.cuda.empty_cache()
    return 0
