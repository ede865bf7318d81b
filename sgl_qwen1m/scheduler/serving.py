"""The scheduler inside a server: its settings (environment of the server process), the step-time profile of this
GPU, the cost model of the served model, and one plan per SGLang scheduling pass. Plain Python; the SGLang glue that
calls it is ``sgl_qwen1m/adapter/scheduler_hook.py`` (design and status: ``docs/scheduler.md``).

=============================  ===================================================================================
``QWEN1M_SCHEDULER``           ``1``: on. ``0`` or unset: off, SGLang's own scheduling unchanged (and qwen1m keeps
                               ``--enable-mixed-chunk`` off). Anything else stops the launch.
``QWEN1M_ITL_TARGET_MS``       inter-token-latency goal, 10 to 600000 ms (default 1000); step target 0.8 x goal
``QWEN1M_SCHEDULER_PROFILE``   a profile JSON used instead of the stored one for this GPU (``profiles/<gpu>.json``)
=============================  ===================================================================================

The launch check (the plugin's ServerArgs hook) reads them with :meth:`SchedulerSettings.from_env`, so a bad value
stops the launch with its message before any weight loads; each scheduler process reads them again.

The planner also measures the steps it plans (:class:`PassPlanner`): when two passes in a row carry the same partially
prefilled request, the loop was busy between them, so the time between them is a step of the engine. The ratio of that
time to the profile's prediction of the planned step (per-step log ratio clamped to 4x either way, exponential moving
average, weight 0.2) scales every later prediction, and a line is logged every 64 measured steps. The first GPU run
(H100, 2026-12-08) had a profile 1.75x too high at 1M. A scale corrects the magnitude of such an error, not the mix of
coefficients: replayed on CPU it shortened that 1M prefill (65.1 s vs 69.9 s) but steps still reached 0.93 s against
the 0.8 s target (``tests/test_scheduler_steplog.py``); a refit (``bench profile-check --refit``) fixes the mix.

One SGLang scheduling pass (``PrefillAdder``) has two rules the policy's plan must also obey (:func:`plan_pass`):

* at most one request leaves the pass partially prefilled (SGLang tracks one ``chunked_req``);
* the request carried over from the previous pass (earlier chunks ran) gets a chunk in every pass until it is done:
  SGLang holds its KV and counts one chunk in flight for it per pass. When the policy gives it nothing, it gets
  ``min_progress_tokens``.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

from sgl_qwen1m.config import SPARSE_BLOCK, DCAConfig, sparse_budgets_from_hf
from sgl_qwen1m.sizing import ModelShape

from .cost import CostModel, PrefillPiece, Step
from .policy import ITL_ENV, PolicyConfig, StepPolicy, Waiting, parse_itl_target_ms
from .profile import Profile
from .simulate import plan_summary

__all__ = ["SCHEDULER_ENV", "PROFILE_ENV", "PROFILE_COMMAND", "ProfileUnavailable", "SchedulerSettings",
           "cost_model_from_hf", "build_policy", "plan_pass", "PassPlanner"]

SCHEDULER_ENV = "QWEN1M_SCHEDULER"
PROFILE_ENV = "QWEN1M_SCHEDULER_PROFILE"
PROFILE_COMMAND = "python -m sgl_qwen1m bench profile"
_LOGGED_MAX = 4096  # long requests whose plan line was logged, remembered (oldest forgotten first)


class ProfileUnavailable(LookupError):
    """No step-time profile for this GPU: the scheduler stays off. The message says how to make one."""


@dataclass(frozen=True)
class SchedulerSettings:
    """The three settings of the module docstring, validated."""

    enabled: bool = False
    itl_target_ms: float = PolicyConfig.itl_target_ms
    profile_path: Optional[Path] = None

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> "SchedulerSettings":
        """Read and validate; ValueError naming the variable, its value and what is allowed. An explicit profile
        file is loaded here (when the scheduler is on) so a missing or broken one fails the launch."""
        env = os.environ if env is None else env
        switch = env.get(SCHEDULER_ENV, "").strip()
        if switch not in ("", "0", "1"):
            raise ValueError(f"{SCHEDULER_ENV}={switch!r} is not allowed: 1 turns the qwen1m chunked-prefill "
                             "scheduler on; 0 or unset keeps SGLang's own scheduling")
        raw_itl = env.get(ITL_ENV, "").strip()
        itl = parse_itl_target_ms(raw_itl) if raw_itl else PolicyConfig.itl_target_ms
        path = env.get(PROFILE_ENV, "").strip()
        settings = cls(switch == "1", itl, Path(path) if path else None)
        if settings.enabled and settings.profile_path is not None:
            settings._explicit_profile()
        return settings

    def _explicit_profile(self) -> Profile:
        where = f"{PROFILE_ENV}={str(self.profile_path)!r}"
        try:
            return Profile.load(self.profile_path)  # type: ignore[arg-type]
        except FileNotFoundError:
            raise ValueError(f"{where}: no such file (write one with `{PROFILE_COMMAND} --out <json>` on this GPU, "
                             f"or unset {PROFILE_ENV} to use the stored profile of the GPU)") from None
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{where} is not a step-time profile JSON ({e})") from None

    def profile(self, gpu: Optional[str], directory: Union[str, Path, None] = None) -> Profile:
        """The explicit profile, else the stored one of ``gpu`` (the name CUDA reports; None: no CUDA device).
        ProfileUnavailable when there is none; its message names ``python -m sgl_qwen1m bench profile``."""
        if self.profile_path is not None:
            return self._explicit_profile()
        off = "qwen1m scheduler: off, SGLang's own scheduling is kept"
        if not gpu:
            raise ProfileUnavailable(f"{off}: no CUDA device, so no step-time profile to plan with (measure one "
                                     f"with `{PROFILE_COMMAND} --out <json>` on the GPU and set {PROFILE_ENV})")
        try:
            return Profile.for_gpu(gpu, directory)
        except FileNotFoundError as e:
            raise ProfileUnavailable(f"{off}: {e} (or set {PROFILE_ENV} to such a file)") from None


def cost_model_from_hf(hf: Mapping[str, Any], kv_dtype_bytes: int = 2) -> CostModel:
    """Cost model of the served model from its HF config dict (SGLang has put ``sparse_attention_config.json``
    into ``dual_chunk_attention_config``). Sparse only where the backend runs it: budgets present and the DCA chunk
    a multiple of the sparse tile (``adapter/backend.py:_make_sparse``)."""
    dca = DCAConfig.from_hf_config(hf)
    budgets = sparse_budgets_from_hf(hf, dca)
    if dca is not None and dca.chunk_len % SPARSE_BLOCK:
        budgets = None
    kw: dict[str, Any] = {"kv_dtype_bytes": kv_dtype_bytes, "dca_chunk_len": dca.chunk_len if dca else None}
    if dca is not None:
        kw["sparse_threshold"] = dca.sparse_attention_threshold
    return CostModel.from_sparse_budgets(ModelShape.from_config(hf), budgets, **kw)


def build_policy(settings: SchedulerSettings, hf: Mapping[str, Any], profile: Profile, max_step_tokens: int,
                 kv_dtype_bytes: int = 2) -> StepPolicy:
    """The server's policy; tokens per step capped by the server's ``--chunked-prefill-size`` (``max_step_tokens``).
    ValueError when the profile lacks a coefficient this model's steps need (checked on a probe step: decode rows, a
    short dense prompt and a chunk deep into a 1M-token prompt)."""
    policy = StepPolicy(cost_model_from_hf(hf, kv_dtype_bytes), profile,
                        PolicyConfig(itl_target_ms=settings.itl_target_ms, max_step_tokens=max_step_tokens))
    big = 1 << 20
    policy.plan_step([4096], [Waiting("probe-short", 2048, 0, 0.0), Waiting("probe-long", big, big - 65536, 1.0)])
    return policy


def plan_pass(policy: StepPolicy, decode_lens: Sequence[int], waiting: Sequence[Waiting],
              carried: Optional[str] = None) -> dict[str, int]:
    """``{rid: prefill tokens}`` for one SGLang pass: the policy's plan under the two rules of the module docstring.

    ``carried``: rid of the request whose earlier chunks ran (it must be in ``waiting``; give it the earliest
    ``arrival_s`` so the policy puts it first among prompts of its size). A request the policy would leave partial
    while ``carried`` continues is dropped from this pass and the rest re-planned without it."""
    rem = {w.rid: w.remaining for w in waiting}
    if carried is not None and carried not in rem:
        raise ValueError(f"carried request {carried!r} is not among the waiting prompts")
    tokens = {p.rid: p.extend for p in policy.plan_step(decode_lens, waiting).prefill}
    if carried is None:
        return tokens
    partial = {rid for rid, c in tokens.items() if rid != carried and c < rem[rid]}
    if partial and tokens.get(carried, 0) < rem[carried]:
        keep = [w for w in waiting if w.rid == carried or (w.rid in tokens and w.rid not in partial)]
        tokens = {p.rid: p.extend for p in policy.plan_step(decode_lens, keep).prefill}
    if not tokens.get(carried):
        tokens[carried] = min(policy.cfg.min_progress_tokens, rem[carried])
    return tokens


class PassPlanner:
    """One per scheduler process: plans passes, says which long requests' plan lines are still to be logged, and
    corrects the policy's predictions by the step times it measures (module docstring; ``adapt=False``: never).
    ``clock``: seconds, monotonic (``time.perf_counter``)."""

    ALPHA = 0.2  # weight of the newest measured step in the moving average of log(measured / predicted)
    MAX_RATIO = 4.0  # one step moves the average by at most log(4) * ALPHA
    LOG_EVERY = 64  # measured steps between two calibration lines

    def __init__(self, policy: StepPolicy, clock: Any = time.perf_counter, adapt: bool = True) -> None:
        self.policy = copy.copy(policy)  # its own: the measured scale must not leak into the caller's policy
        self._logged: "OrderedDict[str, None]" = OrderedDict()
        self._clock, self.adapt = clock, adapt
        self._prev: Optional[tuple[float, float, str]] = None  # (plan time, profile's seconds, the partial request)
        self._log_ratio = 0.0
        self.measured_steps = 0

    def plan(self, decode_lens: Sequence[int], waiting: Sequence[Waiting],
             carried: Optional[str] = None) -> tuple[dict[str, int], list[str]]:
        """(:func:`plan_pass`, one :func:`simulate.plan_summary` line per long request planned for the first time,
        and a calibration line every ``LOG_EVERY`` measured steps)."""
        now = self._clock()
        lines = []
        if self._prev is not None and carried == self._prev[2] and self._prev[1] > 0:
            lines += self._measured((now - self._prev[0]) / self._prev[1])
        tokens = plan_pass(self.policy, decode_lens, waiting, carried)
        for w in waiting:
            if tokens.get(w.rid) and w.prompt_len > self.policy.cfg.long_prompt_tokens and w.rid not in self._logged:
                self._logged[w.rid] = None
                if len(self._logged) > _LOGGED_MAX:
                    self._logged.popitem(last=False)
                lines.append(plan_summary(self.policy, w.rid, w.prompt_len, decode_lens))
        planned = [w for w in waiting if tokens.get(w.rid)]
        partial = [w.rid for w in planned if tokens[w.rid] < w.remaining]
        self._prev = None
        if self.adapt and partial:  # the profile's own time of this step, for the next pass to measure against
            step = Step(tuple(PrefillPiece(w.rid, w.done, tokens[w.rid]) for w in planned), tuple(decode_lens))
            self._prev = (now, self.policy.profile.predict_s(self.policy.cost.step_work(step)), partial[0])
        return tokens, lines

    @property
    def scale(self) -> float:
        """Measured / predicted step time (moving average; 1.0 until a step is measured)."""
        return math.exp(self._log_ratio)

    def _measured(self, ratio: float) -> list[str]:
        lim = math.log(self.MAX_RATIO)
        x = min(lim, max(-lim, math.log(max(ratio, 1e-9))))
        self._log_ratio += self.ALPHA * (x - self._log_ratio)
        self.policy.scale = self.scale
        self.measured_steps += 1
        if self.measured_steps % self.LOG_EVERY:
            return []
        return [f"qwen1m scheduler: measured / predicted step time {self.scale:.3f} (moving average over "
                f"{self.measured_steps} measured steps; predictions are scaled by it)"]
