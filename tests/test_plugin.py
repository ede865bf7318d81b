"""The SGLang plugin against the installed real SGLang (0.5.17 or 0.5.23; no mocks): entry point, registration,
ServerArgs hooks.

The SGLang tests build ``ServerArgs`` exactly the way ``python -m sglang.launch_server`` does before it starts
anything (0.5.17 ``launch_server.py:64-68``: ``load_plugins()`` then ``prepare_server_args(sys.argv[1:])``; 0.5.23
adds ``resolve_once()``: ``compat.resolved_server_args``), for a local model directory whose ``config.json`` carries
``dual_chunk_attention_config``.

``--device cuda`` is passed because on a machine without an accelerator SGLang's ``get_device()`` raises
(``srt/utils/common.py:863-917``); on a GPU host that is the value it resolves to anyway. Argument resolution does
not touch the GPU. SGLang tests skip when SGLang is not importable, except in a venv built by
``scripts/setup-cpu.sh``, where a missing SGLang is a setup bug and fails.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from sgl_qwen1m.adapter import compat, hooks, plugin

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINT_GROUP = "sglang.srt.plugins"  # sglang/srt/plugins/__init__.py:29 (GENERAL_PLUGINS_GROUP)
ENTRY_POINT_VALUE = "sgl_qwen1m.adapter.plugin:register"

# Qwen2.5-7B-Instruct-1M shapes (as benchmarks/models/qwen2.5-7b-1m-shape/config.json). No weights needed.
QWEN25_7B_1M_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "model_type": "qwen2",
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 3584,
    "initializer_range": 0.02,
    "intermediate_size": 18944,
    "max_position_embeddings": 1010000,
    "max_window_layers": 28,
    "num_attention_heads": 28,
    "num_hidden_layers": 28,
    "num_key_value_heads": 4,
    "rms_norm_eps": 1e-05,
    "rope_theta": 10000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 152064,
    "dual_chunk_attention_config": {
        "chunk_size": 262144,
        "local_size": 8192,
        "original_max_position_embeddings": 262144,
    },
}

# SGLang's own guard (0.5.17 overrides.py:2271-2274) or, where it is gone (0.5.20+), ours (hooks.py)
DCA_BACKEND_ERROR = "Dual chunk attention is enabled|dual_chunk_attention_config, which only the 'qwen1m'"


def _model_dir(root: Path, name: str, dca: bool) -> str:
    config = dict(QWEN25_7B_1M_CONFIG)
    if not dca:
        config.pop("dual_chunk_attention_config")
    path = root / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config, indent=2))
    return str(path)


@pytest.fixture(scope="module")
def dca_model(tmp_path_factory) -> str:
    return _model_dir(tmp_path_factory.mktemp("models"), "qwen2.5-7b-1m-shape", dca=True)


@pytest.fixture(scope="module")
def plain_model(tmp_path_factory) -> str:
    return _model_dir(tmp_path_factory.mktemp("models"), "qwen2.5-7b-shape", dca=False)


@pytest.fixture(scope="module")
def server_args(sglang):
    """``argv -> ServerArgs`` through launch_server's path, with plugins loaded from their entry points."""
    from sglang.srt.plugins import load_plugins

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        load_plugins()  # once per process; calls plugin.register() via the entry point, then applies hooks
        yield lambda model, *argv: compat.resolved_server_args(["--model-path", model, "--device", "cuda", *argv])


# --- no SGLang needed ------------------------------------------------------------------------------------------


def test_entry_point_is_discoverable():
    eps = [ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP) if ep.name == "qwen1m"]
    assert len(eps) == 1, f"no unique 'qwen1m' entry point in {ENTRY_POINT_GROUP}; run `pip install -e .`"
    assert eps[0].value == ENTRY_POINT_VALUE
    assert eps[0].dist is not None and eps[0].dist.name.replace("-", "_") == "sgl_qwen1m"
    assert eps[0].load() is plugin.register


@pytest.mark.parametrize("version", ["0.5.17", "0.5.23"])
def test_version_check_accepts_verified_releases(version):
    assert plugin.check_sglang_version(version) is True


@pytest.mark.parametrize(
    "version", ["0.5.16", "0.5.18", "0.5.19", "0.5.20", "0.5.22", "0.5.23.post1", "0.5.24", "0.5.24rc1", "0.6.0", "x"]
)
def test_version_check_rejects_unverified_releases_readably(version):
    with pytest.raises(RuntimeError) as err:
        plugin.check_sglang_version(version)
    message = str(err.value)
    assert f"SGLang {version} is installed" in message
    assert plugin.SUPPORTED_SGLANG in message and "0.5.17" in message and "0.5.23" in message
    assert plugin.ALLOW_UNTESTED_ENV in message


def test_version_check_can_be_overridden():
    assert plugin.check_sglang_version("0.6.0", allow_untested=True) is False


def test_escape_hatch_is_out_of_sglangs_prefix_and_the_old_name_still_works(caplog):
    assert not plugin.ALLOW_UNTESTED_ENV.startswith("SGL_")
    assert plugin.allow_untested_from_env({plugin.ALLOW_UNTESTED_ENV: "1"}) is True
    assert plugin.allow_untested_from_env({}) is False
    with caplog.at_level("WARNING", logger=plugin.__name__):
        assert plugin.allow_untested_from_env({"SGL_QWEN1M_ALLOW_UNTESTED_SGLANG": "1"}) is True
    assert "deprecated" in caplog.text and plugin.ALLOW_UNTESTED_ENV in caplog.text


# --- real SGLang ---------------------------------------------------------------------------------------------------


@pytest.mark.sglang
def test_register_twice_is_a_noop(sglang):
    from sglang.srt.arg_groups import overrides
    from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
    from sglang.srt.plugins import load_plugins
    from sglang.srt.plugins.hook_registry import HookRegistry
    from sglang.srt.server_args import ATTENTION_BACKEND_CHOICES, ServerArgs

    plugin.register()
    plugin.register()
    load_plugins()  # entry-point path: a third register() call (unless already loaded) and apply_hooks()
    HookRegistry.apply_hooks()

    assert ATTENTION_BACKEND_CHOICES.count("qwen1m") == 1
    assert ATTENTION_BACKENDS["qwen1m"] is plugin.create_qwen1m_backend
    plan = compat.hook_plan()
    assert any(fn.startswith("attention_") for _, _, fn in plan), plan
    for kind, target, fn_name in plan:
        fn = getattr(hooks, fn_name)
        if kind == "resolution_hook":
            from sglang.srt.arg_groups.resolution_hooks import _HOOKS  # no public query exists

            assert _HOOKS.get(target, []).count(fn) == 1, target
            continue
        ours = [h for _, h, _ in HookRegistry._hooks.get(target, []) if h is fn]  # no public query exists
        assert len(ours) == 1, target
        patched = compat.resolve(target)
        assert hasattr(patched, "__wrapped__") and not hasattr(patched.__wrapped__, "__wrapped__"), patched


_LAUNCH_PATH = """
import json, sys
from sglang.srt.plugins import load_plugins              # sglang/launch_server.py:64-66 (0.5.17)
load_plugins()
from sgl_qwen1m.adapter import compat                   # prepare_server_args (+ resolve_once on 0.5.23)
args = compat.resolved_server_args(sys.argv[1:])
import torch
print(json.dumps({
    "attention_backend": args.attention_backend,
    "prefill_cuda_graph": args.cuda_graph_config.prefill.backend,
    "decode_cuda_graph": args.cuda_graph_config.decode.backend,
    "disable_radix_cache": args.disable_radix_cache,
    "enable_mixed_chunk": args.enable_mixed_chunk,
    "backend_module_imported": "sgl_qwen1m.adapter.backend" in sys.modules,
    "cuda_initialized": torch.cuda.is_initialized(),
}))
"""


@pytest.mark.sglang
@pytest.mark.slow
def test_launch_server_arg_path_accepts_qwen1m_for_dca_model(sglang, dca_model):
    """Fresh interpreter: the plugin arrives only through entry-point discovery, as in a real launch."""
    argv = ["--model-path", dca_model, "--device", "cuda", "--attention-backend", "qwen1m"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCH_PATH, *argv], capture_output=True, text=True, timeout=600, env=env, check=False
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == {
        "attention_backend": "qwen1m",
        "prefill_cuda_graph": "disabled",
        "decode_cuda_graph": "full",  # untouched: decode graphs are the backend's business
        "disable_radix_cache": False,  # qwen1m never stores scaled keys, so prefix caching stays on
        "enable_mixed_chunk": False,
        "backend_module_imported": False,  # the factory imports it lazily, in the scheduler process
        "cuda_initialized": False,
    }


@pytest.mark.sglang
def test_qwen1m_overrides_requested_prefill_graph_and_mixed_chunk(server_args, dca_model):
    args = server_args(
        dca_model, "--attention-backend", "qwen1m", "--cuda-graph-backend-prefill", "breakable", "--enable-mixed-chunk"
    )
    assert args.cuda_graph_config.prefill.backend == "disabled"
    assert args.enable_mixed_chunk is False
    assert args.disable_radix_cache is False


@pytest.mark.sglang
def test_qwen1m_on_both_split_backends_is_accepted(server_args, dca_model):
    args = server_args(dca_model, "--prefill-attention-backend", "qwen1m", "--decode-attention-backend", "qwen1m")
    assert args.attention_backend == "qwen1m"  # SGLang folds equal split backends into attention_backend
    assert args.cuda_graph_config.prefill.backend == "disabled"


@pytest.mark.sglang
def test_radix_cache_flag_is_respected(server_args, dca_model):
    args = server_args(dca_model, "--attention-backend", "qwen1m", "--disable-radix-cache")
    assert args.disable_radix_cache is True


@pytest.mark.sglang
@pytest.mark.parametrize("backend", ["flashinfer", "triton", "fa3"])
def test_other_backends_are_rejected_for_dca_models(server_args, dca_model, backend):
    with pytest.raises(ValueError, match=DCA_BACKEND_ERROR):
        server_args(dca_model, "--attention-backend", backend)


@pytest.mark.sglang
def test_dca_model_without_backend_gets_qwen1m_or_a_clear_error(server_args, dca_model):
    if compat.pick("dca_guard").value is None:  # 0.5.20+: our hook makes qwen1m the default for DCA models
        assert server_args(dca_model).attention_backend == "qwen1m"
    else:  # 0.5.17: SGLang fills its platform default first, and its own guard then rejects it
        with pytest.raises(ValueError, match=DCA_BACKEND_ERROR):
            server_args(dca_model)


@pytest.mark.sglang
def test_hooks_leave_other_configurations_alone(server_args, plain_model):
    with_flashinfer = server_args(
        plain_model, "--attention-backend", "flashinfer", "--cuda-graph-backend-prefill", "breakable",
        "--enable-mixed-chunk",
    )
    assert with_flashinfer.attention_backend == "flashinfer"
    assert with_flashinfer.cuda_graph_config.prefill.backend == "breakable"  # what was asked for is kept
    assert with_flashinfer.enable_mixed_chunk is True


@pytest.mark.sglang
@pytest.mark.parametrize(
    "argv",
    [
        ["--attention-backend", "qwen1m", "--decode-attention-backend", "flashinfer"],
        ["--attention-backend", "qwen1m", "--prefill-attention-backend", "flashinfer"],
        ["--prefill-attention-backend", "qwen1m", "--decode-attention-backend", "flashinfer"],
        ["--prefill-attention-backend", "triton", "--decode-attention-backend", "qwen1m"],
        [
            "--attention-backend",
            "qwen1m",
            "--prefill-attention-backend",
            "triton",
            "--decode-attention-backend",
            "flashinfer",
        ],
    ],
    ids=["decode-flashinfer", "prefill-flashinfer", "split-prefill-qwen1m", "split-decode-qwen1m", "neither"],
)
def test_mismatched_prefill_decode_backends_give_clear_error(server_args, dca_model, argv):
    with pytest.raises(ValueError, match="'qwen1m' attention backend must serve both prefill and decode"):
        server_args(dca_model, *argv)


@pytest.mark.sglang
def test_speculative_decoding_is_rejected(server_args, dca_model):
    with pytest.raises(ValueError, match="speculative decoding .* is not supported with the 'qwen1m'"):
        server_args(dca_model, "--attention-backend", "qwen1m", "--speculative-algorithm", "NGRAM")
