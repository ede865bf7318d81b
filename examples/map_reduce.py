"""Map-reduce summarisation of a long text: split it into chunks, summarise every chunk in a parallel fork (map),
then summarise the summaries (reduce).

    python examples/map_reduce.py --chunks 4 --multiple 1

The bundled tiny model cannot summarise (it was trained on copy and passkey), so its "summaries" are not
meaningful; the example shows the program shape and runs end to end. Use ``--model`` with Qwen2.5-*-1M for real
summaries.
"""

from __future__ import annotations

import sglang as sgl

from sgl_qwen1m.evals.harness import make_samples
from sgl_qwen1m.model.tasks import TaskBuilder
from sgl_qwen1m.model.spec import read_config, train_length


@sgl.function
def map_reduce(s, chunks):
    forks = s.fork(len(chunks))
    for f, chunk in zip(forks, chunks):
        f += chunk + " summary:"
        f += sgl.gen("summary", max_tokens=16, temperature=0, stop=".")
    forks.join()
    s += " ".join(f["summary"].strip() for f in forks) + " summary:"
    s += sgl.gen("final", max_tokens=16, temperature=0, stop=".")


def run(model: str, chunks: int, multiple: float, seed: int = 0) -> tuple[str, str]:
    """(whole program text, final summary) for a passkey haystack of ``multiple`` x the training length."""
    (_, smp), = make_samples(["passkey"], [multiple], 1, train_length(read_config(model)), seed, TaskBuilder())
    words = smp.prompt_text.split(" ")
    step = -(-len(words) // chunks)
    parts = [" ".join(words[i: i + step]) for i in range(0, len(words), step)]
    st = map_reduce.run(chunks=parts)
    return st.text(), st["final"]


if __name__ == "__main__":
    from _common import parser, start

    p = parser(__doc__)
    p.add_argument("--chunks", type=int, default=4)
    p.add_argument("--multiple", type=float, default=1.0)
    a = p.parse_args()
    engine = start(a.engine, a.model, a.multiple)
    _, final = run(a.model, a.chunks, a.multiple, a.seed)
    print(f"final summary: {final!r}")
    engine.shutdown()
