"""Long-context evaluation pieces on real text: perplexity by position, code retrieval (generation and scoring on a
tiny random model: no accuracy expected; correctness checked on cases with a known answer)."""

from __future__ import annotations

import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from sgl_qwen1m.evals.code_retrieval import code_samples, evaluate_code, make_code_sample, score_code
from sgl_qwen1m.evals.harness import aggregate
from sgl_qwen1m.evals.perplexity import (
    TorchScorer,
    concat_documents,
    nll_from_meta,
    position_edges,
    position_rows,
)
from sgl_qwen1m.evals.runners import TorchRunner
from sgl_qwen1m.model.text_data import train_tokenizer
from sgl_qwen1m.model.text_lm import lm_config
from sgl_qwen1m.model.torch_qwen2 import TinyQwen2

PKG = Path(__file__).resolve().parents[1] / "sgl_qwen1m"


@pytest.fixture(scope="module")
def code():
    texts = [p.read_text() for p in sorted((PKG / "ops").rglob("*.py"))]
    tok = train_tokenizer(iter(texts), 400)
    docs = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    return tok, docs


def tiny_lm(vocab: int, zero: bool = False) -> TinyQwen2:
    torch.manual_seed(0)
    m = TinyQwen2(lm_config(vocab, 512, 1, 2, 1, 64)).eval()
    if zero:
        torch.nn.init.zeros_(m.model.embed_tokens.weight)
    return m


def test_concat_documents_is_exact_and_seeded():
    docs = [[1, 2, 3], [4, 5], [6, 7, 8, 9]]
    a = concat_documents(docs, 8, seed=1)
    assert len(a) == 8 and a == concat_documents(docs, 8, seed=1) and a.count(0) == 2
    with pytest.raises(ValueError, match="fewer than"):
        concat_documents(docs, 50)


def test_position_rows_average_the_predicted_positions():
    nll = torch.arange(1, 10).float()  # nll[t] scores position t + 1 = value
    rows = position_rows(nll, position_edges(10, 4), backend="x")
    assert [(r["position_start"], r["position_end"], r["tokens"]) for r in rows] == [(0, 4, 3), (4, 8, 4), (8, 10, 2)]
    assert [r["nll"] for r in rows] == [2.0, 5.5, 8.5] and rows[0]["value"] == pytest.approx(math.exp(2.0))
    assert rows[0]["backend"] == "x" and rows[0]["metric"] == "perplexity"


def test_uniform_model_has_perplexity_vocab_at_every_position_with_and_without_dca():
    vocab = 64
    model = tiny_lm(vocab, zero=True)  # zero embeddings: every logit 0, p = 1 / vocab
    ids = [random.Random(0).randrange(vocab) for _ in range(1300)]  # 2.5x the 512-token training length: DCA path
    for m in (model, TinyQwen2(model.config, use_dca=False).eval()):
        m.load_state_dict(model.state_dict())
        nll = TorchScorer(m).token_nll(ids)
        rows = position_rows(nll, position_edges(len(ids), 512))
        assert len(rows) == 3 and all(r["value"] == pytest.approx(vocab, rel=1e-5) for r in rows)


def test_torch_scorer_matches_the_reference_prefill_past_the_training_length():
    model = tiny_lm(64)
    ids = [random.Random(1).randrange(64) for _ in range(1100)]
    nll = TorchScorer(model).token_nll(ids)
    logits, _ = model.prefill(ids[:-1])  # reference inference path (DCA, YaRN of the prompt length)
    want = F.cross_entropy(logits[None], torch.tensor([ids[-1]]))
    # the scorer's YaRN scale is the full sequence's (1100), the prefill's 1099: equal up to rounding here
    assert float(nll[-1]) == pytest.approx(float(want), abs=2e-3)


def test_nll_from_sglang_meta():
    meta = {"input_token_logprobs": [[None, 5, None], [-1.5, 6, None], [-0.25, 7, None]]}
    assert nll_from_meta(meta, 3).tolist() == [1.5, 0.25]
    with pytest.raises(ValueError, match="logprob_start_len=0"):
        nll_from_meta({"input_token_logprobs": meta["input_token_logprobs"][:2]}, 3)


def test_code_retrieval_prompts_and_scoring(code):
    tok, docs = code
    s = make_code_sample(tok, docs, 700, random.Random(0), depth=0.5)
    text = tok.decode(list(s.prompt_ids))
    assert len(s.prompt_ids) == 700 and 0.45 <= s.depth <= 0.6
    assert f'\n{s.name} = "{s.answers[0]}"\n' in text or text.startswith(f"{s.name} =")
    assert text.endswith(f'\n\nassert {s.name} == "') and text.count(s.name) == 2
    assert score_code(s, f'{s.answers[0]}"\n') == 1.0 and score_code(s, f' {s.answers[0]} "') == 1.0
    assert score_code(s, f'{s.answers[0]}0"') == 0.0 and score_code(s, "") == 0.0

    r = make_code_sample(tok, docs, 700, random.Random(0), depth=0.5, style="restate")
    assert (r.name, r.answers, r.task) == (s.name, s.answers, "code_retrieval_restate") and len(r.prompt_ids) == 700
    assert tok.decode(list(r.prompt_ids)).endswith(f'\n\n{r.name} = "')
    with pytest.raises(ValueError, match="unknown retrieval style 'ask'"):
        make_code_sample(tok, docs, 700, random.Random(0), style="ask")

    samples = code_samples(tok, docs, [1, 2], 2, 512, seed=3)
    assert [len(x.prompt_ids) for _, x in samples] == [472, 472, 984, 984]
    assert samples == code_samples(tok, docs, [1, 2], 2, 512, seed=3)

    class Oracle:  # answers every prompt correctly: checks the plumbing, not a model
        name = "oracle"

        def generate(self, prompts, max_new):
            by_prompt = {x.prompt_ids: x for _, x in samples}
            return [tok.encode(by_prompt[tuple(p)].answers[0] + '"', add_special_tokens=False).ids for p in prompts]

    rows = aggregate(evaluate_code(Oracle(), samples, tok))
    assert [(r["length_multiple"], r["value"]) for r in rows] == [(1, 1.0), (2, 1.0)]
    recs = evaluate_code(TorchRunner(model=tiny_lm(tok.get_vocab_size()), progress=False), samples[:2], tok)
    assert [r.score for r in recs] == [score_code(s, r.output_text) for (_, s), r in zip(samples[:2], recs)]
    assert all(0 < len(r.output_ids) <= 12 for r in recs)


def test_eval_longtext_verb_on_the_torch_reference(tmp_path):
    import json

    from sgl_qwen1m.cli import main
    from sgl_qwen1m.model.text_data import build_dataset

    data, out = tmp_path / "data", tmp_path / "lm"
    build_dataset([PKG / "ops"], data, vocab_size=400, heldout_pct=40.0)
    assert main(["train-lm", "--data", str(data), "--out", str(out), "--preset", "smoke", "--steps", "2",
                 "--batch", "1", "--micro-batch", "1", "--eval-windows", "1", "--device", "cpu",
                 "--probe-every", "1", "--probe-samples", "1"]) == 0
    meta = json.loads((out / "training_log.json").read_text())  # in-length retrieval probed during training
    assert [p["step"] for p in meta["retrieval_probes"]] == [1, 2] and meta["probe_seconds"] > 0
    tasks = {"step", "tokens", "code_retrieval", "code_retrieval_restate"}
    assert all(set(p) == tasks for p in meta["retrieval_probes"])
    assert all(0.0 <= p["code_retrieval"] <= 1.0 for p in meta["retrieval_probes"])
    assert main(["train-lm", "--data", str(data), "--out", str(out), "--probe-every", "-1", "--device", "cpu"]) == 1
    res = tmp_path / "res.json"
    assert main(["eval", "longtext", "--model", str(out), "--data", str(data), "--multiples", "1,2", "--samples", "1",
                 "--ppl-seqs", "1", "--model-name", "smoke-lm", "--out", str(res)]) == 0
    rows = json.loads(res.read_text())["rows"]
    ppl = [r for r in rows if r["metric"] == "perplexity"]
    assert {r["length_multiple"] for r in ppl} == {1, 2} and all(r["model"] == "smoke-lm" for r in rows)
    assert [r["case"] for r in ppl if r["length_multiple"] == 2] == [
        "positions 0-512", "positions 512-1024", "whole sequence", "in-length windows"]
    assert [r["case"] for r in ppl if r["length_multiple"] == 1] == ["whole sequence"]
    alone = next(r for r in ppl if r["case"] == "in-length windows")
    assert alone["tokens"] == 2 * 511 and alone["prompt_tokens"] == 1024
    assert alone["ratio"] == pytest.approx(alone["long_context_value"] / alone["value"])
    from sgl_qwen1m.bench.results import validate

    assert validate(json.loads(res.read_text())) == []
    acc = [r for r in rows if r["metric"] == "accuracy"]
    assert [(r["task"], r["length_multiple"], r["samples"]) for r in acc] == [
        ("code_retrieval", 1, 1), ("code_retrieval", 2, 1), ("code_retrieval_restate", 1, 1),
        ("code_retrieval_restate", 2, 1)]
    from sgl_qwen1m.evals.harness import read_records

    recs = read_records(res)
    assert [(r["task"], r["length_multiple"]) for r in recs] == [(r["task"], r["length_multiple"]) for r in acc]
    assert all(r["score"] == float(r["output_text"].split('"', 1)[0].strip() == r["answers"][0]) for r in recs)
    with pytest.raises(SystemExit):
        main(["eval", "longtext", "--model", str(out), "--data", str(data), "--retrieval-styles", "ask"])


def test_retrieval_breakdown_counts_first_digit_first_three_and_exact(capsys):
    from pathlib import Path

    from sgl_qwen1m.cli import main
    from sgl_qwen1m.evals.code_retrieval import prefix_breakdown

    def rec(out, score, task="code_retrieval", m=1.0, backend="b"):
        return {"backend": backend, "task": task, "length_multiple": m, "answers": ["482913"], "output_text": out,
                "score": score}

    rows = prefix_breakdown([rec('482913"', 1.0), rec(' 48291"', 0.0), rec('4x', 0.0), rec("", 0.0),
                             rec('123', 0.0, m=2.0), rec("x", 0.0, task="passkey")])
    assert rows == [
        {"backend": "b", "task": "code_retrieval", "length_multiple": 1.0, "prompts": 4, "first_digit": 3,
         "first_3": 2, "exact": 1},
        {"backend": "b", "task": "code_retrieval", "length_multiple": 2.0, "prompts": 1, "first_digit": 0,
         "first_3": 0, "exact": 0},
    ]
    committed = Path(__file__).parent.parent / "benchmarks/results/text-lm-h100/dense_text_lm_h100.records.json.gz"
    assert main(["eval", "retrieval-breakdown", str(committed)]) == 0
    out = capsys.readouterr().out
    assert "code_retrieval_restate" in out and len(out.splitlines()) == 13  # header + 2 tasks x 6 lengths
