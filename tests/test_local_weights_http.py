"""The -local weights reach a server started separately: the payload ``bench local-weights`` POSTs is SGLang's own
serializer output, and an unrelated process (not a child of this one, as ``launch_server`` is not) rebuilds the exact
tensors from it. The request's fields are those of SGLang's ``UpdateWeightsFromTensorReqInput``."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import typing

import pytest
import torch

pytest.importorskip("sglang")

READ_BACK = """
import base64, sys, torch
from sglang.srt.utils.common import MultiprocessingSerializer
named = MultiprocessingSerializer.deserialize(base64.b64decode(sys.stdin.read()))
for name, t in named:
    print(name, "x".join(map(str, t.shape)), str(t.dtype).replace("torch.", ""), float(t.double().sum()))
"""


def test_an_unrelated_process_rebuilds_the_local_weights_from_the_http_payload():
    from sgl_qwen1m.adapter.engine import serialize_named_tensors
    from sgl_qwen1m.bench.local_weights import local_attention_tensors

    config = json.loads(open("benchmarks/models/qwen3-30b-a3b-2507-1m-l4-shape/config.json").read())
    named = local_attention_tensors(config)[:6]  # the embedding (a strided view) and the first layer's tensors
    payload = serialize_named_tensors(named)
    out = subprocess.run([sys.executable, "-c", READ_BACK], input=payload, capture_output=True, text=True,
                         timeout=300, start_new_session=True)  # its own session: no shared resource sharer
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.split("\n")
    for (name, t), line in zip(named, lines):
        got_name, shape, dtype, total = line.split(" ")
        assert (got_name, shape, dtype) == (name, "x".join(map(str, t.shape)), str(t.dtype).replace("torch.", ""))
        assert float(total) == pytest.approx(float(t.double().sum()), rel=1e-12, abs=1e-9)
    assert torch.multiprocessing.get_sharing_strategy() != "file_system"  # the caller's strategy is restored


def test_the_request_fields_exist_in_sglangs_update_request():
    from sglang.srt.managers.io_struct import UpdateWeightsFromTensorReqInput

    fields = set(getattr(UpdateWeightsFromTensorReqInput, "__struct_fields__", ()))
    if not fields and dataclasses.is_dataclass(UpdateWeightsFromTensorReqInput):
        fields = {f.name for f in dataclasses.fields(UpdateWeightsFromTensorReqInput)}
    fields = fields or set(typing.get_type_hints(UpdateWeightsFromTensorReqInput, include_extras=False))
    assert {"serialized_named_tensors", "flush_cache"} <= fields
