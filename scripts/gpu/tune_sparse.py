"""Launch-config sweep of the sparse kernel and a breakdown of the pattern step (one layer, 7B shape).
Usage (GPU host): python3 scripts/gpu/tune_sparse.py [n] [chunk]"""
import sys

import torch

from sgl_qwen1m.attention.kernels_sparse import estimate_vs, vs_attention
from sgl_qwen1m.attention.vertical_slash import block_pattern, loop_bounds, select_vertical_slash
from sgl_qwen1m.bench.ops_sparse import _ms, _Setup
from sgl_qwen1m.config import SparseBudgets

n = int(sys.argv[1]) if len(sys.argv) > 1 else 131072
c = int(sys.argv[2]) if len(sys.argv) > 2 else 16384
ws = torch.zeros(512 << 20, dtype=torch.uint8, device="cuda")
s = _Setup(n, c, ws)
budgets = SparseBudgets.from_json("benchmarks/models/qwen2.5-7b-1m-shape/sparse_attention_config.json")
sp, st = s.prefill(budgets)
for layer in (1, 16):
    pat = s.synthetic_pattern(sp, st, layer, layer)
    ref = None
    for w in (4, 8):
        for stages in (1, 2, 3, 4):
            def f():
                return vs_attention(s.q, st.q_scale, s.k, s.v, s.r2t, st.piece_table, st.block_table, pat.diag,
                                    pat.cov, pat.v_idx, pat.dcnt, pat.vcnt, sp.sm_scale, False,
                                    num_warps=w, num_stages=stages)
            try:
                o = f()[0]
                ref = o if ref is None else ref
                err = ((o.float() - ref.float()).norm() / ref.float().norm()).item()
                print(f"layer {layer} warps {w} stages {stages}: {_ms(f, 5):.3f} ms (diff {err:.1e})", flush=True)
            except Exception as e:  # noqa: BLE001
                print(f"layer {layer} warps {w} stages {stages}: failed {type(e).__name__}: {str(e)[:120]}")
q = s.q
b = sp.budgets[16]
t_est = _ms(lambda: estimate_vs(q, st.q_scale, s.k, s.r2t, st.piece_table, st.plan.max_len, sp.sm_scale, None), 5)
vert, slash = estimate_vs(q, st.q_scale, s.k, s.r2t, st.piece_table, st.plan.max_len, sp.sm_scale, None)
t_sel = _ms(lambda: select_vertical_slash(vert.clone(), slash.clone(), st.q_end, b), 5)
t_clone = _ms(lambda: (vert.clone(), slash.clone()), 5)
v_idx, s_idx = select_vertical_slash(vert, slash, st.q_end, b)
t_pat = _ms(lambda: block_pattern(s_idx, st.dense, st.plan.key_blocks), 5)
cov, diag = block_pattern(s_idx, st.dense, st.plan.key_blocks)
t_lb = _ms(lambda: loop_bounds(diag, v_idx, st.first_block, st.c0, None, st.plan.max_blocks), 5)
print(f"pattern step n={n}: estimate_vs {t_est:.3f} ms, select {t_sel - t_clone:.3f} ms, block_pattern {t_pat:.3f} ms, "
      f"loop_bounds {t_lb:.3f} ms")
