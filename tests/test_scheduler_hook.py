"""The chunked-prefill scheduler's SGLang wiring (``adapter/scheduler_hook.py``) against the installed real SGLang
(0.5.17 or 0.5.23), on CPU.

Real: ``PrefillAdder`` and ``AddReqResult``, ``Req`` with ``SamplingParams``, the running ``ScheduleBatch``,
``RadixCache`` over a ``ReqToTokenPool`` and a ``TokenToKVPoolAllocator`` on CPU tensors, ``ServerArgs`` and
``ModelConfig`` of the 7B-1M shape (its real sparse budgets) from launch_server's argument path, published as the
process's runtime config (the adder reads it), the plugin's registration through ``HookRegistry``, the committed
H100 profile. Stand-ins, each for something that needs a GPU:

* the KV buffers (the allocator gets ``kvcache=None``; it only hands out indices);
* the ``Scheduler`` (its ``__init__`` builds the model runner): ``_Scheduler`` carries the attributes the hook
  reads, and ``_run_pass`` makes the adder calls of ``Scheduler._get_new_batch_prefill_raw`` in its order (0.5.17
  ``scheduler.py:3159-3236``; 0.5.23 ``4157-4300`` also checks the budget before each request), inside the real
  ``scheduler_pass_around``;
* between passes the batch writes a chunk's KV and ``stash_chunked_request`` records the cached prefix on the
  request: ``_carried`` records it directly;
* the GPU's name, where a test needs one that has no profile.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from array import array
from pathlib import Path

import pytest
import torch

from sgl_qwen1m.adapter import compat, conformance, hooks, plugin, scheduler_hook
from sgl_qwen1m.scheduler.policy import ITL_ENV, Waiting
from sgl_qwen1m.scheduler.profile import Profile
from sgl_qwen1m.scheduler.serving import (PROFILE_COMMAND, PROFILE_ENV, SCHEDULER_ENV, PassPlanner,
                                          ProfileUnavailable, SchedulerSettings, build_policy, plan_pass)
from sgl_qwen1m.validation import as_mapping

ROOT = Path(__file__).resolve().parents[1]
SHAPE = ROOT / "benchmarks" / "models" / "qwen2.5-7b-1m-shape"
H100 = ROOT / "sgl_qwen1m" / "scheduler" / "profiles" / "h100.json"
CHUNK, MAX_PREFILL = 16384, 16384  # --chunked-prefill-size, --max-prefill-tokens
LONG, DONE, CHAT, DECODES = 1_000_000, 600_000, 2048, 8
ENV_NAMES = (SCHEDULER_ENV, PROFILE_ENV, ITL_ENV)


# --- plain Python: settings, profile lookup, the pass rules ---------------------------------------------------


@pytest.mark.parametrize("env, message", [
    ({SCHEDULER_ENV: "yes"}, "QWEN1M_SCHEDULER='yes' is not allowed: 1 turns the qwen1m chunked-prefill scheduler "
                             "on; 0 or unset keeps SGLang's own scheduling"),
    ({ITL_ENV: "fast"}, "QWEN1M_ITL_TARGET_MS='fast' is not a number of milliseconds (allowed: 10 to 600000 "
                        "milliseconds, default 1000)"),
    ({SCHEDULER_ENV: "1", ITL_ENV: "5"}, "QWEN1M_ITL_TARGET_MS='5' is out of range (allowed: 10 to 600000"),
    ({ITL_ENV: "inf"}, "QWEN1M_ITL_TARGET_MS='inf' is out of range"),
    ({SCHEDULER_ENV: "1", PROFILE_ENV: "/nonexistent/h200.json"},
     "QWEN1M_SCHEDULER_PROFILE='/nonexistent/h200.json': no such file (write one with `python -m sgl_qwen1m bench "
     "profile --out <json>`"),
])
def test_settings_errors_name_the_value_and_what_is_allowed(env, message):
    with pytest.raises(ValueError) as err:
        SchedulerSettings.from_env(env)
    assert message in str(err.value)


def test_settings_defaults_and_values(tmp_path):
    assert SchedulerSettings.from_env({}) == SchedulerSettings(False, 1000.0, None)
    assert SchedulerSettings.from_env({SCHEDULER_ENV: "0", ITL_ENV: " 250 "}) == SchedulerSettings(False, 250.0)
    on = SchedulerSettings.from_env({SCHEDULER_ENV: "1", PROFILE_ENV: str(H100)})
    assert on.enabled and on.profile("NVIDIA B200") == Profile.load(H100)  # the explicit file wins
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="is not a step-time profile JSON .*lacks 'gpu'"):
        SchedulerSettings.from_env({SCHEDULER_ENV: "1", PROFILE_ENV: str(tmp_path / "bad.json")})
    assert SchedulerSettings.from_env({PROFILE_ENV: str(tmp_path / "bad.json")}).profile_path  # off: not read


@pytest.mark.parametrize("gpu, says", [(None, "no CUDA device"), ("NVIDIA B200", "no step-time profile for GPU "
                                                                                "'NVIDIA B200' (b200.json)")])
def test_no_profile_for_the_gpu_says_how_to_make_one(gpu, says):
    with pytest.raises(ProfileUnavailable) as err:
        SchedulerSettings(True).profile(gpu)
    assert says in str(err.value) and PROFILE_COMMAND in str(err.value) and "scheduler: off" in str(err.value)
    assert SchedulerSettings(True).profile("NVIDIA H100 80GB HBM3") == Profile.load(H100)


@pytest.fixture(scope="module")
def policy():
    hf = json.loads((SHAPE / "config.json").read_text())
    hf["dual_chunk_attention_config"]["sparse_attention_config"] = json.loads(
        (SHAPE / "sparse_attention_config.json").read_text())  # as SGLang injects it
    hf["dual_chunk_attention_config"]["sparse_attention_enabled"] = True
    return build_policy(SchedulerSettings(True), hf, Profile.load(H100), CHUNK)


def _queue(carried_done=DONE, chats=2):
    return [Waiting("long", LONG, carried_done, -1.0)] + [Waiting(f"chat{i}", CHAT, 0, float(i)) for i in range(chats)]


def test_pass_plan_puts_whole_chats_before_the_carried_chunk(policy):
    tokens = plan_pass(policy, [2048] * DECODES, _queue(), carried="long")
    assert tokens["chat0"] == tokens["chat1"] == CHAT
    assert 0 < tokens["long"] < CHUNK - DECODES - 2 * CHAT  # the step-time target, not the token budget, binds


def test_pass_plan_never_leaves_a_second_request_partial_nor_the_carried_one_out(policy):
    chats = [Waiting(f"chat{i}", 6000, 0, float(i)) for i in range(3)]  # 18000 > one step
    free = plan_pass(policy, [], [Waiting("long", LONG, 0, 5.0)] + chats)  # nothing carried: a chat may be partial
    assert free["chat0"] == free["chat1"] == 6000 and 0 < free["chat2"] < 6000 and "long" not in free
    held = plan_pass(policy, [], [Waiting("long", LONG, DONE, -1.0)] + chats, carried="long")
    assert held["chat0"] == held["chat1"] == 6000 and "chat2" not in held and held["long"] >= 1
    starved = plan_pass(policy, [], [Waiting("long", LONG, DONE, -1.0)]
                        + [Waiting(f"c{i}", 4096, 0, float(i)) for i in range(4)], carried="long")
    assert starved["long"] == policy.cfg.min_progress_tokens  # the chats fill the step; it still progresses
    with pytest.raises(ValueError, match="carried request 'x'"):
        plan_pass(policy, [], chats, carried="x")


def test_planner_logs_each_long_request_once(policy):
    planner = PassPlanner(policy)
    _, lines = planner.plan([2048] * DECODES, _queue(), carried="long")
    assert len(lines) == 1 and lines[0].startswith("qwen1m scheduler: request long: 1000000 tokens (sparse) in ")
    assert planner.plan([2048] * DECODES, _queue(DONE + 4096), carried="long")[1] == []


_IMPORTS = """
import json, sys
import sgl_qwen1m.adapter.plugin
before = set(sys.modules)
import sgl_qwen1m.adapter.scheduler_hook
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def test_hook_module_imports_nothing_beyond_the_adapter():
    out = subprocess.run([sys.executable, "-c", _IMPORTS], capture_output=True, text=True, check=True, cwd=ROOT)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["sgl_qwen1m.adapter.scheduler_hook"]


def test_where_no_row_covers_the_sglang_the_scheduler_is_not_available(monkeypatch):
    assert [fn for _, _, fn in compat.scheduler_hook_plan("0.5.17")] == [
        "scheduler_pass_around", "add_chunked_req_around", "add_one_req_around"]
    assert compat.scheduler_hook_plan("0.5.23") == compat.scheduler_hook_plan("0.5.17")
    assert compat.scheduler_hook_plan("0.5.19") == []  # between the rows: no known prefix field
    monkeypatch.setenv(SCHEDULER_ENV, "1")
    log, logger = _Log(), logging.getLogger(hooks.__name__)
    logger.addHandler(log)
    try:
        assert hooks.mixed_chunk_for_qwen1m(True, version="0.5.19") is False
        plugin._register_scheduler_hooks("0.5.19")  # nothing registered, nothing of SGLang imported
    finally:
        logger.removeHandler(log)
    said = [m for _, m in log.records if "not available" in m]
    assert len(said) == 2 and all("scheduler hook: not available on this version (SGLang 0.5.19)" in m
                                  and "SGLang's own scheduling is kept" in m for m in said)


# --- real SGLang -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(sglang):
    """(ServerArgs, ModelConfig) of a qwen1m server for the 7B-1M shape, published as this process's runtime
    config while the module runs."""
    from sglang.srt import runtime_context
    from sglang.srt.plugins import load_plugins
    from sglang.srt.server_args import prepare_server_args

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        for name in ENV_NAMES:
            mp.delenv(name, raising=False)
        # Resolving arguments for a model in SGLang's CP_V2_DEFAULT_MODEL_CLASSES (e.g. the Qwen3-MoE shapes other
        # tests resolve) sets this in os.environ for the rest of the process (0.5.17 server_args.py:6301-6302); the
        # adder would then ask the (never built) context-parallel group for its size.
        mp.delenv("SGLANG_ENABLE_CP_V2", raising=False)
        load_plugins()
        args = prepare_server_args(["--model-path", str(SHAPE), "--device", "cuda", "--attention-backend", "qwen1m",
                                    "--chunked-prefill-size", str(CHUNK)])
        ranks = getattr(runtime_context, "SpawnRanks", None)  # 0.5.23 asks where this process sits
        runtime_context.publish(args, role="test", **({"ranks": ranks(world_rank=0)} if ranks else {}))
        yield args, compat.model_config(args)
        runtime_context.reset_context()


@pytest.fixture(scope="module")
def adder_cls(served):
    """PrefillAdder with the scheduler hooks installed the way a server installs them (QWEN1M_SCHEDULER=1)."""
    from sglang.srt.managers.schedule_policy import PrefillAdder
    from sglang.srt.managers.scheduler import Scheduler
    from sglang.srt.plugins.hook_registry import HookRegistry

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SCHEDULER_ENV, "1")
        plugin.register()
        HookRegistry.apply_hooks()
    for owner, name, fn in ((Scheduler, "_get_new_batch_prefill_raw", scheduler_hook.scheduler_pass_around),
                            (PrefillAdder, "add_chunked_req", scheduler_hook.add_chunked_req_around),
                            (PrefillAdder, "add_one_req", scheduler_hook.add_one_req_around)):
        assert hasattr(getattr(owner, name), "__wrapped__"), name
        assert any(h is fn for _, h, _ in HookRegistry._hooks[f"{owner.__module__}.{owner.__name__}.{name}"])
    return PrefillAdder


@pytest.fixture
def env(monkeypatch):
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class _Log(logging.Handler):
    """What the hook logs (SGLang's logging set-up replaces the root handlers caplog relies on)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.records = []

    def emit(self, record):
        self.records.append((record.levelname, record.getMessage()))


@pytest.fixture
def hook_log():
    logger, handler = logging.getLogger(scheduler_hook.__name__), _Log()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.records
    logger.removeHandler(handler)
    logger.setLevel(level)


class _Scheduler:
    """The Scheduler attributes the hook reads (see the module docstring)."""

    def __init__(self, served, waiting, carried=None, mixed=True):
        self.server_args, self.model_config = served
        self.chunked_prefill_size, self.is_mixed_chunk = CHUNK, mixed
        self.waiting_queue, self.chunked_req = list(waiting), carried


class _World:
    """Fresh pools, requests and a running batch of DECODES decoding chats (2048 tokens of KV each)."""

    def __init__(self, served, adder_cls, carried=True):
        from sglang.srt.managers.schedule_batch import ScheduleBatch
        from sglang.srt.mem_cache.allocator.token import TokenToKVPoolAllocator
        from sglang.srt.mem_cache.cache_init_params import CacheInitParams
        from sglang.srt.mem_cache.memory_pool import ReqToTokenPool
        from sglang.srt.mem_cache.radix_cache import RadixCache

        self.adder_cls = adder_cls
        pool = ReqToTokenPool(64, 4096, "cpu", False)
        self.allocator = TokenToKVPoolAllocator(1 << 21, torch.bfloat16, "cpu", None, False)
        self.tree = RadixCache(CacheInitParams(disable=False, req_to_token_pool=pool,
                                               token_to_kv_pool_allocator=self.allocator, page_size=1))
        decoding = []
        for i in range(DECODES):
            r = _req(f"stream{i}", CHAT - 1, first=3_000_000 + 10_000 * i)
            r.output_ids.append(7)
            decoding.append(r)
        self.running = ScheduleBatch(reqs=decoding, batch_is_full=False)
        self.chats = [_req(f"chat{i}", CHAT, first=2_000_000 + 10_000 * i) for i in range(2)]
        self.long = _req("long", LONG)
        self.carried = self._carry() if carried else None
        self.scheduler = _Scheduler(served, self.chats if carried else [self.long] + self.chats, self.carried)

    def adder(self, rem_chunk, mixed_rows):
        return self.adder_cls(1, self.tree, self.allocator, self.running, 0.7, MAX_PREFILL, rem_chunk, mixed_rows)

    def _carry(self):
        """The long prompt after an earlier pass gave it DONE tokens (SGLang's own admission, nothing marked)."""
        self.long.init_next_round_input(self.tree)
        first = self.adder(DONE, 0)
        first.add_one_req(self.long, has_chunked_req=False, truncation_align_size=None)
        assert first.new_chunked_req is self.long and _extend(self.long) == (0, DONE)
        how, attr = compat.pick("req_prefix_len").value  # what stash_chunked_request records
        setattr(self.long, attr, torch.arange(1, DONE + 1) if how == "len" else DONE)
        return self.long


def _req(rid, n, first=1):
    from sglang.srt.managers.schedule_batch import Req
    from sglang.srt.sampling.sampling_params import SamplingParams

    return Req(rid, "", array("q", range(first, first + n)), SamplingParams(max_new_tokens=64))


def _extend(req):
    """(start, end) of the request's extend in this pass."""
    rng = getattr(req, "extend_range", None)  # 0.5.17
    return (rng.start, rng.end) if rng is not None else (compat.req_prefix_len()(req), req.extend_end)


_CHECK_BUDGET_FIRST = None


def _run_pass(world, raw=False):
    """One scheduling pass through the hook (``raw``: SGLang's own methods, no hook at all); a snapshot of it."""
    global _CHECK_BUDGET_FIRST
    from sglang.srt.managers.schedule_policy import AddReqResult

    if _CHECK_BUDGET_FIRST is None:
        source = (conformance.sglang_root() / "srt/managers/scheduler.py").read_text()
        _CHECK_BUDGET_FIRST = "if adder.budget_state() == AddReqResult.OTHER:" in source
    cls = world.adder_cls
    add_chunked = cls.add_chunked_req.__wrapped__ if raw else cls.add_chunked_req
    add_one = cls.add_one_req.__wrapped__ if raw else cls.add_one_req
    results = []

    def body(s, prefill_delayer_single_pass, running_batch):
        adder = world.adder(s.chunked_prefill_size, len(running_batch.reqs) if s.is_mixed_chunk else 0)
        if s.chunked_req is not None:
            s.chunked_req.init_next_round_input()
            s.chunked_req = add_chunked(adder, s.chunked_req)
        for req in s.waiting_queue:
            if _CHECK_BUDGET_FIRST and adder.budget_state() == AddReqResult.OTHER:
                break
            req.init_next_round_input(world.tree)
            res = add_one(adder, req, has_chunked_req=s.chunked_req is not None, truncation_align_size=None)
            results.append((req.rid, res.name))
            if res != AddReqResult.CONTINUE:
                break
        if adder.new_chunked_req is not None:
            assert s.chunked_req is None
            s.chunked_req = adder.new_chunked_req
        return adder

    s = world.scheduler
    adder = body(s, None, world.running) if raw else scheduler_hook.scheduler_pass_around(body, s, None, world.running)
    scalars = {k: v for k, v in vars(adder).items() if isinstance(v, (bool, int, float, type(None)))}
    return {"results": results, "can_run": [r.rid for r in adder.can_run_list], "extend": {
        r.rid: _extend(r) for r in adder.can_run_list}, "chunked": getattr(s.chunked_req, "rid", None),
        "new_chunked": getattr(adder.new_chunked_req, "rid", None), **scalars}


def _flashinfer_args():
    """ServerArgs of a flashinfer server for the plain 7B shape, resolved as a scheduler process receives them."""
    from sglang.srt.server_args import prepare_server_args

    args = prepare_server_args(["--model-path", str(ROOT / "benchmarks/models/qwen2.5-7b-shape"), "--device", "cuda",
                                "--attention-backend", "flashinfer"])
    if compat.pick("resolved_args").value is not None:
        args.resolve_once()
    return args


@pytest.mark.sglang
@pytest.mark.parametrize("carried", [True, False], ids=["long-carried", "long-new"])
@pytest.mark.parametrize("why_off", ["switched-off", "no-profile", "other-backend"])
def test_hook_off_is_sglangs_own_scheduling(served, adder_cls, env, hook_log, carried, why_off):
    if why_off == "no-profile":
        env.setenv(SCHEDULER_ENV, "1")  # no CUDA here, no QWEN1M_SCHEDULER_PROFILE: the planner stays off
    own = _run_pass(_World(served, adder_cls, carried), raw=True)
    world = _World(served, adder_cls, carried)
    if why_off == "other-backend":
        env.setenv(SCHEDULER_ENV, "1")
        env.setenv(PROFILE_ENV, str(H100))
        world.scheduler.server_args = _flashinfer_args()
    assert _run_pass(world) == own
    assert own["can_run"] == ["long"] and own["extend"]["long"][1] - own["extend"]["long"][0] == CHUNK - DECODES
    assert all(level != "INFO" for level, _ in hook_log)


@pytest.mark.sglang
def test_hook_clamps_the_carried_chunk_and_admits_chats_in_the_same_pass(served, adder_cls, env, hook_log, policy):
    env.setenv(SCHEDULER_ENV, "1")
    env.setenv(PROFILE_ENV, str(H100))
    world = _World(served, adder_cls)
    got = _run_pass(world)
    plan = plan_pass(policy, [CHAT] * DECODES, _queue(), carried="long")
    assert got["can_run"] == ["long", "chat0", "chat1"] and got["results"] == [("chat0", "CONTINUE"),
                                                                                 ("chat1", "OTHER")]
    assert got["extend"] == {"long": (DONE, DONE + plan["long"]), "chat0": (0, CHAT), "chat1": (0, CHAT)}
    assert got["chunked"] == "long" and got["new_chunked"] is None  # the long prompt continues next pass
    assert got["rem_chunk_tokens"] == CHUNK - DECODES - plan["long"] - 2 * CHAT  # SGLang's own accounting
    own = _run_pass(_World(served, adder_cls), raw=True)  # SGLang alone: the chunk takes the pass, chats wait
    assert own["can_run"] == ["long"] and own["extend"]["long"] == (DONE, DONE + CHUNK - DECODES)
    infos = [m for level, m in hook_log if level == "INFO"]
    assert infos[0].startswith("qwen1m scheduler: on (profile 'NVIDIA H100 80GB HBM3', inter-token goal 1000 ms")
    assert infos[1].startswith("qwen1m scheduler: request long: 1000000 tokens (sparse) in ") and len(infos) == 2
    _run_pass(world)  # the next pass: no second plan line for the same request
    assert len([m for level, m in hook_log if level == "INFO"]) == 2


@pytest.mark.sglang
def test_hook_puts_chats_ahead_of_a_new_long_prompt_that_arrived_first(served, adder_cls, env):
    env.setenv(SCHEDULER_ENV, "1")
    env.setenv(PROFILE_ENV, str(H100))
    got = _run_pass(_World(served, adder_cls, carried=False))
    rest = CHUNK - DECODES - 2 * CHAT  # a first chunk at prefix 0 is dense and cheap: the token budget binds
    assert got["can_run"] == ["long", "chat0", "chat1"] and got["extend"]["long"] == (0, rest)
    assert got["new_chunked"] == "long" and got["results"] == [("long", "CONTINUE"), ("chat0", "CONTINUE"),
                                                               ("chat1", "OTHER")]


@pytest.mark.sglang
def test_hook_never_makes_a_second_partial_request(served, adder_cls, env):
    """chat0's cached prefix is gone by the time SGLang offers it (the plan saw 100 tokens left, SGLang finds 2048):
    held to its 100 planned tokens it would become a second chunked request while the long one continues (0.5.17's
    scheduler asserts there is one at most), so it waits for the next pass."""
    env.setenv(SCHEDULER_ENV, "1")
    env.setenv(PROFILE_ENV, str(H100))
    world = _World(served, adder_cls)
    how, attr = compat.pick("req_prefix_len").value
    setattr(world.chats[0], attr, torch.arange(1, CHAT - 99) if how == "len" else CHAT - 100)
    got = _run_pass(world)
    assert got["can_run"] == ["long", "chat1"] and got["chunked"] == "long" and got["new_chunked"] is None
    assert got["results"] == [("chat0", "CONTINUE"), ("chat1", "OTHER")]


@pytest.mark.sglang
@pytest.mark.parametrize("gpu", [None, "NVIDIA B200"])
def test_no_profile_for_the_gpu_keeps_sglangs_scheduling_with_one_warning(served, adder_cls, env, hook_log, gpu):
    env.setenv(SCHEDULER_ENV, "1")
    env.setattr(scheduler_hook, "_gpu_name", lambda: gpu)  # stands in for torch.cuda.get_device_name()
    world = _World(served, adder_cls)
    first, second = _run_pass(world), _run_pass(world)
    assert first["can_run"] == ["long"] and second["can_run"] == ["long"]  # SGLang's own: no chat admitted
    warnings = [m for level, m in hook_log if level == "WARNING"]
    assert len(warnings) == 1 and PROFILE_COMMAND in warnings[0] and "SGLang's own scheduling is kept" in warnings[0]


@pytest.mark.sglang
def test_a_planning_error_falls_back_to_sglangs_scheduling_for_good(served, adder_cls, env, hook_log):
    env.setenv(SCHEDULER_ENV, "1")
    env.setenv(PROFILE_ENV, str(H100))

    def broken(self, *args, **kwargs):  # injected fault: a bug in the planner
        raise ZeroDivisionError("injected")

    env.setattr(PassPlanner, "plan", broken)
    own = _run_pass(_World(served, adder_cls), raw=True)
    world = _World(served, adder_cls)
    assert _run_pass(world) == own and _run_pass(world)["can_run"] == ["long"]
    errors = [m for level, m in hook_log if level == "ERROR"]
    assert errors == ["qwen1m scheduler: planning a pass failed; SGLang's own scheduling from now on"]


_REGISTRATION = """
import json, os, sys
from sglang.srt.plugins import load_plugins
from sglang.srt.plugins.hook_registry import HookRegistry
from sglang.srt.managers.schedule_policy import PrefillAdder
from sglang.srt.managers.scheduler import Scheduler
from sgl_qwen1m.adapter import plugin
wrapped = lambda: [hasattr(f, "__wrapped__") for f in (Scheduler._get_new_batch_prefill_raw,
                                                      PrefillAdder.add_chunked_req, PrefillAdder.add_one_req)]
load_plugins()
off = wrapped()
os.environ["QWEN1M_SCHEDULER"] = "1"
plugin.register(); HookRegistry.apply_hooks()
print(json.dumps({"off": off, "on": wrapped()}))
"""


@pytest.mark.sglang
@pytest.mark.slow
def test_switched_off_the_plugin_leaves_sglangs_scheduler_code_untouched(sglang):
    env = {k: v for k, v in os.environ.items() if k not in ENV_NAMES}
    proc = subprocess.run([sys.executable, "-c", _REGISTRATION], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"off": [False] * 3, "on": [True] * 3}


@pytest.mark.sglang
@pytest.mark.parametrize("env_values, mixed", [({}, False), ({SCHEDULER_ENV: "0"}, False),
                                               ({SCHEDULER_ENV: "1"}, True)])
def test_launch_turns_mixed_chunk_on_only_with_the_scheduler(served, env, env_values, mixed):
    for k, v in env_values.items():
        env.setenv(k, v)
    args = compat.resolved_server_args(["--model-path", str(SHAPE), "--device", "cuda", "--attention-backend",
                                        "qwen1m", "--chunked-prefill-size", str(CHUNK)])
    assert args.enable_mixed_chunk is mixed


@pytest.mark.sglang
@pytest.mark.parametrize("name, value, message", [
    (SCHEDULER_ENV, "on", "QWEN1M_SCHEDULER='on' is not allowed"),
    (ITL_ENV, "-3", "QWEN1M_ITL_TARGET_MS='-3' is out of range (allowed: 10 to 600000 milliseconds"),
])
def test_launch_stops_on_a_bad_setting(served, env, name, value, message):
    env.setenv(name, value)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        compat.resolved_server_args(["--model-path", str(SHAPE), "--device", "cuda", "--attention-backend", "qwen1m"])


@pytest.mark.sglang
def test_served_model_config_gives_the_policys_cost_model(served, policy):
    from sgl_qwen1m.scheduler.serving import cost_model_from_hf

    assert cost_model_from_hf(as_mapping(served[1].hf_config)) == policy.cost  # SGLang injected the same budgets

