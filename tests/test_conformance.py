"""Conformance with the installed SGLang (run under every CI version): these fail when upstream changes something the
plugin relies on. Sources are read with ``ast`` (``sgl_qwen1m.adapter.conformance``), so nothing imports FlashInfer.

The last group tests the checker itself on deliberately broken copies of upstream and of our sources.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sgl_qwen1m.adapter import compat, conformance
from sgl_qwen1m.adapter.rope import replacement_signature

ROOT = Path(__file__).resolve().parents[1]
MODELS = sorted(p for p in (ROOT / "benchmarks" / "models").iterdir() if (p / "config.json").exists())
DCA_MODELS = next(r.value for r in compat.DIFFERENCES if r.name == "dca_models")
UNIMPLEMENTED = next(r.value for r in compat.DIFFERENCES if r.name == "backend_unimplemented")
KNOWN_CALL_SITE_GAPS: dict[str, str] = {}  # model -> issue, for a DCA-wired model whose RoPE call we cannot take yet


@pytest.fixture(scope="module")
def root(sglang) -> Path:
    return conformance.sglang_root()


# --- the installed SGLang ---------------------------------------------------------------------------------------


@pytest.mark.sglang
def test_backend_implements_attention_backend(root):
    base = (root / "srt/layers/attention/base_attn_backend.py").read_text()
    ours = (ROOT / "sgl_qwen1m/adapter/backend.py").read_text()
    assert conformance.backend_problems(base, ours, UNIMPLEMENTED) == []


@pytest.mark.sglang
@pytest.mark.parametrize(
    "model",
    [pytest.param(m, marks=pytest.mark.xfail(strict=True, reason=KNOWN_CALL_SITE_GAPS[m]))
     if m in KNOWN_CALL_SITE_GAPS else m for m in DCA_MODELS],
)
def test_dca_model_rope_call_sites_fit_our_replacement(root, model):
    path = root / "srt" / "models" / f"{model}.py"
    assert conformance.self_calls(path.read_text(), "rotary_emb"), f"{path}: no self.rotary_emb(...) call left"
    assert conformance.call_site_problems(path.name, path.read_text(), replacement_signature()) == []


@pytest.mark.sglang
def test_every_dca_wired_model_is_in_compats_list(root):
    found = set(conformance.dca_model_files(root, DCA_MODELS))
    assert found <= set(DCA_MODELS), f"new DCA-wired models {sorted(found - set(DCA_MODELS))}: add them to compat"


@pytest.mark.sglang
def test_sglang_dca_rope_forward_keeps_the_signature_our_fallback_calls(root):
    row = compat.pick("dca_rope_forward")
    got = conformance.function_params(root, "srt/layers/rotary_embedding/rope_variant.py",
                                      "DualChunkRotaryEmbedding.forward")
    assert got == ["self", "positions", "query", "key", "offsets"], row.upstream


@pytest.mark.sglang
def test_hook_targets_exist_with_the_signature_we_wrap(root):
    rows = [compat.pick(name) for name in ("attention_hook", "dca_guard")]
    assert rows[0] is not None and rows[0].value is not None, "no attention hook for this SGLang"
    for row in rows:
        if row.value is None:
            continue
        kind, target, wrapped = row.value
        if kind == "resolution_hook":
            from sglang.srt.arg_groups import resolution_hooks

            assert target in resolution_hooks._OVERRIDABLE_HOOKS, f"{target} is no longer an overridable step"
            assert re.search(rf"run_hook\(\s*{target}\s*,", (root / "srt/arg_groups/pipeline.py").read_text())
            assert conformance.function_params(root, "srt/arg_groups/attention_hook.py", target) == list(wrapped)
            assert conformance.function_params(root, "srt/arg_groups/resolution_hooks.py",
                                               "register_resolution_hook") == ["name"]
        else:
            assert compat.dotted_exists(target), target
            relpath, qualname = conformance.split_target(target)
            assert conformance.function_params(root, relpath, qualname) == list(wrapped), target


@pytest.mark.sglang
def test_scheduler_hook_targets_keep_the_signatures_we_wrap(root):
    from sgl_qwen1m.adapter import scheduler_hook

    row = compat.pick("scheduler_hook")
    assert row is not None and row.value, f"{compat.SCHEDULER_HOOK_UNAVAILABLE} ({compat.installed_version()})"
    assert compat.scheduler_hook_plan(), "no req_prefix_len row for this SGLang"
    for _kind, target, wrapped, fn in row.value:
        relpath, qualname = conformance.split_target(target)
        assert conformance.function_params(root, relpath, qualname) == list(wrapped), target
        assert callable(getattr(scheduler_hook, fn)), fn


@pytest.mark.sglang
def test_scheduler_hook_reads_only_names_upstream_still_has(root):
    from sgl_qwen1m.adapter import scheduler_hook

    reads = dict(scheduler_hook.UPSTREAM_NAMES)
    _how, attr = compat.pick("req_prefix_len").value
    reads[("srt/managers/schedule_batch.py", "Req")] += (attr,)
    for (relpath, cls), names in reads.items():
        have = conformance.class_names(root, relpath, cls)
        assert have is not None, f"{relpath}: class {cls} is gone"
        assert [n for n in names if n not in have] == [], f"{relpath}: {cls} no longer has these"


def test_class_names_sees_methods_fields_and_self_assignments(tmp_path):
    (tmp_path / "a.py").write_text("class A:\n    x: int = 0\n    y = 1\n    def f(self):\n"
                                   "        self.z, self.w = 1, 2\n        other.v = 3\n")
    assert conformance.class_names(tmp_path, "a.py", "A") == {"x", "y", "f", "z", "w"}
    assert conformance.class_names(tmp_path, "a.py", "B") is None
    assert conformance.class_names(tmp_path, "b.py", "A") is None


@pytest.mark.sglang
@pytest.mark.parametrize("name", ["global_config", "tp_rank", "add_attention_backend_choices", "resolved_args"])
def test_compat_rows_resolve(sglang, name):
    row = compat.pick(name)
    assert row is not None, f"no {name} row covers SGLang {compat.installed_version()}"
    if row.value is not None:
        assert compat.dotted_exists(row.value), f"{row.value} ({row.upstream})"


@pytest.mark.sglang
def test_tp_rank_attribute_exists(sglang):
    from sglang.srt.runtime_context import ParallelContext

    assert hasattr(ParallelContext, "tp_rank")


# --- the real argument path, per bundled shape -----------------------------------------------------------------


@pytest.fixture(scope="module")
def resolve(sglang):
    from sglang.srt.plugins import load_plugins

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        load_plugins()
        yield lambda model, *argv: compat.resolved_server_args(["--model-path", str(model), "--device", "cuda", *argv])


@pytest.mark.sglang
@pytest.mark.parametrize("model", MODELS, ids=[m.name for m in MODELS])
def test_qwen1m_is_accepted_for_each_benchmark_shape(resolve, model):
    args = resolve(model, "--attention-backend", "qwen1m", "--enable-mixed-chunk")
    assert args.attention_backend == "qwen1m"
    assert args.cuda_graph_config.prefill.backend == "disabled"
    assert args.enable_mixed_chunk is False


BAD = {
    "decode-flashinfer": (["--attention-backend", "qwen1m", "--decode-attention-backend", "flashinfer"],
                          "must serve both prefill and decode"),
    "prefill-triton": (["--prefill-attention-backend", "triton", "--decode-attention-backend", "qwen1m"],
                       "must serve both prefill and decode"),
    "speculative": (["--attention-backend", "qwen1m", "--speculative-algorithm", "NGRAM"],
                    r"speculative decoding \(--speculative-algorithm NGRAM\) is not supported"),
    "flashinfer-on-dca": (["--attention-backend", "flashinfer"],
                          "Dual chunk attention is enabled|only the 'qwen1m' attention backend"),
    "fa3-on-dca": (["--attention-backend", "fa3"], "Dual chunk attention is enabled|only the 'qwen1m' attention"),
}


@pytest.mark.sglang
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_inputs_get_clear_errors(resolve, case):
    argv, message = BAD[case]
    dca = next(m for m in MODELS if "1m" in m.name)
    with pytest.raises(ValueError, match=message):
        resolve(dca, *argv)


# --- the checker itself: deliberately broken copies must be reported ------------------------------------------

QWEN2_CALL_SITE = '''
class Qwen2Attention(nn.Module):
    def forward(self, positions, hidden_states, forward_batch):
        qkv, _ = self.qkv_proj(hidden_states)
        q, k, v = qkv.split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k = self.rotary_emb(positions, q, k)
        attn_output = self.attn(q, k, v, forward_batch)
'''  # SGLang 0.5.23 srt/models/qwen2.py:229-234


def test_checker_accepts_the_upstream_call_site():
    assert conformance.call_site_problems("qwen2.py", QWEN2_CALL_SITE, replacement_signature()) == []
    with_offsets = QWEN2_CALL_SITE.replace("(positions, q, k)", "(positions, q, k, offsets=None)")
    assert conformance.call_site_problems("qwen2.py", with_offsets, replacement_signature()) == []


@pytest.mark.parametrize("broken", ["(positions, q, k, offset=None)", "(positions, q, k, None, None, None)",
                                    "(positions=positions, query=q, keys=k)"])
def test_checker_reports_a_renamed_or_extra_argument(broken):
    source = QWEN2_CALL_SITE.replace("(positions, q, k)", broken)
    problems = conformance.call_site_problems("qwen2.py", source, replacement_signature())
    assert len(problems) == 1 and "qwen2.py:6" in problems[0] and "does not fit our replacement" in problems[0]


BASE = '''
class AttentionBackend(ABC):
    def init_forward_metadata(self, forward_batch):
        pass
    def forward_decode(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        raise NotImplementedError()
    def forward_extend(self, q, k, v, layer, forward_batch, save_kv_cache=True, **kwargs):
        """Run extend."""
        raise NotImplementedError()
'''


def _ours() -> str:
    return (ROOT / "sgl_qwen1m/adapter/backend.py").read_text()


def test_checker_accepts_our_backend_against_a_minimal_base():
    assert conformance.backend_problems(BASE, _ours(), {}) == []


@pytest.mark.parametrize(
    "edit, expected",
    [
        (("base", "save_kv_cache=True, **kwargs):\n        raise", "save_kv_cache=True, *, sinks=None, "
          "**kwargs):\n        raise"), None),  # a keyword-only addition upstream is fine: we take **kwargs
        (("ours", 'def forward_extend(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch",\n'
          "                       save_kv_cache: bool = True, **kwargs):",
          'def forward_extend(self, q, k, v, layer: "RadixAttention", forward_batch: "ForwardBatch",\n'
          "                       save_kv_cache: bool = True):"), "upstream takes **kwargs"),
        (("base", "    def init_forward_metadata(self, forward_batch):",
          "    def init_forward_metadata(self, batch):"), "do not start with upstream's"),
        (("base", "    def init_forward_metadata(self, forward_batch):\n        pass",
          "    def init_forward_metadata(self, forward_batch):\n        pass\n    def forward_sparse(self, q):\n"
          "        raise NotImplementedError()"), "forward_sparse"),
    ],
    ids=["keyword-only-added-upstream", "our-kwargs-dropped", "parameter-renamed-upstream", "new-required-method"],
)
def test_checker_reports_broken_backend_signatures(edit, expected):
    which, old, new = edit
    base, ours = BASE, _ours()
    if which == "base":
        assert old in base
        base = base.replace(old, new)
    else:
        assert old in ours, "backend.py changed: update this test's copy"
        ours = ours.replace(old, new)
    problems = conformance.backend_problems(base, ours, {})
    if expected is None:
        assert problems == []
    else:
        assert problems and expected in " ".join(problems), problems
