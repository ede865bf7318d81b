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
