"""DCAConfig / SparseBudgets parsing and validation messages (YaRN scale: tests/test_yarn.py)."""

from __future__ import annotations

import copy
import dataclasses
import json
import re
import types
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from sgl_qwen1m.config import (
    DEFAULT_LAST_Q,
    DEFAULT_SPARSE_THRESHOLD,
    VERTICAL_SLASH,
    ConfigError,
    DCAConfig,
    HeadBudget,
    SparseBudgets,
)
from sgl_qwen1m.ops.dca.plan import yarn_logit_scale

# Qwen2.5-7B-Instruct-1M's config.json and its real per-head sparse budgets, committed in the repository.
MODEL_DIR = Path(__file__).resolve().parents[1] / "benchmarks" / "models" / "qwen2.5-7b-1m-shape"
SPARSE_JSON = MODEL_DIR / "sparse_attention_config.json"
QWEN_1M = {"chunk_size": 262144, "local_size": 8192, "original_max_position_embeddings": 262144}


# ---------------------------------------------------------------------------------------------------------------
# DCAConfig
# ---------------------------------------------------------------------------------------------------------------


def test_from_hf_config_real_config_json():
    hf = json.loads((MODEL_DIR / "config.json").read_text())
    cfg = DCAConfig.from_hf_config(hf)
    assert cfg == DCAConfig(262144, 8192, 262144)
    assert cfg.chunk_len == 253952
    assert cfg.sparse_attention_enabled is False
    assert cfg.sparse_attention_threshold == DEFAULT_SPARSE_THRESHOLD == 32768
    assert cfg.sparse_attention_last_q == DEFAULT_LAST_Q == 64


def test_from_hf_config_dict_and_object_agree():
    from_dict = DCAConfig.from_hf_config({"model_type": "qwen2", "dual_chunk_attention_config": dict(QWEN_1M)})
    from_obj = DCAConfig.from_hf_config(types.SimpleNamespace(model_type="qwen2", dual_chunk_attention_config=dict(QWEN_1M)))
    assert from_dict == from_obj == DCAConfig(262144, 8192, 262144)


@pytest.mark.parametrize(
    "hf",
    [
        {},
        {"model_type": "qwen2"},
        {"dual_chunk_attention_config": None},
        types.SimpleNamespace(model_type="qwen2"),
        types.SimpleNamespace(dual_chunk_attention_config=None),
    ],
    ids=["empty-dict", "dict-no-key", "dict-null", "obj-no-attr", "obj-none"],
)
def test_from_hf_config_absent_is_none(hf):
    assert DCAConfig.from_hf_config(hf) is None


def test_defaults_for_absent_keys():
    cfg = DCAConfig.from_hf_config({"dual_chunk_attention_config": {}})
    assert (cfg.chunk_size, cfg.local_size, cfg.original_max_position_embeddings) == (8192, 1024, 0)
    assert cfg.chunk_len == 8192 - 1024
    assert cfg.sparse_attention_enabled is False
    assert cfg.sparse_attention_threshold == DEFAULT_SPARSE_THRESHOLD
    assert cfg.sparse_attention_last_q == DEFAULT_LAST_Q
    # With no original_max_position_embeddings YaRN is off at any length.
    assert float(yarn_logit_scale(torch.tensor([10**7]), cfg)[0]) == 1.0


def test_sparse_enabled_inferred_from_sparse_attention_config_key():
    raw = dict(QWEN_1M, sparse_attention_config={"some": "thing"})
    assert DCAConfig.from_dict(raw).sparse_attention_enabled is True
    assert DCAConfig.from_dict(dict(raw, sparse_attention_enabled=False)).sparse_attention_enabled is False
    assert DCAConfig.from_dict(dict(QWEN_1M, sparse_attention_enabled=True)).sparse_attention_enabled is True


def test_explicit_sparse_settings_are_read():
    cfg = DCAConfig.from_dict(
        dict(QWEN_1M, sparse_attention_enabled=True, sparse_attention_threshold=0, sparse_attention_last_q=128)
    )
    assert (cfg.sparse_attention_threshold, cfg.sparse_attention_last_q) == (0, 128)


def test_config_is_frozen():
    cfg = DCAConfig(16, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.chunk_size = 32  # type: ignore[misc]


# (raw dual_chunk_attention_config, substrings the message must contain: field, value, rule)
_BAD_DCA = [
    ({"chunk_size": 100, "local_size": 100}, ["local_size", "100", "< chunk_size"]),
    ({"chunk_size": 100, "local_size": 250}, ["local_size", "250", "< chunk_size", "100"]),
    ({"chunk_size": 100, "local_size": -1}, ["local_size", "-1", ">= 0"]),
    ({"chunk_size": 0, "local_size": 0}, ["chunk_size", "0", "> 0"]),
    ({"chunk_size": -8, "local_size": 0}, ["chunk_size", "-8", "> 0"]),
    ({"chunk_size": "8192"}, ["chunk_size", "'8192'", "integer"]),
    ({"chunk_size": 8192.0}, ["chunk_size", "8192.0", "integer"]),
    ({"chunk_size": True}, ["chunk_size", "True", "integer"]),
    ({"local_size": False}, ["local_size", "False", "integer"]),
    ({"local_size": [1024]}, ["local_size", "[1024]", "integer"]),
    ({"chunk_size": None}, ["chunk_size", "required"]),
    ({"original_max_position_embeddings": -1}, ["original_max_position_embeddings", "-1", ">= 0"]),
    ({"original_max_position_embeddings": 262144.0}, ["original_max_position_embeddings", "262144.0", "integer"]),
    ({"sparse_attention_threshold": -1}, ["sparse_attention_threshold", "-1", ">= 0"]),
    ({"sparse_attention_threshold": True}, ["sparse_attention_threshold", "True", "integer"]),
    ({"sparse_attention_last_q": 0}, ["sparse_attention_last_q", "0", "> 0"]),
    ({"sparse_attention_last_q": -64}, ["sparse_attention_last_q", "-64", "> 0"]),
    ({"sparse_attention_enabled": "yes"}, ["sparse_attention_enabled", "'yes'", "true or false"]),
    ({"sparse_attention_enabled": 1}, ["sparse_attention_enabled", "1", "true or false"]),
]


@pytest.mark.parametrize("raw,needles", _BAD_DCA, ids=[str(i) for i in range(len(_BAD_DCA))])
@pytest.mark.parametrize("via", ["dict", "object"])
def test_dca_config_errors_name_field_value_rule(raw, needles, via):
    hf = {"dual_chunk_attention_config": raw}
    if via == "object":
        hf = types.SimpleNamespace(**hf)
    with pytest.raises(ConfigError) as ei:
        DCAConfig.from_hf_config(hf)
    msg = str(ei.value)
    assert "dual_chunk_attention_config" in msg
    for needle in needles:
        assert needle in msg, f"{needle!r} missing from {msg!r}"


@pytest.mark.parametrize("raw", [[262144, 8192], "chunk_size=262144", 7])
def test_dca_config_not_an_object(raw):
    with pytest.raises(ConfigError, match=r"dual_chunk_attention_config must be a JSON object, got " + type(raw).__name__):
        DCAConfig.from_hf_config({"dual_chunk_attention_config": raw})


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        DCAConfig(10, 10)


@pytest.mark.parametrize("chunk,local", [(10, 10), (10, 11), (10, -1), (0, 0)])
def test_direct_construction_validates(chunk, local):
    with pytest.raises(ConfigError):
        DCAConfig(chunk, local)


@given(chunk=st.integers(1, 10**6), data=st.data())
def test_valid_configs_accepted(chunk, data):
    local = data.draw(st.integers(0, chunk - 1))
    cfg = DCAConfig.from_dict({"chunk_size": chunk, "local_size": local})
    assert cfg.chunk_len == chunk - local >= 1


# ---------------------------------------------------------------------------------------------------------------
# SparseBudgets
# ---------------------------------------------------------------------------------------------------------------


def _raw_budgets(num_layers: int, num_heads: int) -> list[dict]:
    """Distinct, recognisable budgets: layer l head h -> vertical 1000*l + h, slash 100*h + l."""
    return [
        {str(h): [VERTICAL_SLASH, 1000 * l + h, 100 * h + l, None] for h in range(num_heads)}
        for l in range(num_layers)
    ]


@pytest.fixture(scope="module")
def real_raw():
    return json.loads(SPARSE_JSON.read_text())


@pytest.fixture(scope="module")
def real_budgets():
    return SparseBudgets.from_json(SPARSE_JSON, num_layers=28, num_heads=28)


def test_real_sparse_config_known_values(real_budgets):
    b = real_budgets
    assert (b.num_layers, b.num_heads) == (28, 28)
    assert b.heads[0][0] == HeadBudget(VERTICAL_SLASH, 9192, 14288, None)
    assert (b.heads[0][6].vertical, b.heads[0][6].slash) == (30, 800)
    assert (b.heads[0][1].vertical, b.heads[0][1].slash) == (1000, 6096)
    assert (b.heads[27][27].vertical, b.heads[27][27].slash) == (3048, 8144)


def test_real_sparse_config_matches_raw_json_everywhere(real_budgets, real_raw):
    for l, layer in enumerate(real_raw):
        for key, entry in layer.items():
            hb = real_budgets.heads[l][int(key)]
            assert [hb.pattern, hb.vertical, hb.slash, hb.score] == entry[:3] + [entry[3] if len(entry) > 3 else None]
    # to_list reproduces the file exactly (same keys, same 4-element entries).
    assert real_budgets.to_list() == real_raw


def test_real_sparse_config_without_counts(real_budgets):
    assert SparseBudgets.from_json(str(SPARSE_JSON)) == real_budgets


def test_heads_ordered_numerically_not_lexicographically():
    # Insertion order scrambled (and "10" sorts before "2" as a string): head index must follow the integer key.
    raw = _raw_budgets(2, 12)
    scrambled = [dict(sorted(layer.items(), key=lambda kv: kv[0], reverse=True)) for layer in raw]
    b = SparseBudgets.from_list(scrambled, num_layers=2, num_heads=12)
    for l in range(2):
        for h in range(12):
            assert (b.heads[l][h].vertical, b.heads[l][h].slash) == (1000 * l + h, 100 * h + l)


def test_integer_head_keys_accepted():
    raw = _raw_budgets(2, 3)
    as_ints = [{int(k): v for k, v in layer.items()} for layer in raw]
    assert SparseBudgets.from_list(as_ints, 2, 3) == SparseBudgets.from_list(raw, 2, 3)


def test_three_element_entries_have_no_score():
    raw = [{"0": [VERTICAL_SLASH, 5, 6]}]
    assert SparseBudgets.from_list(raw).heads[0][0] == HeadBudget(VERTICAL_SLASH, 5, 6, None)


def test_wrong_layer_count(real_raw):
    with pytest.raises(ConfigError) as ei:
        SparseBudgets.from_list(real_raw, num_layers=27, num_heads=28)
    msg = str(ei.value)
    assert "sparse_attention_config" in msg and "28 layers" in msg and "num_hidden_layers=27" in msg


def test_wrong_head_count():
    raw = _raw_budgets(3, 6)
    with pytest.raises(ConfigError) as ei:
        SparseBudgets.from_list(raw, num_layers=3, num_heads=8)
    msg = str(ei.value)
    assert "sparse_attention_config[0]" in msg and "num_attention_heads=8" in msg
    assert re.search(r"\b6\b", msg), f"actual head count 6 not named in {msg!r}"


def test_layers_with_different_head_counts_without_num_heads():
    raw = _raw_budgets(3, 6)
    del raw[2]["5"]
    with pytest.raises(ConfigError, match=r"different head counts \[5, 6\]"):
        SparseBudgets.from_list(raw)


@pytest.mark.parametrize(
    "mutate,bad",
    [
        (lambda layer: layer.pop("5"), "5"),  # missing head 5
        (lambda layer: layer.__setitem__("99", [VERTICAL_SLASH, 1, 1, None]), "99"),  # extra head 99
        (lambda layer: layer.__setitem__("x", layer.pop("13")), "x"),  # renamed head
        (lambda layer: layer.__setitem__("07", layer.pop("7")), "07"),  # zero-padded key
    ],
    ids=["missing-5", "extra-99", "non-numeric", "zero-padded"],
)
def test_bad_head_keys_are_named(mutate, bad):
    raw = _raw_budgets(4, 16)
    mutate(raw[3])
    with pytest.raises(ConfigError) as ei:
        SparseBudgets.from_list(raw, num_layers=4, num_heads=16)
    msg = str(ei.value)
    assert "sparse_attention_config[3]" in msg and "num_attention_heads=16" in msg
    # The message must name the offending key itself (the module promises "field, bad value and rule").
    assert re.search(rf"\b{re.escape(bad)}\b", msg), f"{bad!r} not named in {msg!r}"


_BAD_ENTRIES = [
    ([VERTICAL_SLASH, -1, 800, None], ["vertical_size", "-1", ">= 0"]),
    ([VERTICAL_SLASH, 30, -800, None], ["slash_size", "-800", ">= 0"]),
    (["a_shape", 30, 800, None], ["'a_shape'", "unknown", VERTICAL_SLASH]),
    (["block_sparse", 30, 800, None], ["'block_sparse'", "unknown"]),
    ([VERTICAL_SLASH, 30], ["[pattern, vertical_size, slash_size, score]", "['vertical_and_slash', 30]"]),
    ([], ["[pattern, vertical_size, slash_size, score]", "[]"]),
    ("vertical_and_slash", ["[pattern, vertical_size, slash_size, score]", "'vertical_and_slash'"]),
    ({"vertical": 30}, ["[pattern, vertical_size, slash_size, score]", "{'vertical': 30}"]),
    (None, ["[pattern, vertical_size, slash_size, score]", "None"]),
    ([VERTICAL_SLASH, "30", 800, None], ["vertical_size", "'30'", "integer"]),
    ([VERTICAL_SLASH, 30.5, 800, None], ["vertical_size", "30.5", "integer"]),
    ([VERTICAL_SLASH, 30, True, None], ["slash_size", "True", "integer"]),
    ([VERTICAL_SLASH, 30, 800, "high"], ["score", "'high'", "number"]),
    ([VERTICAL_SLASH, 30, 800, True], ["score", "True", "number"]),
]


@pytest.mark.parametrize("entry,needles", _BAD_ENTRIES, ids=[str(i) for i in range(len(_BAD_ENTRIES))])
def test_bad_entries_name_location_value_rule(entry, needles):
    raw = _raw_budgets(3, 5)
    raw[2]["4"] = entry
    with pytest.raises(ConfigError) as ei:
        SparseBudgets.from_list(raw, num_layers=3, num_heads=5)
    msg = str(ei.value)
    assert "sparse_attention_config[2]['4']" in msg, msg
    for needle in needles:
        assert needle in msg, f"{needle!r} missing from {msg!r}"


@pytest.mark.parametrize("raw,needle", [({"0": {}}, "dict"), ("[]", "str"), (None, "NoneType"), (b"x", "bytes")])
def test_top_level_not_a_list(raw, needle):
    with pytest.raises(ConfigError, match=r"sparse_attention_config must be a list.*" + needle):
        SparseBudgets.from_list(raw)


@pytest.mark.parametrize("layer", [[[VERTICAL_SLASH, 1, 1, None]], "x", None])
def test_layer_not_an_object(layer):
    raw = _raw_budgets(3, 2)
    raw[1] = layer
    with pytest.raises(ConfigError, match=r"sparse_attention_config\[1\] must be an object.*" + type(layer).__name__):
        SparseBudgets.from_list(raw)


def test_empty_budgets():
    b = SparseBudgets.from_list([])
    assert (b.num_layers, b.num_heads, b.to_list()) == (0, 0, [])


_head = st.builds(
    lambda v, s, score: [VERTICAL_SLASH, v, s, score],
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-5, 5)),
)


@given(data=st.data(), num_layers=st.integers(0, 5), num_heads=st.integers(1, 9))
def test_round_trip_to_list_from_list(data, num_layers, num_heads):
    raw = [
        {str(h): data.draw(_head) for h in range(num_heads)}
        for _ in range(num_layers)
    ]
    b = SparseBudgets.from_list(copy.deepcopy(raw), num_layers=num_layers, num_heads=num_heads if num_layers else None)
    assert b.to_list() == raw
    assert SparseBudgets.from_list(b.to_list()) == b
    # and through actual JSON text
    assert SparseBudgets.from_list(json.loads(json.dumps(b.to_list()))) == b


@pytest.mark.parametrize("tp_size", [1, 2, 4, 7, 14, 28])
def test_for_tp_rank_slices_contiguous_heads(real_budgets, tp_size):
    per = 28 // tp_size
    parts = [real_budgets.for_tp_rank(r, tp_size) for r in range(tp_size)]
    for r, part in enumerate(parts):
        assert (part.num_layers, part.num_heads) == (28, per)
        for l in range(28):
            assert part.heads[l] == real_budgets.heads[l][r * per : (r + 1) * per]
    # concatenating the ranks gives back the full model
    for l in range(28):
        assert sum((p.heads[l] for p in parts), ()) == real_budgets.heads[l]


def test_for_tp_rank_known_head(real_budgets):
    # head 6 of layer 0 is (30, 800); with tp=4 (7 heads per rank) it is rank 0's last head,
    # and head 0 of rank 1 is global head 7.
    assert real_budgets.for_tp_rank(0, 4).heads[0][6] == real_budgets.heads[0][6]
    assert (real_budgets.for_tp_rank(0, 4).heads[0][6].vertical, real_budgets.for_tp_rank(0, 4).heads[0][6].slash) == (30, 800)
    assert real_budgets.for_tp_rank(1, 4).heads[0][0] == real_budgets.heads[0][7]


@pytest.mark.parametrize(
    "rank,size,needles",
    [
        (4, 4, ["tp_rank", "4", "tp_size=4"]),
        (-1, 4, ["tp_rank", "-1"]),
        (0, 0, ["tp_size=0"]),
        (0, -2, ["tp_size=-2"]),
        (0, 3, ["num_heads=28", "tp_size=3", "divisible"]),
        (1, 8, ["num_heads=28", "tp_size=8", "divisible"]),
    ],
)
def test_for_tp_rank_errors(real_budgets, rank, size, needles):
    with pytest.raises(ConfigError) as ei:
        real_budgets.for_tp_rank(rank, size)
    for needle in needles:
        assert needle in str(ei.value)
