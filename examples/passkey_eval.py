"""Passkey retrieval accuracy as a frontend program run as a batch (``run_batch``).

    python examples/passkey_eval.py --multiples 1,4 --samples 5     # sglang Engine on a GPU, else the CPU reference
"""

from __future__ import annotations

import sglang as sgl

from sgl_qwen1m.evals.harness import make_samples
from sgl_qwen1m.model.tasks import TaskBuilder
from sgl_qwen1m.model.spec import read_config, train_length


@sgl.function
def passkey(s, prompt):
    s += prompt
    s += sgl.gen("answer", max_tokens=8, temperature=0, stop=".")


def run(model: str, multiples: list[float], samples: int, seed: int = 0) -> dict[float, float]:
    """Accuracy per multiple of the training length (the default backend must be set)."""
    work = make_samples(["passkey"], multiples, samples, train_length(read_config(model)), seed, TaskBuilder())
    states = passkey.run_batch([{"prompt": smp.prompt_text} for _, smp in work], progress_bar=False)
    acc: dict[float, list[bool]] = {}
    for (mult, smp), st in zip(work, states):
        acc.setdefault(float(mult), []).append(st["answer"].strip() == smp.answers[0])
    return {m: sum(v) / len(v) for m, v in sorted(acc.items())}


if __name__ == "__main__":
    from _common import parser, start

    p = parser(__doc__)
    p.add_argument("--multiples", default="1,4")
    p.add_argument("--samples", type=int, default=5)
    a = p.parse_args()
    mults = [float(x) for x in a.multiples.split(",")]
    engine = start(a.engine, a.model, max(mults))
    for m, v in run(a.model, mults, a.samples, a.seed).items():
        print(f"passkey x{m:g}: {v:.0%}")
    engine.shutdown()
