"""Small, committable pictures of what the sparse estimator sees: per-head vertical and slash score profiles.

For one prompt and layer, the estimator's scores of the prompt's last piece (:func:`~sgl_qwen1m.ops.sparse.
prompt_ref.piece_scores`: softmax mass of the last ``last_q`` queries per key column, ``vertical [H, L]``, and per
diagonal offset ``o = query_pos - key_pos``, ``slash [H, L]``) are summed into log-spaced bins: bin 0 is position
(or offset) 0, then ``[1, 2)``, ``[2, 4)``, ... up to ``L``. Sinks (columns near 0) and
local attention (offsets near 0) stay resolved; the far field is a few wide bins. Each row sums to the scored mass
(``last_q`` per head: every query's softmax sums to 1), so bins read as "share of attention".

``refine --maps FILE`` writes them for every layer and head of the first calibration sequence
(:func:`maps_document`); ``notebooks/03_sparse_patterns.py`` draws them.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["log_bin_edges", "log_binned", "layer_maps", "maps_document"]


def log_bin_edges(length: int) -> list[int]:
    """``[0, 1, 2, 4, ..., length]``: bin ``i`` is ``[edges[i], edges[i + 1])``."""
    if length < 1:
        raise ValueError(f"log_bin_edges: length must be >= 1, got {length}")
    edges = [0, 1]
    while edges[-1] < length:
        edges.append(min(length, edges[-1] * 2))
    return edges


def log_binned(x: torch.Tensor, edges: list[int]) -> torch.Tensor:
    """``x`` ``[H, L]`` summed over the bins of ``edges`` -> ``[H, len(edges) - 1]`` fp32 (shares of each row's
    total)."""
    x = x.float()
    c = torch.nn.functional.pad(x.cumsum(-1), (1, 0))  # c[:, j] = sum of x[:, :j]
    e = torch.tensor(edges, device=x.device)
    sums = c[:, e[1:]] - c[:, e[:-1]]
    return sums / x.sum(-1, keepdim=True).clamp_min(1e-30)


def layer_maps(vertical: torch.Tensor, slash: torch.Tensor) -> dict[str, list[list[float]]]:
    """One layer's ``{"vertical": [H][bins], "slash": [H][bins]}`` (4 significant digits)."""
    edges = log_bin_edges(vertical.shape[-1])

    def r(t: torch.Tensor) -> list[list[float]]:
        return [[float(f"{v:.4g}") for v in row] for row in log_binned(t, edges).tolist()]

    return {"vertical": r(vertical), "slash": r(slash)}


def maps_document(length: int, layers: list[dict[str, Any]], model: str = "") -> dict[str, Any]:
    """The ``--maps`` file: bin edges, one :func:`layer_maps` per layer, and how to read them."""
    edges = log_bin_edges(length)
    return {"model": model, "prompt_tokens": length, "bin_edges": edges, "layers": layers, "bins": len(edges) - 1,
            "note": "estimator scores of the prompt's last piece (last_q queries), per head, summed in log-spaced "
                    "bins of key position (vertical) and of diagonal offset query - key (slash); each row sums to 1"}
