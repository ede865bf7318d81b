"""The results header (``sgl_qwen1m.provenance``): one builder for bench, evals and refine."""

import datetime as dt

import torch

from sgl_qwen1m import __version__
from sgl_qwen1m.bench.results import _REQUIRED, validate
from sgl_qwen1m.provenance import collect_versions, header, now_iso, short_gpu_name


def test_header_has_the_results_fields_in_order_and_validates():
    h = header("python -m sgl_qwen1m x", gpu="cpu", rows=[{"metric": "m", "backend": "b", "prompt_tokens": 1,
                                                           "value": 1.0}])
    assert list(h)[:4] == ["command", "gpu", "versions", "date"] and set(_REQUIRED) <= set(h)
    assert validate(h) == []
    assert h["versions"]["sgl_qwen1m"] == __version__ and h["versions"]["torch"] == torch.__version__
    assert dt.datetime.fromisoformat(h["date"]).utcoffset() == dt.timedelta(0)  # UTC


def test_versions_and_gpu_names():
    v = collect_versions(with_torch_cuda=False, packages=("torch", "no-such-package-xyz"))
    assert set(v) == {"torch", "sgl_qwen1m", "python"}
    assert short_gpu_name(torch.device("cpu")) == "cpu"
    assert "," not in header("c")["gpu"]  # the name alone, never nvidia-smi's memory and driver columns
    assert dt.datetime.fromisoformat(now_iso(utc=False)).utcoffset() is not None


def test_jsonout_round_rounds_one_metric_in_place_and_says_so(tmp_path):
    import json

    from sgl_qwen1m.jsonout import main, round_floats

    assert round_floats({"a": [1.23456789, 2, "x", True], "b": 1e-9 / 3}, 4) == {"a": [1.235, 2, "x", True],
                                                                               "b": 3.333e-10}
    f = tmp_path / "r.json"
    rows = [{"metric": "perplexity", "backend": "b", "prompt_tokens": 1, "value": 7.123456789012, "n": 3},
            {"metric": "recall", "backend": "b", "prompt_tokens": 1, "value": 0.950439215087}]
    f.write_text(json.dumps({"command": "c", "rows": rows}))
    assert main(["round", str(f), "--digits", "7", "--metric", "perplexity"]) == 0
    doc = json.loads(f.read_text())
    assert doc["rows"][0] == dict(rows[0], value=7.123457) and doc["rows"][1] == rows[1]  # other metrics untouched
    assert "7 significant digits" in doc["rounded"] and "--metric perplexity" in doc["rounded"]
    import pytest

    with pytest.raises(SystemExit):
        main(["round", str(f), "--digits", "2"])


def test_jsonout_reflow_keeps_values_and_puts_each_row_on_one_line(tmp_path):
    import json

    import pytest

    from sgl_qwen1m.jsonout import load, main, write

    rows = [{"metric": "survived", "backend": "qwen1m-dense", "prompt_tokens": 16, "value": 1.0, "case": f"c{i}",
             "what": "x" * 150} for i in range(8)]
    doc = {"command": "c", "rows": rows}
    plain, packed = tmp_path / "r.json", tmp_path / "r.records.json.gz"
    plain.write_text(json.dumps(doc, indent=1))
    write(packed, doc, width=100)
    assert main(["reflow", str(plain), str(packed), "--width", "1000"]) == 0
    assert load(plain) == doc and load(packed) == doc
    lines = plain.read_text().splitlines()
    assert sum(ln.strip().startswith('{"metric"') for ln in lines) == 8  # ~220-char rows, one a line
    with pytest.raises(SystemExit):
        main(["reflow", str(plain), "--width", "10"])
