"""The example frontend programs run end to end on the CPU: real SGLang frontend interpreter, the package's
in-process backend, and the bundled model through the fp32 torch reference engine."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

pytest.importorskip("sglang")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))


@pytest.fixture(scope="module")
def engine():
    import sglang as sgl

    from sgl_qwen1m.frontend import ReferenceEngine, engine_backend

    eng = ReferenceEngine()
    sgl.set_default_backend(engine_backend(eng, eng.model_dir))
    return eng


def test_passkey_eval_batch(engine):
    import passkey_eval

    acc = passkey_eval.run(str(engine.model_dir), [1.0], samples=3)
    assert acc == {1.0: 1.0}  # the bundled model retrieves passkeys at its training length


def test_multi_doc_fork_and_gather(engine):
    import multi_doc_qa

    got, want = multi_doc_qa.run(str(engine.model_dir), docs=2, multiple=1.0)
    assert got == want


def test_needle_qa_and_map_reduce_run(engine):
    import map_reduce
    import needle_qa

    answer, expected = needle_qa.run(str(engine.model_dir), multiple=1.0)
    assert isinstance(answer, str) and expected
    text, final = map_reduce.run(str(engine.model_dir), chunks=3, multiple=1.0)
    assert text.count(" summary:") == 1 and isinstance(final, str)


def test_reference_engine_rejects_sampling_it_cannot_do(engine):
    with pytest.raises(ValueError, match="temperature=0"):
        engine.generate("hello", {"max_new_tokens": 2, "temperature": 0.7})
    with pytest.raises(NotImplementedError, match="logprobs"):
        engine.generate("hello", {"max_new_tokens": 0}, return_logprob=True)
