"""SGLang wiring of the chunked-prefill scheduler (``QWEN1M_SCHEDULER=1``; design and status: ``docs/scheduler.md``).

Three AROUND hooks, installed by ``plugin.register`` only when the scheduler is switched on (targets, signatures and
versions: ``compat`` row ``scheduler_hook``; the same in SGLang 0.5.17 and 0.5.23):

* ``Scheduler._get_new_batch_prefill_raw`` (0.5.17 ``scheduler.py:3093``): one call is one scheduling pass. It marks
  the pass with this scheduler (waiting queue, carried ``chunked_req``, mixed chunk) for the two adder hooks. The
  scheduler's planner is built on its first pass (:func:`_make_planner`); a scheduler that cannot have one (another
  attention backend, no profile for this GPU, chunked prefill off) gets none and every hook calls straight through.
* ``PrefillAdder.add_chunked_req`` / ``PrefillAdder.add_one_req`` (``schedule_policy.py:868`` / ``:1059``): the first
  call of a marked pass plans it (``serving.PassPlanner``: ``StepPolicy.plan_step`` plus SGLang's one-chunked-request
  rules). Each call then runs SGLang's own method with ``rem_chunk_tokens`` lowered to the request's planned tokens,
  and afterwards restores the pass budget minus what SGLang charged. Every other SGLang check (memory, request
  slots, pages, the prefill delayer) still applies: the hook only ever lowers the chunk budget.

How short prompts go ahead of a long request's remaining chunks: by budget, not by position. SGLang offers the
carried request first (``scheduler.py:3177-3179``); its chunk is held to what the policy left after the short
prompts' whole lengths, so the short prompts fit in the same pass when ``add_one_req`` offers them. Parking the
long request for a pass instead (returning it unadded, the design's first idea) is unsafe in 0.5.17: the scheduler
counts a chunk in flight for ``chunked_req`` in every pass that builds a batch (``scheduler.py:3285-3286``) and only
a batch holding the request counts it down (``batch_result_processor.py:307``), so its prefill would never finish.
A request the plan leaves out is skipped (``CONTINUE`` without adding it, so later planned ones are still reached);
once every planned request has been offered, the pass stops (``OTHER``), as SGLang stops on a spent budget.
Decode rows ride along through SGLang's ``--enable-mixed-chunk`` (the ServerArgs hook turns it on with the scheduler).

Every decision is a pure function of the scheduler's state, so tensor-parallel ranks decide alike. Nothing happens at
import; the policy modules are imported by the first scheduling pass.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any, Optional

logger = logging.getLogger(__name__)

# What the hooks read from SGLang objects besides the wrapped methods' arguments (tests/test_conformance.py checks
# that each still exists upstream): {(file under sglang/, class): names}.
UPSTREAM_NAMES = {
    ("srt/managers/scheduler.py", "Scheduler"): (
        "server_args", "model_config", "chunked_prefill_size", "is_mixed_chunk", "waiting_queue", "chunked_req"),
    ("srt/managers/schedule_policy.py", "PrefillAdder"): (
        "rem_chunk_tokens", "running_batch", "can_run_list", "new_chunked_req", "budget_state"),
    ("srt/managers/schedule_policy.py", "AddReqResult"): ("CONTINUE", "OTHER"),
    ("srt/managers/schedule_batch.py", "Req"): ("rid", "seqlen"),  # + the cached prefix: compat row req_prefix_len
    ("srt/managers/schedule_batch.py", "ScheduleBatch"): ("reqs",),
    ("srt/configs/model_config.py", "ModelConfig"): ("hf_config",),
}

_planners: "weakref.WeakKeyDictionary[Any, Optional[_Planner]]" = weakref.WeakKeyDictionary()
_current: Optional["_Pass"] = None  # the pass being scheduled (SGLang's scheduler loop is one thread)


class _Planner:
    """A scheduler's planner: ``serving.PassPlanner`` and how this SGLang reports a request's cached prefix."""

    def __init__(self, planner: Any, prefix_len: Any) -> None:
        self.planner = planner
        self.prefix_len = prefix_len


class _Pass:
    """One scheduling pass of one scheduler; planned on the first adder call."""

    def __init__(self, planner: _Planner, scheduler: Any) -> None:
        self.planner = planner
        self.scheduler = scheduler
        self.carried = scheduler.chunked_req  # continues from the previous pass (or None)
        self.carried_continues = False  # set once SGLang has given it a chunk that is not its last
        self.adder: Any = None
        self.off = False  # planning failed: SGLang's own scheduling for the rest of the pass
        self.tokens: Optional[dict[str, int]] = None
        self.pending: set[str] = set()  # planned requests add_one_req has not been offered yet


def scheduler_pass_around(original, scheduler, *args, **kwargs):
    """AROUND ``Scheduler._get_new_batch_prefill_raw``: mark the pass for the adder hooks (see the module docstring)."""
    global _current
    planner = _planner_for(scheduler)
    if planner is None:
        return original(scheduler, *args, **kwargs)
    outer, _current = _current, _Pass(planner, scheduler)
    try:
        return original(scheduler, *args, **kwargs)
    finally:
        _current = outer


def add_chunked_req_around(original, adder, req, *args, **kwargs):
    """AROUND ``PrefillAdder.add_chunked_req``: the carried request's chunk, at most its planned tokens."""
    p = _pass_of(adder)
    if p is None or req is not p.carried:
        return original(adder, req, *args, **kwargs)
    result = _lowered(original, adder, max(1, p.tokens.get(req.rid, 0)), req, *args, **kwargs)
    p.carried_continues = result is not None
    return result


def add_one_req_around(original, adder, req, *args, **kwargs):
    """AROUND ``PrefillAdder.add_one_req``: admit ``req`` with at most its planned tokens, or skip it."""
    p = _pass_of(adder)
    if p is None:
        return original(adder, req, *args, **kwargs)
    from sglang.srt.managers.schedule_policy import AddReqResult

    tokens = p.tokens.get(req.rid, 0)
    p.pending.discard(req.rid)
    cap = tokens if adder.rem_chunk_tokens is None else min(tokens, adder.rem_chunk_tokens)
    chunk_taken = p.carried_continues or adder.new_chunked_req is not None
    if cap < 1 or (chunk_taken and cap < req.seqlen - p.planner.prefix_len(req)):  # not now, or a 2nd partial one
        return AddReqResult.CONTINUE if p.pending else AddReqResult.OTHER
    offered = len(adder.can_run_list)
    result = _lowered(original, adder, tokens, req, *args, **kwargs)
    if len(adder.can_run_list) > offered:  # admitted: SGLang judged the rest of the pass on the lowered budget
        result = adder.budget_state()
        if result == AddReqResult.CONTINUE and not p.pending:
            result = AddReqResult.OTHER
    return result


def _lowered(original, adder, tokens: int, *args, **kwargs):
    """Run ``original`` with ``adder.rem_chunk_tokens`` lowered to ``tokens``; then restore the pass budget less
    what SGLang charged for it."""
    budget = adder.rem_chunk_tokens
    if budget is None:
        return original(adder, *args, **kwargs)
    lowered = min(budget, tokens)
    adder.rem_chunk_tokens = lowered
    try:
        return original(adder, *args, **kwargs)
    finally:
        adder.rem_chunk_tokens = budget - (lowered - adder.rem_chunk_tokens)


def _pass_of(adder) -> Optional[_Pass]:
    """The marked pass ``adder`` belongs to (the first adder built in it), planned; None outside one."""
    p = _current
    if p is None or p.off:
        return None
    if p.adder is None:
        p.adder = adder
    elif p.adder is not adder:
        return None
    if p.tokens is None:
        try:
            _plan(p)
        except Exception:  # noqa: BLE001 - a planning bug must not take the server down with it
            logger.exception("qwen1m scheduler: planning a pass failed; SGLang's own scheduling from now on")
            _planners[p.scheduler] = None
            p.off = True
            return None
    return p


def _plan(p: _Pass) -> None:
    from sgl_qwen1m.scheduler.policy import Waiting

    def waiting(req, arrival: float) -> Waiting:
        total = req.seqlen
        return Waiting(req.rid, total, min(max(p.planner.prefix_len(req), 0), total - 1), arrival)

    s, running = p.scheduler, p.adder.running_batch
    decode = [r.seqlen for r in running.reqs] if s.is_mixed_chunk and running is not None else []
    queue = [waiting(p.carried, -1.0)] if p.carried is not None else []
    queue += [waiting(r, float(i)) for i, r in enumerate(s.waiting_queue)]
    p.tokens, lines = p.planner.planner.plan(decode, queue, p.carried.rid if p.carried is not None else None)
    p.pending = {rid for rid in p.tokens if p.carried is None or rid != p.carried.rid}
    for line in lines:
        logger.info("%s", line)


def _planner_for(scheduler) -> Optional[_Planner]:
    if scheduler not in _planners:
        _planners[scheduler] = _make_planner(scheduler)
    return _planners[scheduler]


def _gpu_name() -> Optional[str]:
    """The name CUDA reports for this process's GPU; None without CUDA (the scheduler process has it initialised)."""
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else None


def _make_planner(scheduler) -> Optional[_Planner]:
    """This scheduler's planner, or None (logged, once per scheduler, unless the server is not a qwen1m one)."""
    from sgl_qwen1m.adapter import compat
    from sgl_qwen1m.adapter.hooks import serves_qwen1m
    from sgl_qwen1m.scheduler.serving import PassPlanner, ProfileUnavailable, SchedulerSettings, build_policy
    from sgl_qwen1m.validation import as_mapping

    view = compat.resolved_view(scheduler.server_args)
    if not serves_qwen1m(view):
        return None  # the plugin's guard: only the qwen1m backend is scheduled by us
    settings = SchedulerSettings.from_env()
    if not settings.enabled:
        return None
    chunk = scheduler.chunked_prefill_size
    if not chunk or chunk <= 0:
        logger.warning("qwen1m scheduler: off, SGLang's own scheduling is kept: chunked prefill is disabled "
                       "(--chunked-prefill-size %s); the scheduler sizes chunks, so it needs one", chunk)
        return None
    kv_bytes = 1 if "fp8" in str(getattr(view, "kv_cache_dtype", "")) else 2
    try:
        profile = settings.profile(_gpu_name())
        policy = build_policy(settings, as_mapping(scheduler.model_config.hf_config), profile, chunk, kv_bytes)
    except (ProfileUnavailable, ValueError) as e:
        logger.warning("%s", e)
        return None
    if not scheduler.is_mixed_chunk:
        logger.warning("qwen1m scheduler: --enable-mixed-chunk is off here, so decode streams wait while a long "
                       "prompt prefills (the plan assumes they ride along)")
    logger.info("qwen1m scheduler: on (profile %r, inter-token goal %g ms, step target %.0f ms, <= %d tokens per "
                "step)", profile.gpu, settings.itl_target_ms, policy.cfg.step_target_s * 1e3, policy.max_step_tokens)
    return _Planner(PassPlanner(policy), compat.req_prefix_len())
