"""Needle QA over one long document: the program reads the document, then answers a question about a fact hidden
in it (RULER-style single needle: "the special magic number for <key> is <value>").

    python examples/needle_qa.py --multiple 4

The bundled tiny model was trained on copy and passkey only and does not solve this task (its NIAH accuracy is 0%,
benchmarks/results/tiny-model-accuracy/demo_tiny_h100.json); the example shows the program shape and runs end to end. Point ``--model``
at Qwen2.5-7B-Instruct-1M for real answers.
"""

from __future__ import annotations

import sglang as sgl

from sgl_qwen1m.evals.harness import make_samples
from sgl_qwen1m.model.tasks import TaskBuilder
from sgl_qwen1m.model.spec import read_config, train_length


@sgl.function
def needle_qa(s, document):
    s += document  # the task's document ends with its question
    s += sgl.gen("answer", max_tokens=12, temperature=0, stop=".")


def run(model: str, multiple: float, seed: int = 0) -> tuple[str, str]:
    (_, smp), = make_samples(["niah_single"], [multiple], 1, train_length(read_config(model)), seed, TaskBuilder())
    st = needle_qa.run(document=smp.prompt_text)
    return st["answer"].strip(), smp.answers[0]


if __name__ == "__main__":
    from _common import parser, start

    p = parser(__doc__)
    p.add_argument("--multiple", type=float, default=4.0)
    a = p.parse_args()
    engine = start(a.engine, a.model, a.multiple)
    got, want = run(a.model, a.multiple, a.seed)
    print(f"answer {got!r}; expected {want!r}")
    engine.shutdown()
