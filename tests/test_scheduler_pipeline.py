"""DCPP chunk plans and their pipeline timing (``sgl_qwen1m.scheduler.pipeline``): exact small cases, and on the
7B-1M cost model with the committed H100 profile, equal-time plans shrink the pipeline bubble at PP=2/4/8 and, for dense
DCA, the prefill (predictions; a multi-GPU run must confirm them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgl_qwen1m.scheduler.calibrate import model_7b_1m
from sgl_qwen1m.scheduler.pipeline import (best_plan, chunk_times, compare_plans, equal_time_chunks, fixed_chunks,
                                           pipeline_timing)
from sgl_qwen1m.scheduler.policy import PolicyConfig, StepPolicy
from sgl_qwen1m.scheduler.profile import Profile, profile_path

MODELS = Path(__file__).resolve().parents[1] / "benchmarks" / "models"
H100 = Profile.load(profile_path("NVIDIA H100 80GB HBM3"))


def test_pipeline_timing_exact():
    assert pipeline_timing([1.0, 1.0, 1.0], 1) == (3.0, 0.0)
    makespan, bubble = pipeline_timing([1.0] * 4, 2)  # equal chunks: (S - 1) / (n + S - 1) idle
    assert makespan == 5.0 and bubble == pytest.approx(1 / 5)
    makespan, bubble = pipeline_timing([1.0, 2.0, 3.0], 2)  # stage 1 waits behind each longer chunk
    assert makespan == 9.0 and bubble == pytest.approx(1 - 6 / 9)
    with pytest.raises(ValueError):
        pipeline_timing([], 2)
    with pytest.raises(ValueError):
        pipeline_timing([1.0], 0)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.01, 10.0), min_size=1, max_size=30), st.integers(1, 8))
def test_pipeline_bounds(times, stages):
    makespan, bubble = pipeline_timing(times, stages)
    assert makespan >= sum(times) - 1e-9 and makespan >= max(times) * stages - 1e-9
    assert makespan <= sum(times) + (stages - 1) * max(times) + 1e-9 and 0.0 <= bubble < 1.0


def test_fixed_chunks():
    assert fixed_chunks(10, 4) == [4, 4, 2] and fixed_chunks(8, 4) == [4, 4]
    with pytest.raises(ValueError):
        fixed_chunks(0, 4)


@pytest.mark.parametrize("stages", [2, 4, 8])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
@pytest.mark.parametrize("prompt", [262_144, 1_000_000])
def test_equal_time_plan_is_even_and_shrinks_the_bubble(sparse, prompt, stages):
    policy = StepPolicy(model_7b_1m(MODELS, sparse=sparse), H100, PolicyConfig())
    res = compare_plans(policy, prompt, 16384, stages)
    fixed, equal = res["fixed"], res["equal_time"]
    assert sum(equal.chunks) == prompt and len(equal.chunks) <= len(fixed.chunks)
    assert max(equal.chunks) <= 4 * 16384 and equal.chunks[0] > equal.chunks[-1]  # cheap early chunks are large
    assert equal.spread < fixed.spread and equal.bubble_share < fixed.bubble_share
    assert chunk_times(policy, equal.chunks, stages) == list(equal.stage_times)
    if not sparse:  # dense work does not depend on the chunking: a smaller bubble is a shorter prefill
        assert equal.makespan_s < fixed.makespan_s
    name, best = best_plan(policy, prompt, 16384, stages)
    assert best.makespan_s == min(fixed.makespan_s, equal.makespan_s) and name in res


def test_sparse_equal_times_can_cost_more_work_than_they_save():
    """1M tokens, PP=2: the equal-time plan's bubble is smaller but its estimation passes score more keys (chunk
    ends move later), so the predicted prefill is longer and best_plan keeps fixed chunks."""
    policy = StepPolicy(model_7b_1m(MODELS, sparse=True), H100, PolicyConfig())
    res = compare_plans(policy, 1_000_000, 16384, 2)
    assert sum(res["equal_time"].stage_times) > sum(res["fixed"].stage_times)
    assert res["equal_time"].makespan_s > res["fixed"].makespan_s
    assert best_plan(policy, 1_000_000, 16384, 2)[0] == "fixed"


def test_equal_time_chunks_rejects_impossible_plans():
    policy = StepPolicy(model_7b_1m(MODELS, sparse=False), H100, PolicyConfig())
    with pytest.raises(ValueError, match="cannot cover"):
        equal_time_chunks(policy, 100_000, 2, 16384)
