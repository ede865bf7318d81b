"""``bench profile-check``: step-time profiles against the steps a real server logged, and a refit from them (CPU).

``python -m sgl_qwen1m bench profile-check --log SERVER.log[.gz] --profile probe=P.json [--profile stored=Q.json]
--model-dir DIR --out R.json [--refit NEW.json --refit-base probe]``

1. Reads the server's alone prefill steps (:mod:`sgl_qwen1m.scheduler.steplog`: one long prompt, nothing else
   running) and computes each step's work with the cost model of ``DIR``.
2. For each profile: the ratio predicted / measured per step (rows ``step_pred_ratio``: median, with p10 / p90
   and the step count; per prefix bucket ``step_s`` of the profile beside the measured one), and the policy's
   predicted idle prefill of the same prompt under that profile (``policy_prefill_s``) beside the measured sum of
   the logged steps (``variant`` ``measured``).
3. ``--refit``: a profile fitted from the base profile's own samples (stored in it, or rebuilt from its residuals
   for profiles written before samples were stored) plus the logged steps, with outliers left out
   (:func:`sgl_qwen1m.scheduler.profile.fit`, ``--outlier-factor``), saved with its provenance.
4. A PNG beside ``--out``: step time against prefix (measured points, each profile's prediction), and the chunk
   sizes the server ran against those each profile's policy would run.
"""

from __future__ import annotations

import argparse
import gzip
import json
import lzma
import time
from pathlib import Path
from typing import Any, Sequence

from sgl_qwen1m.args import CommandError, positive_float, positive_int
from sgl_qwen1m.scheduler.cost import CostModel
from sgl_qwen1m.scheduler.policy import PolicyConfig, StepPolicy
from sgl_qwen1m.scheduler.profile import Probe, Profile, Sample, fit, stored_samples
from sgl_qwen1m.scheduler.simulate import Scenario, SimResult, simulate
from sgl_qwen1m.scheduler.steplog import AloneStep, alone_steps, parse_prefill_lines, step_samples

from .load import percentile

__all__ = ["register", "read_log", "probe_samples", "longest_prompt", "idle_plans", "check_rows", "refit"]


def register(sub: Any) -> None:
    p = sub.add_parser("profile-check", help="step-time profiles vs the steps a server logged; refit (CPU)")
    p.add_argument("--log", required=True, help="a qwen1m server's log (plain or .gz) with one long prompt alone")
    p.add_argument("--profile", action="append", required=True, metavar="NAME=PATH",
                   help="a profile to check (repeat for several)")
    p.add_argument("--model-dir", default="benchmarks/models/qwen2.5-7b-1m-shape",
                   help="the served model's config.json (+ sparse_attention_config.json) (%(default)s)")
    p.add_argument("--min-prompt", type=positive_int, default=131072, help="only prompts this long (%(default)s)")
    p.add_argument("--backend", default="qwen1m-sparse-local", help="label of the server's configuration")
    p.add_argument("--kv-dtype", default="", help="the server's --kv-cache-dtype, stored on the rows")
    p.add_argument("--chunk", type=positive_int, default=16384, help="the server's --chunked-prefill-size")
    p.add_argument("--refit", metavar="NEW.json", help="write a profile fitted from a base profile's samples + the log")
    p.add_argument("--refit-base", metavar="NAME", help="the --profile whose samples the refit starts from")
    p.add_argument("--outlier-factor", type=positive_float, default=3.0, help="refit: leave out samples this far off")
    p.add_argument("--caveat", action="append", default=[], help="refit: a caveat stored in its provenance (repeat)")
    p.add_argument("--no-plot", dest="plot", action="store_false")
    p.add_argument("--out", required=True, help="results JSON")
    p.set_defaults(handler=_run)


def read_log(path: str) -> list[str]:
    """The log's lines, split on ``\\n`` only (progress bars write ``\\r``); plain, gzip or xz."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    elif raw[:6] == b"\xfd7zXZ\x00":
        raw = lzma.decompress(raw)
    return raw.decode("utf-8", errors="replace").split("\n")


def probe_samples(profile: Profile, cost: CostModel) -> list[Sample]:
    """The profile's samples: stored ones, else rebuilt from ``bench profile``'s residual list (each sample's name
    gives its work under ``cost``; measured = predicted / (1 + rel_error), exact to the 4 stored digits)."""
    got = stored_samples(profile)
    if got:
        return got
    out = []
    prov = profile.provenance
    for r in list(prov.get("residuals", ())) + list(prov.get("outliers", ())):
        work = Probe.from_name(str(r["sample"])).work(cost)  # ValueError naming any other sample
        out.append(Sample(work, profile.predict_s(work) / (1.0 + float(r["rel_error"])), str(r["sample"])))
    return out


def longest_prompt(steps: Sequence[AloneStep], samples: Sequence[Sample]) -> tuple[list[AloneStep], list[Sample]]:
    """The steps (and their samples, same order) of the longest prompt among ``steps``."""
    if not steps:
        raise CommandError("the log has no alone prefill steps of a long prompt (see sgl_qwen1m.scheduler.steplog)")
    prompt = max(s.prompt for s in steps)
    keep = [i for i, s in enumerate(steps) if s.prompt == prompt]
    return [steps[i] for i in keep], [samples[i] for i in keep]


def idle_plans(cost: CostModel, profiles: dict[str, Profile], prompt: int, chunk: int) -> dict[str, SimResult]:
    """Each profile's policy planning ``prompt`` alone on a server with ``--chunked-prefill-size chunk``."""
    return {name: simulate(StepPolicy(cost, prof, PolicyConfig(max_step_tokens=chunk)), Scenario(prompt, streams=0))
            for name, prof in profiles.items()}


def check_rows(steps: Sequence[AloneStep], samples: Sequence[Sample], profiles: dict[str, Profile],
               plans: dict[str, SimResult], buckets: int = 8) -> list[dict[str, Any]]:
    """Rows (metric, value and fields, without backend / prompt_tokens) comparing ``profiles`` with the steps of one
    prompt (``samples``: their work and time, :func:`step_samples`; ``plans``: :func:`idle_plans`)."""
    prompt = steps[0].prompt
    rows: list[dict[str, Any]] = [{"metric": "policy_prefill_s", "variant": "measured",
                                   "value": sum(s.seconds for s in steps), "steps": len(steps),
                                   "note": "sum of the logged alone steps (the prompt's first step excluded)"}]
    edges = [prompt * i // buckets for i in range(buckets + 1)]
    for name, prof in [("measured", None), *profiles.items()]:
        secs = [s.seconds for s in steps] if prof is None else [prof.predict_s(x.work) for x in samples]
        for lo, hi in zip(edges, edges[1:]):
            sel = [x for s, x in zip(steps, secs) if lo <= s.prefix < hi]
            if sel:
                rows.append({"metric": "step_s", "variant": name, "case": f"prefix {lo}-{hi}",
                             "value": percentile(sel, 50), "steps": len(sel), "p10": percentile(sel, 10),
                             "p90": percentile(sel, 90)})
        if prof is None:
            continue
        ratio = [x / s.seconds for s, x in zip(steps, secs)]
        rows.append({"metric": "step_pred_ratio", "variant": name, "value": percentile(ratio, 50),
                     "p10": percentile(ratio, 10), "p90": percentile(ratio, 90), "steps": len(steps)})
        sim = plans[name]
        rows.append({"metric": "policy_prefill_s", "variant": name, "value": sim.long_ttft_s,
                     "chunks": len(sim.long_chunks), "chunk_min": min(sim.long_chunks),
                     "note": "predicted by this profile for the policy it drives, idle server"})
    return rows


def refit(base: Profile, cost: CostModel, logged: Sequence[Sample], outlier_factor: float,
          provenance: dict[str, Any]) -> Profile:
    """A profile fitted from ``base``'s samples plus ``logged`` (see the module docstring)."""
    probes = probe_samples(base, cost)
    res = fit(probes + list(logged), outlier_factor=outlier_factor)
    prov = {**provenance, "base": {k: base.provenance.get(k) for k in ("how", "date", "max_tokens", "chunks")},
            "not_measured": [k for k, v in res.coefficients.items() if v is None]}
    prof = Profile.from_fit(base.gpu, res, prov, probes)
    # the logged steps are many (1,493 for one 1M prompt) and rebuilt from the committed log: summarised here
    tags = {s.source for s in logged}
    pv = dict(prof.provenance)
    errs = [r for s, r in res.residuals if s in tags]
    pv["residuals"] = [r for r in pv["residuals"] if r["sample"] not in tags]
    if errs:
        pv["log_residuals"] = {"steps": len(errs), **{f"p{q}": round(percentile(errs, q), 4) for q in (10, 50, 90)},
                               "max_abs": round(max(map(abs, errs)), 4)}
    return Profile(prof.gpu, prof.coefficients, pv)


def _named(specs: Sequence[str]) -> dict[str, tuple[str, Profile]]:
    out = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise CommandError(f"--profile {spec!r}: expected NAME=PATH")
        out[name] = (path, Profile.load(path))
    return out


def _run(ns: argparse.Namespace, argv: list[str]) -> int:
    from .load_cli import cost_model_for
    from .results import Results, command_line

    named = _named(ns.profile)
    if bool(ns.refit) != bool(ns.refit_base):
        raise CommandError("--refit and --refit-base go together")
    if ns.refit_base and ns.refit_base not in named:
        raise CommandError(f"--refit-base {ns.refit_base!r} is none of the --profile names {sorted(named)}")
    cost = cost_model_for(ns.model_dir)
    steps = alone_steps(parse_prefill_lines(read_log(ns.log)), ns.min_prompt)
    samples = step_samples(steps, cost, tag=Path(ns.log).name)
    profiles = {k: p for k, (_, p) in named.items()}
    if ns.refit:
        profiles["refit"] = refit(profiles[ns.refit_base], cost, samples, ns.outlier_factor, {
            "how": "sgl_qwen1m bench profile-check --refit: the base profile's samples + the server log's alone "
                   "prefill steps, relative least squares, outliers left out",
            "log": Path(ns.log).name, "base_profile": named[ns.refit_base][0], "model_dir": ns.model_dir,
            "outlier_factor": ns.outlier_factor, "date": time.strftime("%F"), "caveats": ns.caveat})
        profiles["refit"].save(ns.refit)
    steps, samples = longest_prompt(steps, samples)
    prompt = steps[0].prompt
    plans = idle_plans(cost, profiles, prompt, ns.chunk)
    rows = check_rows(steps, samples, profiles, plans)
    gpu = next(iter(profiles.values())).gpu
    res = Results.open(ns.out, command=command_line(argv), gpu=gpu)
    extra = {"kv_dtype": ns.kv_dtype} if ns.kv_dtype else {}
    for r in rows:
        r = dict(r)
        res.upsert(r.pop("metric"), ns.backend, prompt, r.pop("value"), save=False, **extra, **r)
    res.save()
    print(json.dumps([r for r in rows if r["metric"] != "step_s"], indent=1))
    if ns.plot:
        from .profile_check_plot import plot_check

        plot_check(steps, samples, profiles, plans, Path(ns.out).with_suffix(".png"))
    return 0
