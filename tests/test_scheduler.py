"""CPU tests of the scheduler: cost model monotonicity, the profile fit, the policy's guarantees (property tests) and
the predicted 7B-1M plans on the committed H100 profile (printed: TTFT overhead vs idle, dense step-time spread)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl_qwen1m.scheduler.calibrate import derive_profile, model_7b_1m
from sgl_qwen1m.scheduler.cost import WORK_FIELDS, PrefillPiece, Step, StepWork, sum_min
from sgl_qwen1m.scheduler.policy import PolicyConfig, StepPolicy, Waiting
from sgl_qwen1m.scheduler.profile import Profile, Sample, fit, measurement_plan, profile_path
from sgl_qwen1m.scheduler.simulate import Scenario, fixed_chunk_steps, plan_summary, simulate, spread
from sgl_qwen1m.sizing import QWEN25_7B

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "benchmarks" / "models"
RESULTS = ROOT / "benchmarks" / "results"
H100 = Profile.load(ROOT / "sgl_qwen1m" / "scheduler" / "profiles" / "h100.json")  # probes + a 1M server's steps
FROM_ROWS = Profile.load(RESULTS / "scheduler-h100" / "profiles" / "h100_from_committed_rows.json")
SPARSE = model_7b_1m(MODELS, sparse=True)
DENSE = model_7b_1m(MODELS, sparse=False)
SETTINGS = settings(max_examples=60, deadline=None)


def test_sum_min_matches_the_loop():
    for lo, hi, cap in [(1, 10, 4), (5, 9, 100), (5, 9, 3), (0, 0, 1), (3, 2, 5), (1, 300, 150.0)]:
        assert sum_min(lo, hi, cap) == sum(min(k, cap) for k in range(lo, hi + 1))


@SETTINGS
@given(st.sampled_from([SPARSE, DENSE]), st.integers(0, 1_100_000), st.integers(1, 20000), st.integers(1, 20000))
def test_cost_is_monotone_in_prefix_and_chunk(model, prefix, chunk, more):
    """Monotone, except that a chunk crossing a DCA chunk boundary pays one estimation pass per DCA chunk it spans
    (as the sparse planner runs it), so sliding it past the boundary can make it cheaper: compare equal spans; and
    sliding a chunk past the sparse threshold turns dense work into sparse work, which can be cheaper (on the refitted
    H100 profile 9,810 tokens after 22,959 cost less than after 10,922): compare within one regime."""
    t = lambda p, c: H100.predict_s(model.prefill_work(p, c) + StepWork(steps=1))  # noqa: E731
    same_regime = model.is_sparse_piece(prefix + more, chunk) == model.is_sparse_piece(prefix, chunk)
    if same_regime and len(model._dca_pieces(prefix + more, chunk)) >= len(model._dca_pieces(prefix, chunk)):
        assert t(prefix + more, chunk) >= t(prefix, chunk) * (1 - 1e-12)
    assert t(prefix, chunk + more) >= t(prefix, chunk) * (1 - 1e-12)


def test_a_chunk_crossing_a_dca_boundary_pays_two_estimation_passes():
    """The counterexample hypothesis found to plain monotonicity: 2,716 tokens from 251,237 span two DCA chunks."""
    a, b = SPARSE.prefill_work(251_237, 2716), SPARSE.prefill_work(253_952, 2716)
    assert a.estimate_key_layers > b.estimate_key_layers and a.sparse_blocks == pytest.approx(b.sparse_blocks)


def test_estimation_pass_is_a_fixed_cost_per_sparse_chunk():
    a, b = SPARSE.prefill_work(1_000_000, 64), SPARSE.prefill_work(1_000_000, 8192)
    assert a.estimate_key_layers == pytest.approx(28 * 1_000_064) and b.estimate_key_layers == 28 * 1_008_192
    assert SPARSE.prefill_work(1_000_000, 1).estimate_key_layers == 0  # a decode-like row runs dense
    crossing = SPARSE.prefill_work(253952 - 64, 128)  # spans two DCA chunks: two pieces, two passes
    assert crossing.estimate_key_layers == 28 * (253952 + 253952 + 64)


def test_fit_recovers_known_coefficients_from_synthetic_steps():
    truth = {"tokens": 2e-5, "dense_flops": 1.8e-15, "sparse_blocks": 1e-8, "estimate_key_layers": 1.6e-8,
             "kv_bytes": 3.7e-13, "steps": 0.015}
    rng = random.Random(0)
    samples = []
    for i in range(60):
        model = SPARSE if i % 2 else DENSE
        w = model.prefill_work(rng.randrange(0, 900_000), rng.choice([512, 2048, 8192, 16384])) + StepWork(steps=1)
        w = w + model.decode_many([rng.randrange(1000, 500_000) for _ in range(rng.randrange(0, 9))])
        sec = sum(truth[f] * v for f, v in zip(WORK_FIELDS, w.vector())) * (1 + rng.uniform(-1e-3, 1e-3))
        samples.append(Sample(w, sec, f"synthetic {i}"))
    got = fit(samples).coefficients
    for k, v in truth.items():
        assert got[k] == pytest.approx(v, rel=2e-2), k


def test_fit_names_what_it_cannot_determine():
    same = [Sample(StepWork(tokens=n, steps=n / 8192), n * 1e-5, "x") for n in (8192, 16384, 32768)]
    with pytest.raises(ValueError, match="not determined"):
        fit(same)
    got = fit([Sample(StepWork(tokens=1000.0), 0.02)]).coefficients
    assert got["tokens"] == pytest.approx(2e-5) and got["steps"] is None
    with pytest.raises(ValueError, match="no measured 'steps'"):
        Profile("x", got).predict_s(StepWork(steps=1))


def test_the_profile_from_committed_rows_is_what_the_committed_rows_give(tmp_path):
    prof, res = derive_profile(RESULTS, MODELS, FROM_ROWS.gpu)
    assert prof.coefficients == pytest.approx(FROM_ROWS.coefficients)
    assert not prof.missing and set(prof.provenance["files"]) >= {"sparse-ops-h100/sparse_ops_h100.json"}
    for src, err in res.residuals:
        if "ttft_s @" in src and "chunk 8192 (" not in src:  # whole prefills within 10 %
            assert abs(err) < 0.10, (src, err)
    prof.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == prof
    assert profile_path("NVIDIA H100 80GB HBM3").name == "h100.json" and profile_path("NVIDIA H200").name == "h200.json"


def test_measurement_plan_covers_chunk_sizes_and_prefixes():
    plan = measurement_plan(1 << 20)
    pre = [p for p in plan if p.kind == "prefill"]
    assert sum(p.extend for p in pre) == 1 << 20 and {p.extend for p in pre} >= {1024, 4096, 8192, 16384}
    assert all(a.prefix + a.extend == b.prefix for a, b in zip(pre, pre[1:]))
    assert {p.batch for p in plan if p.kind == "decode"} == {1, 8}
    with pytest.raises(ValueError, match="max_tokens"):
        measurement_plan(100)


def _policy(model=SPARSE, **kw):
    return StepPolicy(model, H100, PolicyConfig(**kw))


waiting_st = st.lists(st.tuples(st.integers(1, 1_100_000), st.floats(0, 10)), min_size=1, max_size=4)


@SETTINGS
@given(st.sampled_from([SPARSE, DENSE]), st.lists(st.integers(1, 1_000_000), max_size=16), waiting_st,
       st.floats(50, 3000), st.integers(256, 32768))
def test_policy_respects_target_and_memory_bound_or_degrades_to_progress(model, decodes, waits, itl, cap):
    pol = _policy(model, itl_target_ms=itl, max_step_tokens=cap)
    waiting = [Waiting(f"r{i}", n, 0, t) for i, (n, t) in enumerate(waits)]
    d = pol.plan_step(decodes, waiting)
    assert d.step.tokens <= max(cap, len(decodes) + pol.cfg.min_progress_tokens)
    assert d.step.prefill_tokens >= 1 or len(decodes) >= cap  # always some progress while memory allows
    assert d.predicted_s == pytest.approx(pol.step_s(d.step))
    if d.feasible:
        assert d.predicted_s <= d.target_s * (1 + 1e-9)
    first = pol.order(waiting)[0]  # if its floor chunk (rule 4) fits, a feasible plan exists: it must be found
    limit = min(first.remaining, cap - len(decodes))
    if limit >= 1:
        base = StepWork(steps=1) + pol.cost.decode_many(decodes)
        floor = pol.floor_chunk(base, 0, limit)
        assert d.prefill[0].extend >= floor  # never under the floor
        if pol.step_s(Step((PrefillPiece("p", 0, floor),), tuple(decodes))) <= d.target_s:
            assert d.feasible


def test_activation_bound_from_bytes():
    per = SPARSE.activation_bytes_per_token
    pol = _policy(activation_budget_bytes=per * 4096)
    assert pol.max_step_tokens == 4096
    assert pol.plan_step([], [Waiting("a", 100_000)]).step.prefill_tokens <= 4096
    with pytest.raises(ValueError, match="holds no token"):
        _policy(activation_budget_bytes=per - 1)


def test_short_prompt_goes_ahead_of_a_long_prompts_remaining_chunks():
    pol = _policy()
    d = pol.plan_step([2048] * 8, [Waiting("long", 1 << 20, 500_000, 0.0), Waiting("chat", 2048, 0, 5.0)])
    assert d.prefill[0].rid == "chat" and d.prefill[0].extend == 2048
    assert [p.rid for p in d.prefill] == ["chat", "long"] and d.feasible


def test_env_knob_sets_the_latency_goal():
    assert PolicyConfig.from_env({"QWEN1M_ITL_TARGET_MS": "500"}).step_target_s == pytest.approx(0.4)
    assert PolicyConfig.from_env({}).itl_target_ms == 1000.0
    with pytest.raises(ValueError, match="QWEN1M_ITL_TARGET_MS='fast'"):
        PolicyConfig.from_env({"QWEN1M_ITL_TARGET_MS": "fast"})
    with pytest.raises(ValueError, match="itl_target_ms must be > 0"):
        PolicyConfig(itl_target_ms=0)


@pytest.mark.parametrize("tokens", [262144, 524288, 1048576])
def test_sparse_long_prompt_under_load_vs_idle(tokens):
    """Predicted on the committed H100 profile: 8 decoding chats + a 2K chat every 2 s; the issue's goal is TTFT
    within 1.10x of the idle server (same policy), steps under the 800 ms step target, no chat starved."""
    pol = _policy()
    load = simulate(pol, Scenario(tokens, streams=8, chat_rate_per_s=0.5))
    idle = simulate(pol, Scenario(tokens, streams=0))
    fixed = sum(fixed_chunk_steps(pol, tokens, 8192))
    ratio = load.long_ttft_s / idle.long_ttft_s
    print(f"sparse {tokens}: TTFT under load {load.long_ttft_s:.1f} s, idle (policy) {idle.long_ttft_s:.1f} s "
          f"-> {ratio:.3f}x; idle fixed-8192 {fixed:.1f} s -> {load.long_ttft_s / fixed:.3f}x; max step "
          f"{load.max_step_s * 1e3:.0f} ms; chat TTFT max {max(load.chat_ttft_s, default=0):.2f} s; "
          f"{len(load.long_chunks)} chunks {min(load.long_chunks)}..{max(load.long_chunks)}")
    assert load.infeasible_steps == 0 and load.max_step_s <= pol.cfg.step_target_s + 1e-9
    assert ratio <= 1.10
    assert max(load.chat_ttft_s) <= 2.0


@pytest.mark.parametrize("tokens", [262144, 524288])
def test_dense_dca_plan_equalises_step_times(tokens):
    pol = _policy(DENSE)
    idle = simulate(pol, Scenario(tokens, streams=0))
    fixed = fixed_chunk_steps(pol, tokens, 8192)
    steps = idle.long_step_s[:-1]  # the last chunk is whatever is left
    bound = [s for s, c in zip(steps, idle.long_chunks) if c < pol.max_step_tokens]  # target-bound steps
    print(f"dense {tokens}: policy step spread {spread(steps):.2f} (target-bound steps {spread(bound):.3f}, "
          f"{len(bound)}/{len(steps)}), fixed-8192 spread {spread(fixed):.2f}; TTFT {idle.long_ttft_s:.1f} s vs "
          f"fixed {sum(fixed):.1f} s")
    # a target-bound step is the largest that fits: one more 64-token granule (dearest at the longest prefix) would
    # not have fitted, so it is within that granule's time of the target
    granule_s = pol.predict_s(DENSE.prefill_work(tokens - pol.cfg.granule, pol.cfg.granule))
    assert min(bound) >= pol.cfg.step_target_s - granule_s and max(bound) <= pol.cfg.step_target_s + 1e-9
    assert spread(bound) < 1.08 and spread(steps) < spread(fixed) / 4


def test_plan_summary_line():
    line = plan_summary(_policy(), "r1", 1 << 20, [2048] * 8)
    assert line.startswith("qwen1m scheduler: request r1: 1048576 tokens (sparse) in ") and "target 800 ms" in line
    assert "\n" not in line
