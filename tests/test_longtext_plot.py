"""``eval longtext-plot`` on the committed text-LM results: the whole-sequence rows it draws are the widest rows
starting at position 0, and the figure renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgl_qwen1m.evals.longtext_plot import whole_sequence_rows

RES = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "text-lm-h100"


def test_whole_sequence_rows_pick_the_widest_rows_from_position_zero():
    rows = json.loads((RES / "dense_text_lm_h100.json").read_text())["rows"]
    ppl = whole_sequence_rows(rows)["qwen1m-dense"]
    assert sorted(ppl) == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    for m, v in ppl.items():
        full = [r for r in rows if r["metric"] == "perplexity" and r["length_multiple"] == m
                and r["position_start"] == 0 and r["position_end"] == int(m * 2048)]
        assert full and all(r["value"] == v for r in full)  # at 1x the whole sequence is also the one window


def test_plot_renders(tmp_path):
    pytest.importorskip("matplotlib")
    from sgl_qwen1m.cli import main

    out = tmp_path / "p.png"
    files = [str(RES / f) for f in ("dense_text_lm_h100.json", "rope_text_lm_h100.json")]
    assert main(["eval", "longtext-plot", *files, "--out", str(out)]) == 0
    assert out.stat().st_size > 5000


def test_merge_keeps_every_row_once_and_names_each_run(tmp_path):
    from sgl_qwen1m.cli import main
    from sgl_qwen1m.evals.longtext_plot import in_length_rows, merge_longtext

    files = [RES / f for f in ("dense_text_lm_h100.json", "rope_text_lm_h100.json")]
    docs = [json.loads(f.read_text()) for f in files]
    doc = merge_longtext(files, "bash scripts/gpu/lm_chain.sh dense,rope")
    assert doc["rows"] == docs[0]["rows"] + docs[1]["rows"] and doc["command"].startswith("bash scripts/gpu")
    assert [r["command"] for r in doc["runs"]] == [d["command"] for d in docs]
    with pytest.raises(ValueError, match="qwen1m-dense"):
        merge_longtext([files[0], files[0]], "x")
    row = {"metric": "perplexity", "backend": "b", "length_multiple": 8, "case": "in-length windows", "value": 7.0,
           "position_start": 0, "position_end": 16384, "prompt_tokens": 16384}
    whole = dict(row, case="whole sequence", value=6.5)
    assert in_length_rows([row, whole]) == {"b": {8.0: row}}
    assert whole_sequence_rows([row, whole]) == {"b": {8.0: 6.5}}  # never the in-length row
    pytest.importorskip("matplotlib")
    out, merged = tmp_path / "p.png", tmp_path / "all.json"
    assert main(["eval", "longtext-plot", *map(str, files), "--out", str(out), "--merge-out", str(merged),
                 "--command", "cmd"]) == 0
    assert json.loads(merged.read_text())["command"] == "cmd" and out.exists()
