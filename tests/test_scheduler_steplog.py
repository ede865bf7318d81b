"""The scheduler against a real server's steps (CPU): SGLang's prefill log lines as samples, the outlier-robust fit,
the chunk floor that stops a 1M prompt collapsing to 64-token steps, and ``bench profile-check`` on the committed
2026-12-08 H100 log (1,493 steps of one 1,000,000-token prompt, FP8 KV, -local weights)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from sgl_qwen1m.bench.profile_check import probe_samples, read_log, refit
from sgl_qwen1m.bench.results import validate
from sgl_qwen1m.scheduler.calibrate import model_7b_1m
from sgl_qwen1m.scheduler.cost import WORK_FIELDS, StepWork
from sgl_qwen1m.scheduler.policy import PolicyConfig, StepPolicy
from sgl_qwen1m.scheduler.profile import Profile, Sample, fit, stored_samples
from sgl_qwen1m.scheduler.simulate import Scenario, fixed_chunk_steps, simulate
from sgl_qwen1m.scheduler.steplog import alone_steps, parse_prefill_lines, step_samples

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "benchmarks" / "results" / "scheduler-h100"
LOG = RES / "policy_1m_server_h100.log.xz"
PROBE = Profile.load(RES / "profiles" / "h100_probe_256k.json")
STORED = Profile.load(ROOT / "sgl_qwen1m" / "scheduler" / "profiles" / "h100.json")
SPARSE = model_7b_1m(ROOT / "benchmarks" / "models")


def _line(new, pending, running=0, queued=0, thr=1000.0, seqs=1):
    return (f"[2026-12-07 23:57:09] Prefill batch, #new-seq: {seqs}, #new-token: {new}, #cached-token: 0, token "
            f"usage: 0.04, #running-req: {running}, #queue-req: {queued}, #pending-token: {pending}, cuda graph: "
            f"False, input throughput (token/s): {thr:.2f}")


def test_alone_steps_from_log_lines():
    lines = [_line(4, 0), "INFO: 127.0.0.1 POST /generate 200",
             _line(100, 300, thr=50.0),  # a 400-token prompt: its first step (skipped: arrival, compilation)
             _line(100, 200, thr=100.0),  # 100 tokens 1.0 s after the previous line: the first step took 1.0 s
             _line(150, 50, thr=300.0),  # -> step 2 (prefix 100, extend 100) took 0.5 s
             _line(50, 0, thr=25.0),  # -> step 3 (prefix 200, extend 150) took 2.0 s; its own time is unknown
             _line(64, 0, running=3, thr=640.0)]  # a chat while others decode: not alone
    parsed = parse_prefill_lines(lines)
    assert [p.lineno for p in parsed] == [1, 3, 4, 5, 6, 7] and parsed[-1].running == 3
    steps = alone_steps(parsed)
    assert [(s.prompt, s.prefix, s.extend) for s in steps] == [(400, 100, 100), (400, 200, 150)]
    assert [s.seconds for s in steps] == pytest.approx([0.5, 2.0])
    assert alone_steps(parsed, min_prompt=401) == []
    # another request interleaved (running > 0) breaks the chain: no step straddles it
    mixed = parse_prefill_lines([_line(100, 300), _line(100, 200), _line(10, 0, running=1), _line(100, 100)])
    assert [(s.prefix, s.extend) for s in alone_steps(mixed)] == []
    work = step_samples(steps, SPARSE, tag="t")[0]
    assert work.source == "t:4 prefix=100 extend=100" and work.work.steps == 1.0 and work.seconds == 0.5


def test_the_committed_log_gives_1493_steps_of_one_1m_prompt():
    raw = read_log(str(LOG))
    assert any("\r" in line for line in raw)  # progress bars: lines are split on \n only, as grep numbers them
    steps = alone_steps(parse_prefill_lines(raw), 131072)
    assert len(steps) == 1493 and {s.prompt for s in steps} == {1_000_000}
    assert steps[0].prefix == 16384 and steps[-1].prefix + steps[-1].extend == 999_936  # last line has no successor
    assert all(a.prefix + a.extend == b.prefix for a, b in zip(steps, steps[1:]))
    assert sum(s.extend == 64 for s in steps) > 1000  # the collapse: 64-token steps from ~920K on
    assert sum(s.seconds > 4 for s in steps) == 7  # 4.5-6.1 s stalls (not yet explained; outliers of the refit)


def test_fit_leaves_out_compile_steps_and_recovers_the_coefficients():
    truth = {"tokens": 2.4e-5, "dense_flops": 3e-15, "sparse_blocks": 7e-9, "estimate_key_layers": 1.7e-8,
             "steps": 0.007}
    rng = random.Random(1)
    samples = []
    for i in range(80):
        prefix = rng.randrange(0, 16_000) if i % 4 == 0 else rng.randrange(40_000, 1_000_000)  # dense / sparse
        w = SPARSE.prefill_work(prefix, rng.choice([64, 2048, 8192, 16384])) + StepWork(steps=1)
        sec = sum(truth.get(f, 0.0) * v for f, v in zip(WORK_FIELDS, w.vector())) * (1 + rng.uniform(-.005, .005))
        samples.append(Sample(w, sec * (40 if i in (3, 50) else 1), f"s{i}"))  # two steps that compiled a kernel
    robust = fit(samples, outlier_factor=3.0)
    assert {s for s, _ in robust.outliers} == {"s3", "s50"} and all(r < -0.9 for _, r in robust.outliers)
    for k, v in truth.items():
        assert robust.coefficients[k] == pytest.approx(v, rel=0.05), k
    with pytest.raises(ValueError, match="outlier_factor must be > 1"):
        fit(samples, outlier_factor=1.0)
    prof = Profile.from_fit("g", robust, {}, samples)
    back = stored_samples(prof)
    assert [s.source for s in back] == [s.source for s in samples]
    assert [s.work for s in back] == [s.work for s in samples]
    assert [s.seconds for s in back] == pytest.approx([s.seconds for s in samples], rel=1e-5)


def test_the_chunk_floor_keeps_a_1m_prompt_from_collapsing():
    """The server's own plan line for the 2026-12-08 run said 1,495 chunks and 1,234.2 s on the probe profile; with
    the floor the same (overpredicting) profile plans about 100 chunks."""
    old = StepPolicy(SPARSE, PROBE, PolicyConfig(chunk_floor_factor=1.0))
    new = StepPolicy(SPARSE, PROBE, PolicyConfig())
    before, after = simulate(old, Scenario(1_000_000, streams=0)), simulate(new, Scenario(1_000_000, streams=0))
    assert len(before.long_chunks) == 1495 and before.long_ttft_s == pytest.approx(1234.2, abs=0.1)
    fixed = sum(fixed_chunk_steps(new, 1_000_000, 16384))
    assert len(after.long_chunks) < 120 and after.long_ttft_s < 1.35 * fixed
    with pytest.raises(ValueError, match="chunk_floor_factor must be a finite number >= 1"):
        PolicyConfig(chunk_floor_factor=0.5)


def test_the_stored_h100_profile_is_the_refit_and_predicts_the_logged_steps(tmp_path):
    steps = alone_steps(parse_prefill_lines(read_log(str(LOG))), 131072)
    logged = step_samples(steps, SPARSE, tag=LOG.name)
    again = refit(PROBE, SPARSE, logged, 3.0, {})
    assert again.coefficients == pytest.approx(STORED.coefficients, rel=1e-9)
    assert len(probe_samples(PROBE, SPARSE)) == len(PROBE.provenance["residuals"])
    ratio = sorted(STORED.predict_s(s.work) / s.seconds for s in logged)
    assert 0.97 < ratio[len(ratio) // 2] < 1.03 and ratio[len(ratio) // 10] > 0.9  # p10 of what is not an outlier
    probe = sorted(PROBE.predict_s(s.work) / s.seconds for s in logged)
    assert probe[len(probe) // 2] > 1.6  # the 256K ladder extrapolated to 1M: 1.75x


def test_profile_check_cli_writes_rows_and_plot(tmp_path, capsys):
    from sgl_qwen1m.cli import main

    out = tmp_path / "check.json"
    probe = RES / "profiles" / "h100_probe_256k.json"
    stored = ROOT / "sgl_qwen1m" / "scheduler" / "profiles" / "h100.json"
    assert main(["bench", "profile-check", "--log", str(LOG), "--profile", f"probe={probe}", "--profile",
                 f"stored={stored}", "--kv-dtype", "fp8_e4m3", "--out", str(out), "--no-plot"]) == 0
    data = json.loads(out.read_text())
    assert validate(data) == []
    got = {(r["metric"], r["variant"]): r for r in data["rows"] if r["metric"] != "step_s"}
    assert got[("policy_prefill_s", "measured")]["steps"] == 1493
    assert got[("step_pred_ratio", "probe")]["value"] > 1.6
    assert 0.97 < got[("step_pred_ratio", "stored")]["value"] < 1.03
    assert {r["case"] for r in data["rows"] if r["metric"] == "step_s"} >= {"prefix 875000-1000000"}
    assert main(["bench", "profile-check", "--log", str(LOG), "--profile", "nopath", "--out", str(out)]) == 1
    assert "--profile 'nopath': expected NAME=PATH" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    assert main(["bench", "profile-check", "--log", str(LOG), "--profile", f"probe={probe}",
                 "--out", str(tmp_path / "p.json")]) == 0
    assert (tmp_path / "p.png").stat().st_size > 5000


def _serve_1m(profile, adapt, decodes=(2048,) * 8, n=1_000_000):
    """A serving planner (``PassPlanner``) prefilling one ``n``-token prompt beside ``decodes`` with a fake clock
    whose steps take what the refitted profile predicts (the logged H100 steps within ~2 %)."""
    from sgl_qwen1m.scheduler.cost import PrefillPiece, Step
    from sgl_qwen1m.scheduler.policy import Waiting
    from sgl_qwen1m.scheduler.serving import PassPlanner

    now = [0.0]
    planner = PassPlanner(StepPolicy(SPARSE, profile, PolicyConfig()), clock=lambda: now[0], adapt=adapt)
    done, carried, chunks, lines, steps = 0, None, [], [], []
    while done < n:
        tokens, more = planner.plan(list(decodes), [Waiting("long", n, done, 0.0)], carried)
        lines += more
        step = Step((PrefillPiece("long", done, tokens["long"]),), tuple(decodes))
        steps.append(STORED.predict_s(SPARSE.step_work(step)))
        now[0] += steps[-1]
        chunks.append(tokens["long"])
        done += tokens["long"]
        carried = "long"
    return planner, steps, chunks, lines


def test_a_serving_planner_corrects_an_overpredicting_profile_from_its_own_steps():
    """On the probe profile (1.75x high at 1M) with 8 decoding chats. Measuring, the planner's scale falls to what
    the steps show (~0.73 at the end) and the prefill is shorter, in fewer chunks, than on the unscaled profile and
    no longer than on the refitted profile itself. A scale corrects the magnitude, not the mix: the probe profile
    still puts too much of a step in the fixed estimation cost, so the chunk floor's steps reach 0.93 s (the step
    target is 0.8 s) with or without it; the refit holds the target."""
    fixed, fixed_steps, fixed_chunks, _ = _serve_1m(PROBE, adapt=False)
    learnt, steps, chunks, lines = _serve_1m(PROBE, adapt=True)
    truth, truth_steps, _, _ = _serve_1m(STORED, adapt=False)
    assert fixed.scale == 1.0 and fixed.measured_steps == 0 and fixed.policy.scale == 1.0
    assert learnt.measured_steps == len(steps) - 1 and 0.6 < learnt.scale < 0.8
    assert sum(steps) < 0.95 * sum(fixed_steps) and sum(steps) < 1.0 * sum(truth_steps)
    assert len(chunks) < len(fixed_chunks) and max(truth_steps) <= 0.8 + 1e-9 < max(steps) < 0.95
    assert any(line.startswith("qwen1m scheduler: measured / predicted step time 0.") for line in lines)


def test_the_planner_measures_only_back_to_back_steps_of_one_carried_request():
    from sgl_qwen1m.scheduler.policy import Waiting
    from sgl_qwen1m.scheduler.serving import PassPlanner

    now = [0.0]
    pol = StepPolicy(SPARSE, STORED, PolicyConfig())
    planner = PassPlanner(pol, clock=lambda: now[0])
    long = [Waiting("long", 1_000_000, 500_000, 0.0)]
    planner.plan([], long, None)  # first pass: nothing to measure
    now[0] += 100.0  # the next pass carries another request: the gap is not a step of this one
    planner.plan([], [Waiting("other", 1_000_000, 500_000, 0.0)], "other")
    assert planner.measured_steps == 0 and planner.scale == 1.0
    now[0] += 100.0  # 'other' carried again, 100 s later: one step, its ratio clamped to 4x
    planner.plan([], [Waiting("other", 1_000_000, 600_000, 0.0)], "other")
    assert planner.measured_steps == 1 and planner.scale == pytest.approx(4.0 ** 0.2)
    assert pol.scale == 1.0 and planner.policy.scale == pytest.approx(4.0 ** 0.2)  # the caller's policy untouched
    planner.plan([], [Waiting("chat", 2048, 0, 0.0)], None)  # a whole prompt: nothing left partial
    now[0] += 1.0
    planner.plan([], long, None)
    assert planner.measured_steps == 1
