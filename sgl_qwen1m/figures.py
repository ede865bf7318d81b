"""Saving result plots: one PNG writer for every plot the package draws (bench, load timelines, training curves,
refine experiments), so all of them stay small in the tree.

Needs matplotlib (and its dependency Pillow) only when called; nothing is imported at module import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Union

__all__ = ["save_png"]


def save_png(fig: Any, path: Union[str, Path], dpi: int = 100, colors: int = 128, **savefig: Any) -> Path:
    """Save matplotlib figure ``fig`` as ``path`` at ``dpi`` with a ``colors``-colour palette (about a third of the
    RGBA size; plots use a few flat colours, so nothing visible changes), close it and return the path. ``savefig``:
    more ``Figure.savefig`` arguments (``bbox_inches="tight"``)."""
    import matplotlib.pyplot as plt
    from PIL import Image  # matplotlib depends on Pillow

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, **savefig)
    plt.close(fig)
    with Image.open(path) as im:
        q = im.convert("RGB").quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    q.save(path, optimize=True)
    return path
