"""The pure rules of ``sgl_qwen1m/validation.py`` (no SGLang): token ids and the qwen1m launch configuration.

The same rules run inside SGLang's argument path in ``tests/test_launch_checks.py``.
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sgl_qwen1m.config import INT32_MAX, KNOWN_DCA_KEYS, ConfigError, DCAConfig
from sgl_qwen1m.validation import check_launch, check_sampling_params, check_token_ids, read_sparse_file

VOCAB = 152064
QWEN_DCA = {"chunk_size": 262144, "local_size": 8192, "original_max_position_embeddings": 262144}
HF = {"num_attention_heads": 28, "num_key_value_heads": 4, "num_hidden_layers": 2, "dual_chunk_attention_config": QWEN_DCA}


def _budgets(layers=2, heads=28, vertical=1000, slash=2000):
    return [{str(h): ["vertical_and_slash", vertical, slash, None] for h in range(heads)} for _ in range(layers)]


def _hf(**dca):
    hf = copy.deepcopy(HF)
    hf["dual_chunk_attention_config"].update(dca)
    return hf


# --- token ids --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids, expected",
    [
        ([1, 2, 3, 4, 5, VOCAB], f"input_ids[5]={VOCAB} is outside the vocabulary [0, {VOCAB})"),
        ([0, -1, 7], f"input_ids[1]=-1 is outside the vocabulary [0, {VOCAB})"),
        ([2**40], f"input_ids[0]={2**40} is outside the vocabulary"),
        ([1, 2**70], f"input_ids[1]={2**70} is outside the vocabulary"),  # beyond int64
        ([VOCAB, VOCAB + 1, -5], "input_ids[0]=152064 is outside the vocabulary [0, 152064) (3 of 3 ids are)"),
        ([1, 2.5], "input_ids[1]=2.5 (float) is not a token id"),
        ([1, 2.0], "input_ids[1]=2.0 (float) is not a token id"),
        ([1, "7"], "input_ids[1]='7' (str) is not a token id"),
        ([True, 2], "input_ids[0]=True (bool) is not a token id"),
        ([1, None], "input_ids[1]=None (NoneType) is not a token id"),
        ([1, [2, 3]], "input_ids[1]=[2, 3] (list) is not a token id"),
        ([], "input_ids is empty"),
        (5, "input_ids must be a flat list of integer token ids in [0, 152064); got int 5"),
        ("1 2 3", "got str '1 2 3'"),
        (np.zeros((2, 3), dtype=np.int64), "got a 2-D numpy array of int64"),
        (np.array([1.0, 2.0]), "got a 1-D numpy array of float64"),
        (np.array([1, VOCAB]), f"input_ids[1]={VOCAB} is outside the vocabulary"),
        (np.array([], dtype=np.int32), "input_ids is empty"),
    ],
    ids=["too-large", "negative", "huge", "beyond-int64", "count", "float", "integral-float", "str", "bool", "none",
         "nested", "empty", "scalar", "string", "2d-array", "float-array", "array-out-of-range", "empty-array"],
)
def test_token_ids_rejected_with_position_value_and_vocab(ids, expected):
    with pytest.raises(ValueError) as err:
        check_token_ids(ids, VOCAB)
    assert expected in str(err.value)


@pytest.mark.parametrize("ids", [[0], [VOCAB - 1], list(range(100)), (3, 4), np.arange(10, dtype=np.int32),
                                 [np.int64(5), 6]])
def test_token_ids_in_range_pass(ids):
    check_token_ids(ids, VOCAB)


@given(st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), min_size=1, max_size=60),
       st.integers(min_value=1, max_value=200_000))
def test_token_ids_match_brute_force(ids, vocab):
    bad = [i for i, x in enumerate(ids) if not 0 <= x < vocab]
    if not bad:
        check_token_ids(ids, vocab)
        return
    with pytest.raises(ValueError) as err:
        check_token_ids(ids, vocab)
    assert str(err.value).startswith(f"input_ids[{bad[0]}]={ids[bad[0]]} is outside the vocabulary [0, {vocab})")


def test_token_ids_message_never_prints_the_list():
    ids = list(range(1_000)) + [VOCAB]
    with pytest.raises(ValueError) as err:
        check_token_ids(ids, VOCAB)
    assert len(str(err.value)) < 120


def test_token_ids_million_ids_well_under_100ms():
    ids = np.random.default_rng(0).integers(0, VOCAB, 1_000_000).tolist()
    best = min(_timed(check_token_ids, ids, VOCAB) for _ in range(3))
    ids[-1] = VOCAB
    with pytest.raises(ValueError, match=r"input_ids\[999999\]=152064"):
        check_token_ids(ids, VOCAB)
    assert best < 0.1, f"1M ids took {best * 1e3:.1f} ms"


def _timed(fn, *args):
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


# --- launch rules -----------------------------------------------------------------------------------------------


def test_launch_accepts_qwen_1m_config():
    assert check_launch(HF, context_len=1010000) == []
    hf = _hf(sparse_attention_config=_budgets(), sparse_attention_enabled=True)
    assert check_launch(hf, context_len=1010000) == []


@pytest.mark.parametrize("page_size", [16, 64])
def test_page_size_other_than_1_is_rejected(page_size):
    with pytest.raises(ConfigError, match=rf"--page-size {page_size} is not supported .*\(page size 1\)"):
        check_launch(HF, page_size=page_size)
    check_launch(HF, page_size=None)


def test_pipeline_parallelism_is_rejected():
    with pytest.raises(ConfigError, match=r"--pp-size 2 is not supported .*--pp-size 1"):
        check_launch(HF, pp_size=2)


@pytest.mark.parametrize("dtype", ["mxfp8", "nvfp4", "fp4_e2m1"])
def test_other_quantised_kv_caches_are_rejected(dtype):
    with pytest.raises(ConfigError, match=rf"--kv-cache-dtype {dtype} is not supported .*fp8_e4m3.*--kv-cache-dtype auto"):
        check_launch(HF, kv_cache_dtype=dtype)


@pytest.mark.parametrize("dtype", ["fp8_e4m3", "fp8_e5m2"])
def test_fp8_kv_cache_is_accepted(dtype, monkeypatch):
    """GPU-verified on the H200 (kernel tests against the fp32 oracle, passkey, 1M runs): accepted without an opt-in;
    the old opt-in variable changes nothing."""
    monkeypatch.delenv("QWEN1M_ALLOW_UNVERIFIED_FP8_KV", raising=False)
    assert check_launch(HF, kv_cache_dtype=dtype) == check_launch(HF, kv_cache_dtype="auto")


def test_float32_model_with_auto_kv_dtype_is_rejected():
    with pytest.raises(ConfigError, match="model dtype is float32.*--dtype bfloat16"):
        check_launch(HF, model_dtype="float32")
    check_launch(HF, model_dtype="float16")


@pytest.mark.parametrize("tp, field", [(3, "num_attention_heads=28"), (8, "num_attention_heads=28"),
                                       (7, "num_key_value_heads=4")])
def test_tp_size_must_divide_heads(tp, field):
    with pytest.raises(ConfigError, match=rf"--tp-size {tp} does not divide the model's {field}"):
        check_launch(HF, tp_size=tp)
    check_launch(HF, tp_size=4)


def test_misspelled_dca_key_is_rejected_naming_it_and_the_known_keys():
    hf = copy.deepcopy(HF)
    hf["dual_chunk_attention_config"]["chunk_sise"] = hf["dual_chunk_attention_config"].pop("chunk_size")
    with pytest.raises(ConfigError) as err:
        check_launch(hf)
    assert "unknown key(s) ['chunk_sise']" in str(err.value)
    assert all(k in str(err.value) for k in KNOWN_DCA_KEYS)


def test_dca_config_from_dict_shares_the_unknown_key_rule():
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['locl_size'\]"):
        DCAConfig.from_dict({**QWEN_DCA, "locl_size": 8192})
    DCAConfig.from_dict({**QWEN_DCA, "sparse_attention_threshold": 2048, "sparse_attention_last_q": 64,
                         "sparse_attention_enabled": False, "sparse_attention_config": None})


def test_missing_original_max_position_embeddings_is_an_error_and_0_opts_out():
    hf = copy.deepcopy(HF)
    del hf["dual_chunk_attention_config"]["original_max_position_embeddings"]
    with pytest.raises(ConfigError, match="no original_max_position_embeddings, so YaRN .* or to 0"):
        check_launch(hf)
    assert check_launch(_hf(original_max_position_embeddings=0)) == []


@pytest.mark.parametrize("key, default", [("chunk_size", 8192), ("local_size", 1024)])
def test_missing_chunk_or_local_size_warns_with_the_default(key, default):
    hf = copy.deepcopy(HF)
    del hf["dual_chunk_attention_config"][key]
    hf["dual_chunk_attention_config"]["local_size" if key == "chunk_size" else "chunk_size"] = 4096 if key == "chunk_size" else 262144
    (warning,) = check_launch(hf)
    assert f"has no {key}; using the default {key}={default}" in warning


def test_chunk_len_not_multiple_of_64_with_sparse_is_rejected():
    hf = _hf(chunk_size=262144, local_size=8100, sparse_attention_config=_budgets(), sparse_attention_enabled=True)
    with pytest.raises(ConfigError, match=r"262144 - 8100 = 254044 is not a multiple of 64.*sparse_attention_enabled"):
        check_launch(hf)
    assert check_launch(_hf(local_size=8100)) == []  # dense: any chunk_len


def test_empty_sparse_file_is_rejected(tmp_path):
    path = tmp_path / "sparse_attention_config.json"
    path.write_text("[]")
    with pytest.raises(ConfigError, match=rf"{path} holds no budgets \(\[\]\), so sparse prefill would silently be off"):
        check_launch(HF, sparse_file=path)


@pytest.mark.parametrize("text, what", [("[{\"0\": [", "is not valid JSON"), ("", "is empty"), ("  \n", "is empty")])
def test_invalid_sparse_json_names_the_file(tmp_path, text, what):
    path = tmp_path / "sparse_attention_config.json"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{path} {what}"):
        read_sparse_file(path)
    assert read_sparse_file(tmp_path / "absent.json") is None


def test_sparse_file_beside_config_is_checked_like_sglangs_injection(tmp_path):
    path = tmp_path / "sparse_attention_config.json"
    path.write_text(json.dumps(_budgets(layers=3)))
    with pytest.raises(ConfigError, match="has 3 layers, the model has num_hidden_layers=2"):
        check_launch(HF, sparse_file=path)
    path.write_text(json.dumps(_budgets(heads=14)))
    with pytest.raises(ConfigError, match="num_attention_heads=28"):
        check_launch(HF, sparse_file=path)


@pytest.mark.parametrize("value, expected", [
    (3_000_000_000, f"vertical_size=3000000000 exceeds the int32 limit {INT32_MAX}"),
    (1e30, f"vertical_size must be an integer in [0, {INT32_MAX}], got 1e+30"),
    (float("inf"), "got inf"),
    (-1, "vertical_size must be >= 0, got -1"),
])
def test_sparse_budget_limits_name_layer_head_value_and_limit(value, expected):
    budgets = _budgets()
    budgets[1]["5"][1] = value
    with pytest.raises(ConfigError) as err:
        check_launch(_hf(sparse_attention_config=budgets, sparse_attention_enabled=True))
    assert "sparse_attention_config[1]['5']" in str(err.value) and expected in str(err.value)


def test_budget_above_context_length_warns():
    hf = _hf(sparse_attention_config=_budgets(vertical=50_000), sparse_attention_enabled=True)
    (warning,) = check_launch(hf, context_len=32768)
    assert "[0]['0'] vertical_size=50000 is larger than the context length 32768 (--context-length)" in warning


def test_plain_model_has_no_dca_checks():
    assert check_launch({"num_attention_heads": 28, "num_key_value_heads": 4}) == []


# ---------------------------------------------------------------- sampling parameter types (a TypeError is a 500)


@pytest.mark.parametrize(
    "params,field",
    [
        ({"max_new_tokens": "lots"}, "max_new_tokens"),
        ({"max_new_tokens": 8.5}, "max_new_tokens"),
        ({"max_new_tokens": True}, "max_new_tokens"),
        ({"top_k": "1"}, "top_k"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": [0.5]}, "top_p"),
        ({"repetition_penalty": None, "min_new_tokens": {}}, "min_new_tokens"),
    ],
)
def test_sampling_params_of_the_wrong_type_are_named(params, field):
    with pytest.raises(ValueError, match=rf"sampling_params\.{field} must be"):
        check_sampling_params(params)


@pytest.mark.parametrize(
    "params",
    [None, {}, {"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "top_k": -1, "stream_interval": None},
     {"max_new_tokens": None, "stop": ["x"], "regex": "a+"}],
)
def test_well_typed_sampling_params_pass(params):
    check_sampling_params(params)


def test_sampling_params_must_be_an_object():
    with pytest.raises(ValueError, match="sampling_params must be a JSON object"):
        check_sampling_params(["max_new_tokens", 4])
