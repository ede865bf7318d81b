"""``eval longtext-plot`` on the committed text-LM results: the whole-sequence rows it draws are the widest rows
starting at position 0, and the figure renders."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sgl_qwen1m.evals.longtext_plot import whole_sequence_rows

RES = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "text-lm-h100"


def test_whole_sequence_rows_pick_the_widest_rows_from_position_zero():
    rows = [r for r in json.loads((RES / "text_lm_h100.json").read_text())["rows"] if r["backend"] == "qwen1m-dense"]
    ppl = whole_sequence_rows(rows)["qwen1m-dense"]
    assert sorted(ppl) == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0]
    for m, v in ppl.items():
        full = [r for r in rows if r["metric"] == "perplexity" and r["length_multiple"] == m
                and r["position_start"] == 0 and r["position_end"] == int(m * 2048)
                and r["case"] != "in-length windows"]
        assert full and all(r["value"] == v for r in full)  # at 1x the whole sequence is also the one window


def test_plot_renders(tmp_path):
    pytest.importorskip("matplotlib")
    from sgl_qwen1m.cli import main

    out = tmp_path / "p.png"
    assert main(["eval", "longtext-plot", str(RES / "text_lm_h100.json"), "--out", str(out)]) == 0
    assert out.stat().st_size > 5000


def test_merge_keeps_every_row_once_and_names_each_run(tmp_path):
    from sgl_qwen1m.cli import main
    from sgl_qwen1m.evals.longtext_plot import in_length_rows, merge_longtext

    doc = json.loads((RES / "text_lm_h100.json").read_text())  # the committed merge of five eval files
    files = []
    for b in ("qwen1m-dense", "flashinfer-rope"):  # split it back into per-backend files, then merge again
        f = tmp_path / f"{b}.json"
        f.write_text(json.dumps(dict(doc, command=f"eval {b}", rows=[r for r in doc["rows"] if r["backend"] == b])))
        files.append(f)
    docs = [json.loads(f.read_text()) for f in files]
    merged = merge_longtext(files, "bash scripts/gpu/lm_chain.sh dense,rope")
    assert merged["rows"] == docs[0]["rows"] + docs[1]["rows"] and merged["command"].startswith("bash scripts/gpu")
    assert [r["command"] for r in merged["runs"]] == ["eval qwen1m-dense", "eval flashinfer-rope"]
    with pytest.raises(ValueError, match="qwen1m-dense"):
        merge_longtext([files[0], files[0]], "x")
    dense_alone = in_length_rows(docs[0]["rows"])["qwen1m-dense"]
    assert sorted(dense_alone) == [2.0, 4.0, 8.0, 16.0, 32.0] and all(r["ratio"] > 0 for r in dense_alone.values())
    row = {"metric": "perplexity", "backend": "b", "length_multiple": 8, "case": "in-length windows", "value": 7.0,
           "position_start": 0, "position_end": 16384, "prompt_tokens": 16384}
    whole = dict(row, case="whole sequence", value=6.5)
    assert in_length_rows([row, whole]) == {"b": {8.0: row}}
    assert whole_sequence_rows([row, whole]) == {"b": {8.0: 6.5}}  # never the in-length row
    pytest.importorskip("matplotlib")
    out, again = tmp_path / "p.png", tmp_path / "all.json"
    assert main(["eval", "longtext-plot", *map(str, files), "--out", str(out), "--merge-out", str(again),
                 "--command", "cmd"]) == 0
    assert json.loads(again.read_text())["command"] == "cmd" and out.exists()


def test_loss_plot_from_the_committed_training_log(tmp_path):
    pytest.importorskip("matplotlib")
    from sgl_qwen1m.cli import main

    out = tmp_path / "loss.png"
    assert main(["eval", "loss-plot", str(RES / "model" / "training_log.json"), "--out", str(out)]) == 0
    assert out.stat().st_size > 3000


def test_merge_adds_greedy_agreement_from_the_records(tmp_path):
    import shutil

    from sgl_qwen1m.evals.longtext_plot import merge_longtext

    doc = json.loads((RES / "text_lm_h100.json").read_text())
    files = []
    for b, stem in (("qwen1m-dense", "dense"), ("flashinfer-rope", "rope")):
        rec = f"{stem}_text_lm_h100.records.json.gz"
        shutil.copy(RES / rec, tmp_path / rec)
        f = tmp_path / f"{stem}.json"
        f.write_text(json.dumps(dict(doc, records_file=rec, rows=[r for r in doc["rows"] if r["backend"] == b])))
        files.append(f)
    rows = merge_longtext(files, "cmd", agree_with="qwen1m-dense")["rows"]
    agree = [r for r in rows if r["metric"] == "greedy_agreement"]
    committed = [r for r in doc["rows"] if r["metric"] == "greedy_agreement" and r["backend"].startswith("flashinfer")]
    assert agree == committed and agree[-1]["task"] == "all" and agree[-1]["samples"] == 240
    with pytest.raises(ValueError, match="no per-prompt records of that backend"):
        merge_longtext(files, "cmd", agree_with="qwen1m-sparse")


def test_refine_report_rows_match_the_committed_report():
    import gzip

    from sgl_qwen1m.evals.longtext_plot import refine_rows

    report = json.loads(gzip.decompress((RES / "model" / "refined_32k.report.json.gz").read_bytes()))
    rows = refine_rows(report, "text-lm", 2048)
    got = {(r["metric"], r["backend"]): r for r in rows}
    s = report["summary"]
    assert got[("recall_min", "qwen1m-sparse-start")]["value"] == s["recall_min_over_heads_before"]
    assert got[("recall_min", "qwen1m-sparse-refined")]["value"] == s["recall_min_over_heads_after"] >= s["target"]
    assert got[("recall", "qwen1m-sparse-refined")]["value"] > got[("recall", "qwen1m-sparse-start")]["value"]
    assert all(r["length_multiple"] == 16.0 and r["prompt_tokens"] == 32768 for r in rows)
    committed = [r for r in json.loads((RES / "text_lm_h100.json").read_text())["rows"]
                 if r.get("task") == "refine_calibration"]
    assert committed == rows
