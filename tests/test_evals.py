"""Task generators, scoring, the harness, the runners (torch, HTTP) and the demo CLI on CPU."""

from __future__ import annotations

import json
import random
import re
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch

from sgl_qwen1m.cli import main as cli_main
from sgl_qwen1m.evals.harness import (
    RESERVE,
    aggregate,
    agreement_rows,
    evaluate,
    format_table,
    make_samples,
    prompt_length,
    read_records,
    write_records,
    write_results,
)
from sgl_qwen1m.evals.runners import EOS_ID, HttpRunner, TorchRunner
from sgl_qwen1m.model.tasks import TASKS, Sample, TaskBuilder, parse_answer, score_output
from sgl_qwen1m.model.spec import make_config, write_model_dir
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2
from sgl_qwen1m.model.vocab import build_tokenizer

BUILDER = TaskBuilder()


class OracleRunner:
    """Answers every prompt with its target (or garbage)."""

    def __init__(self, targets: dict[tuple[int, ...], tuple[int, ...]], wrong: bool = False, name: str = "oracle"):
        self.targets, self.wrong, self.name = targets, wrong, name

    def generate(self, prompts, max_new_tokens):
        return [[7, 7, EOS_ID] if self.wrong else list(self.targets[tuple(p)]) for p in prompts]

    def close(self) -> None:
        pass


def _recover(sample: Sample) -> list[str]:
    """Solve a sample from its prompt text alone (proves the answer is in the prompt)."""
    text = sample.prompt_text
    if sample.task == "passkey":
        return [re.search(r"the pass key is (\d+)\.", text).group(1)]
    if sample.task == "variable_tracking":
        value = re.search(r"assigned the value (\d+)\?", text).group(1)
        assign = dict(re.findall(r"var (\w+) = (\w+)\.", text))
        chain, frontier = [], {value}
        for _ in range(len(assign)):
            new = [x for x, y in assign.items() if y in frontier and x not in chain]
            chain += new
            frontier = set(new)
        return chain
    key = re.search(r"magic numbers? for (\w+)\?", text).group(1)
    return re.findall(rf"the special magic number for {key} is (\d+)\.", text)


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("length", [160, 333, 1024, 4096])
def test_generator_hits_length_and_answer_is_recoverable(task: str, length: int) -> None:
    tok = build_tokenizer()
    for seed in range(3):
        s = BUILDER.make(task, length, random.Random(seed))
        assert len(s.prompt_ids) == length
        assert tok.encode(s.prompt_text).ids == list(s.prompt_ids)
        assert _recover(s) == list(s.answers)
        assert score_output(s, BUILDER.decode(s.target_ids)) == 1.0
        assert s.target_ids[-1] == EOS_ID and 0 not in s.prompt_ids
    assert BUILDER.make(task, length, random.Random(7)) == BUILDER.make(task, length, random.Random(7))


def test_needle_depth_varies() -> None:
    depths = set()
    for seed in range(20):
        s = BUILDER.make("passkey", 1000, random.Random(seed))
        depths.add(s.prompt_text.index("the pass key is") * 10 // len(s.prompt_text))
    assert len(depths) >= 6


def test_too_short_prompt_is_rejected() -> None:
    with pytest.raises(ValueError, match="too short"):
        BUILDER.make("niah_multivalue", 50, random.Random(0))


def test_parse_and_score() -> None:
    s = BUILDER.make("niah_multivalue", 300, random.Random(0))
    a = list(s.answers)
    assert parse_answer(" 12, 34. more") == ["12", "34"]
    assert score_output(s, " " + ", ".join(a) + ".") == 1.0
    assert score_output(s, " " + ", ".join(a[:2]) + ".") == 0.5
    p = BUILDER.make("passkey", 300, random.Random(0))
    assert score_output(p, f" {p.answers[0]}.") == 1.0
    assert score_output(p, f" {p.answers[0]}1.") == 0.0
    assert score_output(p, f" {p.answers[0]}, 5.") == 0.0


def test_make_samples_is_deterministic_per_cell() -> None:
    a = make_samples(["passkey", "niah_single"], [1, 2], 2, train_len=256, seed=3)
    b = make_samples(["niah_single"], [2], 2, train_len=256, seed=3)
    assert len(a) == 8 and [s for m, s in a if s.task == "niah_single" and m == 2] == [s for _, s in b]
    assert {len(s.prompt_ids) for m, s in a if m == 1} == {prompt_length(1, 256)} == {256 - RESERVE}


def test_evaluate_aggregate_agreement_and_results(tmp_path: Path) -> None:
    work = make_samples(list(TASKS), [1, 2], 2, train_len=256)
    targets = {s.prompt_ids: s.target_ids for _, s in work}
    good = evaluate(OracleRunner(targets, name="good"), work)
    bad = evaluate(OracleRunner(targets, wrong=True, name="bad"), work)
    rows = aggregate(good + bad)
    assert {r["value"] for r in rows if r["backend"] == "good"} == {1.0}
    assert {r["value"] for r in rows if r["backend"] == "bad"} == {0.0}
    assert all(set(r) >= {"metric", "backend", "task", "length_multiple", "prompt_tokens", "value"} for r in rows)
    agree = agreement_rows(good, good)
    assert agree[-1]["task"] == "all" and agree[-1]["value"] == 1.0
    assert agreement_rows(good, bad)[-1]["value"] == 0.0
    table = format_table(rows, ["good", "bad"])
    assert "100.0 %" in table and "0.0 %" in table
    path = write_results(tmp_path / "r.json", rows, "cmd", good)
    doc = json.loads(path.read_text())
    assert set(doc) >= {"command", "gpu", "versions", "date", "rows"} and doc["records_file"] == "r.records.json.gz"
    recs = read_records(path)
    assert len(recs) == len(good) and recs[0]["score"] == 1.0 and recs[0]["backend"] == "good"
    assert (tmp_path / "r.records.json.gz").read_bytes() == write_records(tmp_path / "s.json", recs).read_bytes()


def test_http_runner_posts_input_ids() -> None:
    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            seen.append((self.path, body))
            out = json.dumps({"text": "x", "output_ids": body["input_ids"][:2] + [EOS_ID]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

        def log_message(self, *args) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        runner = HttpRunner(f"http://127.0.0.1:{server.server_port}", timeout=10)
        assert runner.generate([[5, 6, 7], [8, 9]], [4, 3]) == [[5, 6, EOS_ID], [8, 9, EOS_ID]]
    finally:
        server.shutdown()
    assert seen[0][0] == "/generate" and seen[0][1]["sampling_params"]["temperature"] == 0.0
    assert seen[1][1]["sampling_params"]["max_new_tokens"] == 3


def _random_model_dir(path: Path, seq_len: int = 128) -> Path:
    cfg = make_config(seq_len=seq_len, num_layers=2, intermediate_size=64, local_size=16)
    write_model_dir(path, cfg)
    torch.manual_seed(0)
    TinyQwen2(cfg).save_weights(path)
    return path


def test_torch_runner_dca_vs_rope_on_random_model(tmp_path: Path) -> None:
    model = _random_model_dir(tmp_path)
    work = make_samples(["passkey"], [2], 1, train_len=128)
    dca = evaluate(TorchRunner(model, progress=False), work)
    rope = evaluate(TorchRunner(model, use_dca=False, progress=False), work)
    assert dca[0].backend == "reference-dca" and rope[0].backend == "reference-rope"
    assert 1 <= len(dca[0].output_ids) <= work[0][1].max_new_tokens
    # Each runner's output is the greedy continuation of the sample's prompt by its own attention (DCA or plain
    # RoPE), and at 2x the training length the two attentions give different logits (the runner really switches).
    prompt, n = list(work[0][1].prompt_ids), work[0][1].max_new_tokens
    by_dca = TinyQwen2.from_pretrained(model, use_dca=True)
    by_rope = TinyQwen2.from_pretrained(model, use_dca=False)
    for rec, m in ((dca[0], by_dca), (rope[0], by_rope)):
        want = m.generate(prompt, n)
        assert list(rec.output_ids) == (want[: want.index(EOS_ID)] if EOS_ID in want else want)
    assert not torch.allclose(by_dca.prefill(prompt)[0], by_rope.prefill(prompt)[0], atol=1e-4)


def test_demo_cli_on_cpu_prints_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = _random_model_dir(tmp_path / "m")
    out = tmp_path / "demo.json"
    cli_main(
        [
            "demo",
            "--device",
            "cpu",
            "--model",
            str(model),
            "--samples",
            "1",
            "--multiples",
            "1,2",
            "--tasks",
            "passkey,niah_single",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert "Reference path" in text and "DCA (reference)" in text and "RoPE (reference)" in text
    assert re.search(r"passkey\s+2\s+216\s", text)
    rows = json.loads(out.read_text())["rows"]
    assert {r["backend"] for r in rows} == {"reference-dca", "reference-rope"} and len(rows) == 8


def test_bundled_model_extrapolates_with_dca_not_rope(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The README's CPU main job on the committed weights: DCA keeps passkey past the training length, RoPE loses it."""
    out = tmp_path / "demo.json"
    cli_main(["demo", "--device", "cpu", "--samples", "3", "--multiples", "1,2", "--tasks", "passkey", "--out", str(out)])
    acc = {(r["backend"], r["length_multiple"]): r["value"] for r in json.loads(out.read_text())["rows"]}
    assert acc[("reference-dca", 1.0)] == 1.0 and acc[("reference-rope", 1.0)] == 1.0
    assert acc[("reference-dca", 2.0)] == 1.0, acc
    assert acc[("reference-rope", 2.0)] <= 1 / 3, acc


def test_demo_without_weights_says_how_to_train(tmp_path: Path) -> None:
    write_model_dir(tmp_path, make_config(seq_len=128))
    with pytest.raises(SystemExit, match="python -m sgl_qwen1m train"):
        cli_main(["demo", "--device", "cpu", "--model", str(tmp_path)])
