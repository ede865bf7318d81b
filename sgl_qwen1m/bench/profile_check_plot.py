"""The plot of ``bench profile-check`` (matplotlib, Agg): step time and chunk size against the prompt's prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from sgl_qwen1m.scheduler.profile import Profile, Sample
from sgl_qwen1m.scheduler.simulate import SimResult
from sgl_qwen1m.scheduler.steplog import AloneStep

__all__ = ["plot_check"]


def plot_check(steps: Sequence[AloneStep], samples: Sequence[Sample], profiles: dict[str, Profile],
               plans: dict[str, SimResult], path: Path) -> bool:
    """Two panels, for the steps of one prompt (``samples``: their work, same order): measured step seconds against
    prefix with each profile's prediction for the same steps; the chunk sizes the server ran and those each
    profile's policy would run on an idle server (``plans``: ``profile_check.idle_plans``). False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        from sgl_qwen1m.figures import save_png
    except ImportError:
        return False
    x = [s.prefix / 1e3 for s in steps]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    a.scatter(x, [s.seconds for s in steps], s=4, c="k", label="measured (server log)", zorder=3)
    for name, prof in profiles.items():
        pred = [prof.predict_s(smp.work) for smp in samples]
        a.plot(x, pred, lw=1.2, label=f"predicted: {name}")
    a.set_xlabel("prefix (K tokens)")
    a.set_ylabel("step (s)")
    a.set_yscale("log")
    a.set_title("alone prefill steps of one prompt", fontsize=9)
    a.legend(fontsize=7)
    b.scatter(x, [s.extend for s in steps], s=4, c="k", label="ran (server log)", zorder=3)
    for name, sim in plans.items():
        starts, done = [], 0
        for c in sim.long_chunks:
            starts.append(done / 1e3)
            done += c
        b.step(starts, sim.long_chunks, where="post", lw=1.2,
               label=f"policy on {name}: {sim.long_ttft_s:.0f} s predicted")
    b.set_xlabel("prefix (K tokens)")
    b.set_ylabel("chunk (tokens)")
    b.set_yscale("log")
    b.set_title("chunk sizes, idle server", fontsize=9)
    b.legend(fontsize=7)
    fig.tight_layout()
    save_png(fig, path, dpi=80)
    return True
