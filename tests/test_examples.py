"""The example frontend programs run end to end on the CPU: real SGLang frontend interpreter, the package's
in-process backend, and the bundled model through the fp32 torch reference engine.

The bundled model learned passkey retrieval (100% at 1x-2x its training length), so wherever a program can be
given a passkey prompt the test checks the planted key comes back. Where the tiny model cannot do the task (needle
QA, summaries) the test checks what the program's structure implies: which prompts reach the engine (recorded
below), with which sampling settings, how fork outputs are gathered and in which order, and that greedy decoding
gives the same text twice.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

pytest.importorskip("sglang")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

PLANTED = re.compile(r"the pass key is (\d{5})\. remember it\. \1 is the pass key\.")
PASSKEY_QUESTION = "what is the pass key? the pass key is"


@pytest.fixture(scope="module")
def engine():
    import sglang as sgl

    from sgl_qwen1m.frontend import ReferenceEngine, engine_backend

    eng = ReferenceEngine()
    sgl.set_default_backend(engine_backend(eng, eng.model_dir))
    return eng


@pytest.fixture
def sent(engine, monkeypatch) -> list[tuple[str, dict, dict]]:
    """(prompt, sampling_params, engine output) of every generating request the frontend sends, in arrival order."""
    seen: list[tuple[str, dict, dict]] = []
    real = engine.generate

    def record(prompt=None, sampling_params=None, **kw):
        out = real(prompt, sampling_params, **kw)
        if (sampling_params or {}).get("max_new_tokens"):
            seen.append((prompt, dict(sampling_params), out))
        return out

    monkeypatch.setattr(engine, "generate", record)
    return seen


def _passkey_prompts(engine, multiple: float, n: int) -> list[tuple[str, str]]:
    """(prompt text, planted key) of the examples' own passkey samples (seed 0)."""
    from sgl_qwen1m.evals.harness import make_samples
    from sgl_qwen1m.model.spec import read_config, train_length

    work = make_samples(["passkey"], [multiple], n, train_length(read_config(engine.model_dir)), 0)
    return [(smp.prompt_text, smp.answers[0]) for _, smp in work]


def _planted_key(prompt: str) -> str:
    (key,) = PLANTED.findall(prompt)
    return key


def test_passkey_eval_batch_returns_every_planted_key(engine, sent):
    import passkey_eval

    from sgl_qwen1m.model.spec import read_config, train_length

    acc = passkey_eval.run(str(engine.model_dir), [1.0, 2.0], samples=3)
    assert acc == {1.0: 1.0, 2.0: 1.0}
    # One greedy request per sample; each prompt plants one key and asks for it, and the answer is that key.
    assert len(sent) == 6
    keys = []
    for prompt, sp, out in sent:
        assert prompt.endswith(PASSKEY_QUESTION)
        assert (sp["max_new_tokens"], sp["temperature"], sp["stop"]) == (8, 0, ".")
        keys.append(_planted_key(prompt))
        assert out["text"].strip() == keys[-1]
    assert len(set(keys)) == 6  # distinct keys: a constant answer could not score 100%
    train = train_length(read_config(engine.model_dir))
    lengths = sorted(out["meta_info"]["prompt_tokens"] for _, _, out in sent)
    assert all(n <= train for n in lengths[:3]) and all(train < n <= 2 * train for n in lengths[3:])


def test_multi_doc_fork_and_gather_returns_each_documents_key_in_fork_order(engine, sent):
    import multi_doc_qa

    got, want = multi_doc_qa.run(str(engine.model_dir), docs=3, multiple=2.0)
    assert got == want and len(set(want)) == 3
    # One branch per document, each a passkey prompt answered with its own key.
    assert len(sent) == 3
    assert sorted(_planted_key(p) for p, _, _ in sent) == sorted(want)
    assert all(out["text"].strip() == _planted_key(p) for p, _, out in sent)
    # Gather follows fork order, not completion order: reversed documents give the reversed keys, as a list
    # variable ("answer") in the main state and in the gathered text.
    docs = _passkey_prompts(engine, 2.0, 3)[::-1]
    st = multi_doc_qa.multi_doc_qa.run(docs=[d for d, _ in docs])
    assert [a.strip() for a in st["answer"]] == [k for _, k in docs] == want[::-1]
    assert st.text() == "answers: " + ", ".join(want[::-1])


def test_needle_qa_asks_for_the_planted_needle_and_answers_a_passkey(engine, sent):
    import needle_qa

    answer, expected = needle_qa.run(str(engine.model_dir), multiple=1.0)
    # The program sends the document, which plants exactly one needle and ends with the question about its key.
    ((prompt, sp, out),) = sent
    ((key, value),) = re.findall(r"the special magic number for (\w+) is (\d+)\.", prompt)
    assert value == expected and len(expected) == 6
    assert prompt.endswith(f"what is the special magic number for {key}? the special magic number for {key} is")
    assert (sp["max_new_tokens"], sp["temperature"], sp["stop"]) == (12, 0, ".")
    # The tiny model does not solve NIAH; its greedy answer is whatever the engine returned, the same twice.
    assert answer == out["text"].strip() and "." not in answer
    assert needle_qa.run(str(engine.model_dir), multiple=1.0) == (answer, expected)
    # On a task the model knows, the same program returns the planted value.
    for doc, key in _passkey_prompts(engine, 1.5, 2):
        assert needle_qa.needle_qa.run(document=doc)["answer"].strip() == key


def test_map_reduce_maps_every_chunk_and_reduces_the_gathered_summaries(engine, sent):
    import map_reduce

    ((haystack, _),) = _passkey_prompts(engine, 1.0, 1)
    text, final = map_reduce.run(str(engine.model_dir), chunks=4, multiple=1.0)
    # Map: four requests, one per chunk; the chunks are contiguous pieces that rebuild the haystack.
    *maps, (reduce_prompt, reduce_sp, reduce_out) = sent
    assert len(maps) == 4
    assert all(p.endswith(" summary:") and sp["max_new_tokens"] == 16 and sp["stop"] == "." for p, sp, _ in maps)
    chunks = sorted(((p[: -len(" summary:")], out["text"]) for p, _, out in maps), key=lambda c: haystack.index(c[0]))
    assert " ".join(c for c, _ in chunks) == haystack
    summaries = [s.strip() for _, s in chunks]
    assert summaries != summaries[::-1]  # (this seed's summaries differ, so the order check below has teeth)
    # Reduce: the summaries in chunk (fork) order, then the final summary; the program's text is exactly that.
    assert reduce_prompt == " ".join(summaries) + " summary:"
    assert reduce_sp["max_new_tokens"] == 16 and final == reduce_out["text"]
    assert text == reduce_prompt + final
    # Greedy: the same program on the same haystack gives the same text.
    assert map_reduce.run(str(engine.model_dir), chunks=4, multiple=1.0) == (text, final)
    # The state holds one gathered "summary" per fork and the "final".
    st = map_reduce.map_reduce.run(chunks=["a b c", "d e", "f"])
    assert isinstance(st["summary"], list) and len(st["summary"]) == 3
    assert st.text() == " ".join(s.strip() for s in st["summary"]) + " summary:" + st["final"]


def test_reference_engine_rejects_sampling_it_cannot_do(engine):
    with pytest.raises(ValueError, match="temperature=0"):
        engine.generate("hello", {"max_new_tokens": 2, "temperature": 0.7})
    with pytest.raises(NotImplementedError, match="logprobs"):
        engine.generate("hello", {"max_new_tokens": 0}, return_logprob=True)
