"""Multi-document QA with fork and gather: one branch per document reads it and answers, then the main program
gathers the branch answers into one reply.

The bundled tiny model only knows the passkey task, so each "document" is a passkey haystack with its own key and
the gathered reply lists the keys. With Qwen2.5-7B/14B-Instruct-1M, pass real documents and questions.

    python examples/multi_doc_qa.py --docs 3 --multiple 2
"""

from __future__ import annotations

import sglang as sgl

from sgl_qwen1m.evals.harness import make_samples
from sgl_qwen1m.model.tasks import TaskBuilder
from sgl_qwen1m.model.spec import read_config, train_length


@sgl.function
def multi_doc_qa(s, docs):
    forks = s.fork(len(docs))
    for f, doc in zip(forks, docs):
        f += doc  # each document ends with its question
        f += sgl.gen("answer", max_tokens=8, temperature=0, stop=".")
    forks.join()
    s += "answers: " + ", ".join(f["answer"].strip() for f in forks)


def run(model: str, docs: int, multiple: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """(answers, expected) for ``docs`` passkey documents of ``multiple`` x the training length each."""
    work = make_samples(["passkey"], [multiple] * 1, docs, train_length(read_config(model)), seed, TaskBuilder())
    st = multi_doc_qa.run(docs=[smp.prompt_text for _, smp in work])
    got = st.text().rsplit("answers: ", 1)[1].split(", ")
    return got, [smp.answers[0] for _, smp in work]


if __name__ == "__main__":
    from _common import parser, start

    p = parser(__doc__)
    p.add_argument("--docs", type=int, default=3)
    p.add_argument("--multiple", type=float, default=2.0)
    a = p.parse_args()
    engine = start(a.engine, a.model, a.multiple)
    got, want = run(a.model, a.docs, a.multiple, a.seed)
    print(f"gathered answers {got}; expected {want}; {sum(g == w for g, w in zip(got, want))}/{len(want)} right")
    engine.shutdown()
