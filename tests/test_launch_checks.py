"""qwen1m's launch-time checks and token-id check through real SGLang 0.5.17 (no mocks).

Launch checks: ``argv -> ServerArgs`` exactly as ``python -m sglang.launch_server`` does before it starts anything
(``load_plugins()`` then ``prepare_server_args``), on tmp_path copies of ``benchmarks/models/qwen2.5-7b-1m-shape``
with one thing broken each. Every error fires inside ``ServerArgs.__post_init__``, i.e. before any process is
started or any weight is loaded (there are no weights here), and names the value, the limit and the flag or field.

Token ids: the real ``TokenizerManager._validate_one_request`` / ``_tokenize_one_request`` (hooked by the plugin) on
a TokenizerManager built without ``__init__`` (which would start ZMQ sockets and load a tokenizer), carrying the
real ``ServerArgs`` and ``ModelConfig`` from the argument path. Importing ``tokenizer_manager`` needs fastapi,
uvicorn, uvloop and opentelemetry-api (pinned in scripts/requirements-cpu.txt); those tests skip without them.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import shutil
from pathlib import Path

import pytest

from sgl_qwen1m.adapter import compat, hooks

ROOT = Path(__file__).resolve().parents[1]
SHAPE_7B = ROOT / "benchmarks" / "models" / "qwen2.5-7b-1m-shape"
VOCAB = 152064

pytestmark = pytest.mark.sglang


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """``launch(model_dir, *argv)`` -> ServerArgs through launch_server's path, with --attention-backend qwen1m."""
    import importlib
    import sys

    if (Path(sys.prefix) / "sgl_qwen1m-expects-sglang").exists():
        importlib.import_module("sglang")
    else:
        pytest.importorskip("sglang")
    from sglang.srt.plugins import load_plugins

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        load_plugins()

        def run(model, *argv, backend="qwen1m"):
            return compat.resolved_server_args(  # as launch_server resolves them, in every supported version
                ["--model-path", str(model), "--device", "cuda", "--attention-backend", backend, *argv]
            )

        yield run


def _model(tmp_path: Path, dca=None, drop=(), sparse=True, sparse_text=None) -> Path:
    """A copy of the 7B-1M shape with ``dual_chunk_attention_config`` updated by ``dca``, keys in ``drop`` removed,
    and ``sparse_attention_config.json`` kept (``sparse``), removed, or replaced by ``sparse_text``."""
    path = tmp_path / "model"
    shutil.copytree(SHAPE_7B, path)
    config = json.loads((path / "config.json").read_text())
    dca_config = config["dual_chunk_attention_config"]
    dca_config.update(dca or {})
    for key in drop:
        del dca_config[key]
    (path / "config.json").write_text(json.dumps(config))
    sparse_path = path / "sparse_attention_config.json"
    if not sparse:
        sparse_path.unlink()
    elif sparse_text is not None:
        sparse_path.write_text(sparse_text)
    return path


def _budgets_text(edit) -> str:
    budgets = json.loads((SHAPE_7B / "sparse_attention_config.json").read_text())
    edit(budgets)
    return json.dumps(budgets)


class _Log(logging.Handler):
    """Records what sgl_qwen1m's hooks log (SGLang's logging set-up replaces the root handlers caplog relies on)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def hook_log():
    logger = logging.getLogger(hooks.__name__)
    handler, level = _Log(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


def _error(launch, model, *argv) -> str:
    with pytest.raises(ValueError) as err:
        launch(model, *argv)
    return str(err.value)


# --- launch: flags ----------------------------------------------------------------------------------------------


def test_launch_accepts_the_7b_1m_shape_with_its_sparse_file(launch, tmp_path):
    args = launch(_model(tmp_path))
    assert args.attention_backend == "qwen1m" and args.page_size == 1


def _script_context_lengths() -> list[int]:
    """Every ``--context-length N`` the GPU chains pass to ``launch_server`` (scripts/gpu/*.sh)."""
    import re

    text = "".join(p.read_text() for p in sorted((ROOT / "scripts" / "gpu").glob("*.sh")))
    return sorted({int(n) for n in re.findall(r"--context-length[ =](\d+)", text)})


def test_gpu_chain_context_lengths_pass_sglangs_launch_check(launch, tmp_path):
    """The GPU chains' server arguments go through the same checks on CPU first: on 2026-12-07 an H100 call spent
    10 minutes on a server that SGLang had refused at once (--context-length 1064960 above the shape's 1010000)."""
    lengths = _script_context_lengths()
    assert lengths, "no --context-length found in scripts/gpu/*.sh"
    model = _model(tmp_path)
    for n in lengths:
        assert launch(model, "--context-length", str(n)).context_length == n


@pytest.mark.parametrize("page_size", ["16", "64"])
def test_rule_page_size_must_be_1(launch, tmp_path, page_size):
    message = _error(launch, _model(tmp_path), "--page-size", page_size)
    assert f"--page-size {page_size} is not supported by the qwen1m attention backend" in message
    assert "page size 1" in message and "--page-size 1" in message
    assert launch(_model(tmp_path / "ok"), "--page-size", "1").page_size == 1


def test_rule_pipeline_parallelism_rejected(launch, tmp_path):
    message = _error(launch, _model(tmp_path), "--pp-size", "2")
    assert "--pp-size 2 is not supported" in message and "--pp-size 1" in message


@pytest.mark.parametrize("dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_rule_kv_cache_dtype_fp8_accepted(launch, tmp_path, dtype, monkeypatch):
    monkeypatch.delenv("QWEN1M_ALLOW_UNVERIFIED_FP8_KV", raising=False)
    assert launch(_model(tmp_path), "--kv-cache-dtype", dtype).kv_cache_dtype == dtype


def test_rule_kv_cache_bf16_and_auto_accepted(launch, tmp_path):
    assert launch(_model(tmp_path), "--kv-cache-dtype", "bf16").kv_cache_dtype == "bf16"


def test_rule_float32_model_dtype_rejected(launch, tmp_path):
    message = _error(launch, _model(tmp_path), "--dtype", "float32")
    assert "model dtype is float32" in message and "--dtype bfloat16" in message


def test_rule_tp_size_must_divide_heads(launch, tmp_path):
    message = _error(launch, _model(tmp_path), "--tp-size", "8")
    assert "--tp-size 8 does not divide the model's num_attention_heads=28" in message


def test_rule_mixed_chunk_switch_off_is_logged(launch, tmp_path, hook_log):
    args = launch(_model(tmp_path), "--enable-mixed-chunk")
    assert args.enable_mixed_chunk is False
    text = hook_log.text
    assert "--enable-mixed-chunk -> off for the qwen1m backend" in text
    from sglang.srt.model_executor.cuda_graph_config import Backend

    assert args.cuda_graph_config.prefill.backend == Backend.DISABLED
    if "prefill CUDA graphs" in text:  # logged only where the version's default had them on (0.5.17)
        assert "(--cuda-graph-backend-prefill" in text and "-> disabled" in text


def test_rules_do_not_touch_other_backends(launch, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(ROOT / "benchmarks" / "models" / "qwen2.5-7b-shape", plain)
    assert launch(plain, "--page-size", "16", backend="flashinfer").page_size == 16


# --- launch: the DCA config ---------------------------------------------------------------------------------------


def test_rule_misspelled_dca_key_rejected(launch, tmp_path):
    message = _error(launch, _model(tmp_path, dca={"chunk_sise": 262144}, drop=["chunk_size"]))
    assert "unknown key(s) ['chunk_sise']" in message and "'chunk_size'" in message


def test_rule_missing_original_max_position_embeddings_rejected(launch, tmp_path):
    message = _error(launch, _model(tmp_path, drop=["original_max_position_embeddings"]))
    assert "no original_max_position_embeddings, so YaRN attention scaling would silently be off" in message
    assert "262144" in message and "or to 0" in message


def test_rule_missing_chunk_size_warns_with_default(launch, tmp_path, hook_log):
    launch(_model(tmp_path, dca={"local_size": 1024}, drop=["chunk_size"], sparse=False))
    assert "has no chunk_size; using the default chunk_size=8192" in hook_log.text


def test_rule_chunk_len_not_multiple_of_64_with_sparse_rejected(launch, tmp_path):
    message = _error(launch, _model(tmp_path, dca={"local_size": 8100}))
    assert "262144 - 8100 = 254044 is not a multiple of 64" in message
    assert "sparse_attention_enabled to false" in message
    launch(_model(tmp_path / "dense", dca={"local_size": 8100}, sparse=False))  # dense prefill: any chunk_len


# --- launch: the sparse budgets -----------------------------------------------------------------------------------


def test_rule_empty_sparse_file_rejected(launch, tmp_path):
    message = _error(launch, _model(tmp_path, sparse_text="[]"))
    assert "sparse_attention_config.json holds no budgets ([]), so sparse prefill would silently be off" in message


@pytest.mark.parametrize("text", ["[{\"0\": [\"vertical_and_slash\", 1,", ""], ids=["truncated", "empty-file"])
def test_rule_invalid_sparse_json_names_the_file(launch, tmp_path, text):
    model = _model(tmp_path, sparse_text=text)
    message = _error(launch, model)
    assert f"{model / 'sparse_attention_config.json'} is not valid JSON" in message and "line 1 column" in message


@pytest.mark.parametrize(
    "value, expected",
    [(3_000_000_000, "vertical_size=3000000000 exceeds the int32 limit 2147483647"),
     (1e30, "vertical_size must be an integer in [0, 2147483647], got 1e+30")],
    ids=["int32-overflow", "1e30"],
)
def test_rule_sparse_budget_limits(launch, tmp_path, value, expected):
    text = _budgets_text(lambda b: b[3]["7"].__setitem__(1, value))
    message = _error(launch, _model(tmp_path, sparse_text=text))
    assert "sparse_attention_config[3]['7']" in message and expected in message


def test_rule_sparse_budget_above_context_warns(launch, tmp_path, hook_log):
    launch(_model(tmp_path), "--context-length", "16384")
    assert "is larger than the context length 16384 (--context-length)" in hook_log.text


def test_rule_sparse_layers_and_heads_must_match_model(launch, tmp_path):
    message = _error(launch, _model(tmp_path, sparse_text=_budgets_text(lambda b: b.pop())))
    assert "has 27 layers, the model has num_hidden_layers=28" in message
    message = _error(launch, _model(tmp_path / "h", sparse_text=_budgets_text(lambda b: b[0].pop("27"))))
    assert "sparse_attention_config[0] has 27 head entries" in message and "num_attention_heads=28" in message


# --- token ids through the real TokenizerManager ------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_manager_cls(launch):
    try:
        from sglang.srt.managers.tokenizer_manager import TokenizerManager
    except ImportError as e:  # fastapi & co. (scripts/requirements-cpu.txt) missing from an older venv
        pytest.skip(f"sglang.srt.managers.tokenizer_manager does not import here ({e}); rerun scripts/setup-cpu.sh")
    from sglang.srt.plugins.hook_registry import HookRegistry

    HookRegistry.apply_hooks()  # the plugin registered it at load_plugins(); apply now that the module imports
    return TokenizerManager


def _manager(cls, server_args):
    """A TokenizerManager without __init__ (no sockets, no tokenizer), with the attributes validation reads."""
    tm = cls.__new__(cls)
    tm.server_args = server_args
    tm.model_config = compat.model_config(server_args)
    tm.context_len = tm.model_config.context_len
    tm.num_reserved_tokens = 0
    tm.allow_auto_truncate = False
    tm.validate_total_tokens = True
    tm.is_generation = True
    tm.tokenizer = None
    tm.mm_processor = None
    return tm


def _request(input_ids):
    from sglang.srt.managers.io_struct import GenerateReqInput

    obj = GenerateReqInput(input_ids=input_ids, sampling_params={"max_new_tokens": 4})
    obj.normalize_batch_and_arguments()
    return obj


def test_token_hook_wraps_the_real_0_5_17_method(tokenizer_manager_cls):
    method = tokenizer_manager_cls._validate_one_request
    assert hasattr(method, "__wrapped__"), "the plugin's hook is not applied"
    assert list(inspect.signature(method.__wrapped__).parameters) == ["self", "obj", "input_ids"]
    assert ("hook_registry.AROUND", "sglang.srt.managers.tokenizer_manager.TokenizerManager._validate_one_request",
            "validate_request_around") in compat.hook_plan()


def _upstream_validation_runs_standalone() -> bool:
    """SGLang >= 0.5.20's TokenizerManager reads the runtime config the launcher publishes (``get_exec()``), so its
    own ``_validate_one_request`` cannot run on a bare stand-in; 0.5.17's can."""
    from packaging.version import Version

    return Version(compat.installed_version()) < Version("0.5.20")


needs_standalone_tokenizer = pytest.mark.skipif(
    "not _upstream_validation_runs_standalone()",
    reason="SGLang >= 0.5.20 validates with the launcher's published runtime config; the hook's own check is tested "
    "by test_token_hook_rejects_before_calling_upstream on every version",
)


@pytest.mark.parametrize("ids", [[1, VOCAB], [-1], [1, 2.5]], ids=["too-large", "negative", "float"])
def test_token_hook_rejects_before_calling_upstream(launch, tmp_path, tokenizer_manager_cls, ids):
    tm = _manager(tokenizer_manager_cls, launch(_model(tmp_path)))
    with pytest.raises(ValueError, match=r"input_ids\[\d\]="):  # raised by the hook: upstream never runs
        tm._validate_one_request(_request([1, 2, 3]), ids)


@needs_standalone_tokenizer
@pytest.mark.parametrize(
    "ids, expected",
    [([1, 2, 3, 4, 5, VOCAB], f"input_ids[5]={VOCAB} is outside the vocabulary [0, {VOCAB})"),
     ([7, -1], "input_ids[1]=-1 is outside the vocabulary"),
     ([7, True], "input_ids[1]=True (bool) is not a token id")],
    ids=["too-large", "negative", "bool"],
)
def test_token_ids_rejected_before_the_scheduler(launch, tmp_path, tokenizer_manager_cls, ids, expected):
    tm = _manager(tokenizer_manager_cls, launch(_model(tmp_path)))
    with pytest.raises(ValueError) as err:  # the path of /generate, the OpenAI routes and Engine.generate
        asyncio.run(tm._tokenize_one_request(_request(ids)))
    assert expected in str(err.value)
    tm._validate_one_request(_request([1, 2, 3]), [1, 2, 3])  # in range: SGLang's own checks run and pass


@needs_standalone_tokenizer
def test_token_ids_in_a_batch_are_checked_per_request(launch, tmp_path, tokenizer_manager_cls):
    tm = _manager(tokenizer_manager_cls, launch(_model(tmp_path)))
    obj = _request([[1, 2.5], [3, 4]])  # a float makes SGLang read input_ids as a batch of scalars and lists
    with pytest.raises(ValueError, match=r"input_ids\[1\]=2.5 \(float\) is not a token id"):
        asyncio.run(tm._batch_tokenize_and_process(obj.batch_size, obj))


@needs_standalone_tokenizer
def test_token_hook_leaves_other_backends_alone(launch, tmp_path, tokenizer_manager_cls):
    plain = tmp_path / "plain"
    shutil.copytree(ROOT / "benchmarks" / "models" / "qwen2.5-7b-shape", plain)
    tm = _manager(tokenizer_manager_cls, launch(plain, backend="flashinfer"))
    tm._validate_one_request(_request([1, VOCAB]), [1, VOCAB])  # SGLang's behaviour, unchanged
