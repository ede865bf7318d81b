"""Kernel work of sparse prefill: the share of dense causal attention the 64x64-tile kernel computes for a prompt.

``python -m sgl_qwen1m sparse-work`` (:mod:`.work_cli`) asks whether a trained model's attention makes the sparse
kernel compute more or less than the dummy-weight proxies the speed benchmarks ran on, at the same length and
budgets. Everything here is serving's selection through the torch path (no rule re-implemented):

* **Pieces and scores.** :func:`~sgl_qwen1m.ops.sparse.prompt_ref.prompt_pieces` (DCA chunks, cut again at
  ``prefill_chunk``); each piece's last ``last_q`` queries score keys ``[0, q_end)`` by
  :func:`~sgl_qwen1m.ops.sparse.reference.estimate_vs_ref` (the rows and variants of ``piece_scores``).
* **Pattern.** :func:`~sgl_qwen1m.ops.sparse.reuse.piece_pattern` (budgets through ``layer_budgets``), then the
  kernel's loop bounds :func:`~sgl_qwen1m.ops.sparse.reference.loop_bounds` for a one-piece
  :class:`~sgl_qwen1m.ops.sparse.plan.PiecePlan`.
* **Count.** :func:`~sgl_qwen1m.ops.sparse.reference.computed_keys` times 64 rows: for every 64-row query block
  ``rb`` of the piece, 64 keys for each chosen block diagonal ``d <= rb`` (``_diag_loop`` in ``attention.py`` runs
  ``dg[0:dcnt[..., 2]]`` over the intra/succ/inter ranges, one whole 64x64 tile each, causally masked inside) plus
  one key for each chosen column below the intra cut ``max(64 * (rb - band + 1), c0)`` (``_col_loop`` runs
  ``vc[0:vcnt[..., 2]]``: columns under a non-leading chosen block diagonal are loaded and masked, so they count).
  Each key is computed for the block's 64 rows, masked rows included. Not counted (as in ``computed_keys``): the
  column loop pads each of its <= 3 ranges to a multiple of 64 columns (< 192 keys per row block).
* **Dense.** Causal pairs ``sum_q (pos_q + 1) = L (L + 1) / 2``. With every key and diagonal chosen
  (budgets >= L) the kernel still computes whole diagonal tiles and, in DCA chunk ``c0 > 0``, every column before
  ``c0`` again: ``64 * sum_rb (64 (rb + 1) + c0)`` pairs, a fraction >= 1 (``tests/test_sparse_work.py``).

Every piece is counted as sparse: serving runs a request densely when its length is at most
``sparse_attention_threshold`` (32768 by default: a 32768-token prompt runs dense there), and with chunked prefill
the chunks that end at or below it.

Proxies (weights the speed benchmarks used, built for a model shape without weights; :class:`AttnShape`):

* ``local`` (:mod:`sgl_qwen1m.bench.local_weights`): every query and key of every head and layer is
  ``local_bias_vector(head_dim)`` (:mod:`sgl_qwen1m.model.local_vector`, the bench's defaults) before RoPE; keys
  rotated at their cached (DCA) positions, queries through :func:`~sgl_qwen1m.model.capture.query_variants`, as the model does. All heads and layers are
  identical, so one head is scored once per piece; only the per-layer, per-head budgets differ.
* ``uniform`` (SGLang's dummy loader, U(-1e-3, 1e-3) weights): q and k are structureless and attention is flat.
  Assumption: q, k i.i.d. ``N(0, UNIFORM_STD**2)`` per element, fresh per layer (seeded): logits have std
  ``UNIFORM_STD**2 = 0.01``, so attention is flat within ~1% and the selection follows structureless noise. The
  loader's own ~1e-4 q/k give logits ~1e-8, below this fp32 oracle's resolution: the selection then follows rounding
  and tie-breaking, not attention (7B-1M shape, layer 0, 64K tokens in 16K chunks, the two sparse pieces: 0.68 / 0.97
  of dense at std 1e-4, 0.89 / 0.99 at 3e-4, 0.99-1.0 from 1e-3 to 0.1). The GPU run on dummy weights logged 0.83 /
  0.67 for those pieces (``benchmarks/results/sparse-e2e-h100/sparse_stats_h100.log``): this proxy is the scattered
  end of what dummy weights do. Query noise comes from a table of ``min(QUERY_TABLE, L)`` rows indexed by position
  modulo its size (an estimation uses <= 64 consecutive rows, so its queries are independent draws); keys are drawn
  for every position.

Memory per piece: the estimation's ``[3, Hp, last_q, q_end]`` fp32 (``Hp`` = heads per pass, whole GQA groups) plus
the pattern; the uniform proxy holds its keys ``[L, Hkv, D]``. Nothing of size ``L x L``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import torch

from sgl_qwen1m.config import DEFAULT_LAST_Q, DCAConfig, SparseBudgets
from sgl_qwen1m.ops.dca.plan import dca_positions, yarn_logit_scale
from sgl_qwen1m.ops.sparse.plan import BLOCK, PAD, LayerBudget, Piece, PiecePlan, layer_budgets
from sgl_qwen1m.ops.sparse.prompt_ref import prompt_pieces
from sgl_qwen1m.ops.sparse.reference import computed_keys, estimate_vs_ref, loop_bounds
from sgl_qwen1m.ops.sparse.reuse import piece_pattern

__all__ = [
    "PROXIES",
    "UNIFORM_STD",
    "QUERY_TABLE",
    "AttnShape",
    "dense_pairs",
    "local_vector",
    "piece_computed",
    "pattern_work",
    "model_work",
    "proxy_inputs",
    "proxy_work",
]

PROXIES = ("local", "uniform")
UNIFORM_STD = 0.1
QUERY_TABLE = 4096
HEADS_PER_PASS = 8  # query heads scored together (rounded to whole GQA groups, at least one group)

QueryFn = Callable[[torch.Tensor], torch.Tensor]  # positions [n] int64 -> query variants [n, V, Hs, D] fp32


@dataclass(frozen=True)
class AttnShape:
    """What the proxies need of a model: its attention shape and DCA settings (``config.json``, no weights).

    Has ``head_dim``, ``theta`` and ``dca`` like :class:`~sgl_qwen1m.model.torch_qwen2.TinyQwen2`, so
    :func:`~sgl_qwen1m.model.capture.query_variants` builds its query variants exactly as for the model.
    """

    name: str
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    theta: float
    dca: Optional[DCAConfig]
    train_len: Optional[int] = None

    @classmethod
    def from_config(cls, config: Mapping[str, Any], name: str) -> "AttnShape":
        from sgl_qwen1m.model.spec import train_length
        from sgl_qwen1m.sizing import ModelShape

        sh = ModelShape.from_config(config)
        try:
            train: Optional[int] = train_length(dict(config))
        except ValueError:
            train = None
        return cls(name, sh.layers, sh.heads, sh.kv_heads, sh.head_dim, float(config.get("rope_theta", 10000.0)),
                   DCAConfig.from_hf_config(config), train)

    @classmethod
    def from_dir(cls, model_dir: Union[str, Path], name: Optional[str] = None) -> "AttnShape":
        from sgl_qwen1m.model.spec import read_config

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path / 'config.json'} does not exist (a model directory is needed)")
        return cls.from_config(read_config(path), name or path.resolve().name)

    @property
    def sm_scale(self) -> float:
        return self.head_dim**-0.5

    @property
    def chunk_len(self) -> Optional[int]:
        return self.dca.chunk_len if self.dca is not None else None

    @property
    def last_q(self) -> int:
        return self.dca.sparse_attention_last_q if self.dca is not None else DEFAULT_LAST_Q


def local_vector(head_dim: int) -> torch.Tensor:
    """``[head_dim]`` fp32: the bench's ``-local`` vector with its defaults
    (:func:`sgl_qwen1m.model.local_vector.local_bias_vector`)."""
    from sgl_qwen1m.model.local_vector import local_bias_vector

    return local_bias_vector(head_dim)


def dense_pairs(length: int) -> int:
    """Causal (query, key) pairs of a ``length``-token prompt: ``sum_q (pos_q + 1)``."""
    return length * (length + 1) // 2


def piece_computed(vertical: torch.Tensor, slash: torch.Tensor, piece: tuple[int, int], budget: LayerBudget,
                   chunk_len: Optional[int], last_q: int = DEFAULT_LAST_Q) -> torch.Tensor:
    """``[H]`` int64 (query, key) pairs the kernel computes for the queries of ``piece = (q_pos0, q_end)``.

    ``vertical``/``slash``: ``[H, >= q_end]`` fp32 scores of the piece (not modified). See the module docstring.
    """
    a, b = piece
    v_idx, cov = piece_pattern(vertical, slash, b, budget)  # [H, KV] int32, [H, NB] int8
    ar = torch.arange(cov.shape[1], device=cov.device, dtype=torch.int32)
    diag = torch.sort(torch.where(cov.bool(), ar, PAD), dim=-1).values  # block_pattern's ``diag``
    c0 = (a // chunk_len) * chunk_len if chunk_len is not None else 0
    pc = Piece(req=0, q_row0=0, q_pos0=a, q_len=b - a, c0=c0, sparse=True)
    dev = cov.device
    dcnt, vcnt = loop_bounds(diag[None], v_idx[None], torch.tensor([pc.first_block], device=dev),
                             torch.tensor([c0], device=dev), chunk_len, pc.num_blocks)
    return computed_keys(PiecePlan((pc,), last_q, chunk_len), dcnt, vcnt).cpu() * BLOCK


def _scores(q: torch.Tensor, k: torch.Tensor, rows: torch.Tensor, chunk_len: Optional[int], sm_scale: float,
            logit_scale: float, heads_per_pass: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``estimate_vs_ref`` over whole GQA groups at a time: ``q`` ``[n, V, Hs, D]``, ``k`` ``[q_end, Hkv, D]`` ->
    vertical, slash ``[Hs, q_end]``.

    A piece inside DCA chunk 0 (``q_end <= chunk_len``) has only intra pairs, scored by variant 0 alone: that is
    ``estimate_vs_ref`` without DCA (the same logits, a third of the work)."""
    if chunk_len is not None and k.shape[0] <= chunk_len:
        q, chunk_len = q[:, :1], None
    g = q.shape[2] // k.shape[1]
    step = max(1, heads_per_pass // g)
    parts = [estimate_vs_ref(q[:, :, j * g:(j + step) * g], k[:, j:j + step], rows, chunk_len, sm_scale, logit_scale)
             for j in range(0, k.shape[1], step)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def _work(q_at: QueryFn, k: torch.Tensor, length: int, chunk_len: Optional[int], sm_scale: float,
          logit_scale: float, budgets: Sequence[LayerBudget], last_q: int, prefill_chunk: Optional[int],
          heads_per_pass: int = HEADS_PER_PASS) -> torch.Tensor:
    """``[len(budgets), H]`` int64 computed pairs of one set of queries/keys under each budget.

    ``q_at(rows)`` gives the query variants of positions ``rows``; ``Hs == 1`` scored head stands for all ``H``
    (identical heads: the local proxy)."""
    if length < 1 or k.shape[0] < length:
        raise ValueError(f"sparse work: length must be in [1, {k.shape[0]}] (keys given), got {length}")
    num_heads = int(budgets[0].vertical.numel())
    total = torch.zeros(len(budgets), num_heads, dtype=torch.int64)
    for a, b in prompt_pieces(length, chunk_len, prefill_chunk):
        rows = torch.arange(b - min(last_q, b - a), b, device=k.device)  # piece_scores' estimation rows
        vert, sl = _scores(q_at(rows), k[:b], rows, chunk_len, sm_scale, logit_scale, heads_per_pass)
        if vert.shape[0] != num_heads:
            if vert.shape[0] != 1:
                raise ValueError(f"sparse work: {vert.shape[0]} scored heads for budgets of {num_heads} heads")
            vert, sl = vert.expand(num_heads, -1), sl.expand(num_heads, -1)
        for i, budget in enumerate(budgets):
            total[i] += piece_computed(vert, sl, (a, b), budget, chunk_len, last_q)
    return total


def pattern_work(q5: torch.Tensor, k: torch.Tensor, chunk_len: Optional[int], sm_scale: float, logit_scale: float,
                 budget: LayerBudget, last_q: int = DEFAULT_LAST_Q, prefill_chunk: Optional[int] = None,
                 heads_per_pass: int = HEADS_PER_PASS) -> tuple[torch.Tensor, int]:
    """Kernel work of one layer over a whole prompt (positions ``0..L-1``).

    ``q5`` ``[L, V, H, D]`` rotated query variants, ``k`` ``[L, Hkv, D]`` cached keys (as
    :class:`~sgl_qwen1m.model.capture.LayerInputs`); ``budget`` the layer's ``LayerBudget`` (``H`` heads; ``q5``
    may hold one head standing for ``H`` identical ones, as :func:`proxy_inputs` gives for ``local``).
    Returns ``(computed [H] int64, dense)``: pairs the kernel computes per head, and ``L (L + 1) / 2``.
    """
    length = k.shape[0]
    if q5.shape[0] != length:
        raise ValueError(f"pattern_work: q5 has {q5.shape[0]} positions, k has {length}")
    total = _work(lambda rows: q5[rows], k, length, chunk_len, sm_scale, logit_scale, [budget], last_q,
                  prefill_chunk, heads_per_pass)
    return total[0], dense_pairs(length)


def _check_budgets(budgets: SparseBudgets, num_layers: int, num_heads: int, what: str) -> None:
    if (budgets.num_layers, budgets.num_heads) != (num_layers, num_heads):
        raise ValueError(f"budgets cover {budgets.num_layers} layers x {budgets.num_heads} heads; {what} has "
                         f"{num_layers} x {num_heads}")


def model_work(model: Any, ids: Sequence[int], budgets: SparseBudgets, prefill_chunk: Optional[int] = None,
               heads_per_pass: int = HEADS_PER_PASS) -> torch.Tensor:
    """``[layers, H]`` float64 computed / dense of a trained model's attention on the prompt ``ids``.

    ``model``: a :class:`~sgl_qwen1m.model.torch_qwen2.TinyQwen2`; its dense prefill is captured layer by layer
    (:func:`~sgl_qwen1m.model.capture.capture_layers`, one layer alive at a time).
    """
    from sgl_qwen1m.model.capture import LayerInputs, capture_layers

    num_layers, num_heads = len(model.model.layers), model.model.layers[0].self_attn.h
    _check_budgets(budgets, num_layers, num_heads, "the model")
    device = model.model.embed_tokens.weight.device
    per_layer = layer_budgets(budgets, device)
    last_q = model.dca.sparse_attention_last_q if model.dca is not None else DEFAULT_LAST_Q
    out = torch.zeros(num_layers, num_heads, dtype=torch.float64)

    def on_layer(inp: LayerInputs) -> None:
        done, dense = pattern_work(inp.q5, inp.k, inp.chunk_len, inp.sm_scale, inp.logit_scale,
                                   per_layer[inp.layer], last_q, prefill_chunk, heads_per_pass)
        out[inp.layer] = done.double() / dense

    capture_layers(model, ids, on_layer)
    return out


def _proxy(kind: str, shape: AttnShape, length: int, layer: int, device: torch.device, seed: int,
           std: float) -> tuple[QueryFn, torch.Tensor]:
    """``(q_at, k [L, Hk, D])`` of one layer of a proxy (``Hk == 1`` and one scored head for ``local``)."""
    from sgl_qwen1m.model.capture import query_variants
    from sgl_qwen1m.model.torch_qwen2 import apply_rope, rope_cos_sin

    if kind not in PROXIES:
        raise ValueError(f"unknown proxy {kind!r}; choose from {', '.join(PROXIES)}")
    d = shape.head_dim
    pos = torch.arange(length, device=device)
    kpos = dca_positions(pos, shape.dca)["k"] if shape.dca is not None else pos
    cos, sin = rope_cos_sin(kpos, d, shape.theta)
    if kind == "local":
        v = local_vector(d).to(device)
        k = apply_rope(v.expand(length, 1, d), cos, sin)
        return (lambda rows: query_variants(shape, v.expand(rows.numel(), 1, d), rows)), k  # type: ignore[arg-type]
    if not std > 0:
        raise ValueError(f"uniform proxy: std must be > 0, got {std}")
    gen = torch.Generator().manual_seed(seed * 1_000_003 + layer)
    n_tab = min(QUERY_TABLE, length)
    table = (torch.randn(n_tab, shape.num_heads, d, generator=gen) * std).to(device)
    k = apply_rope((torch.randn(length, shape.num_kv_heads, d, generator=gen) * std).to(device), cos, sin)
    return (lambda rows: query_variants(shape, table[rows % n_tab], rows)), k  # type: ignore[arg-type]


def proxy_inputs(kind: str, shape: AttnShape, length: int, layer: int = 0, seed: int = 0, std: float = UNIFORM_STD,
                 device: Union[str, torch.device] = "cpu") -> Any:
    """One layer of a proxy as :class:`~sgl_qwen1m.model.capture.LayerInputs` (every position materialised:
    ``q5`` ``[L, V, Hs, D]``, ``Hs == 1`` for ``local``; ``v`` zeros, as the work does not depend on values).
    :func:`proxy_work` computes the same counts without materialising ``q5``."""
    from sgl_qwen1m.model.capture import LayerInputs

    q_at, k = _proxy(kind, shape, length, layer, torch.device(device), seed, std)
    logit = float(yarn_logit_scale(torch.tensor([length]), shape.dca)[0])
    return LayerInputs(layer, q_at(torch.arange(length, device=k.device)), k, torch.zeros_like(k), shape.chunk_len,
                       shape.sm_scale, logit)


def proxy_work(kind: str, shape: AttnShape, length: int, budgets: SparseBudgets,
               prefill_chunk: Optional[int] = None, seed: int = 0, std: float = UNIFORM_STD,
               device: Union[str, torch.device] = "cpu", heads_per_pass: int = HEADS_PER_PASS) -> torch.Tensor:
    """``[layers, H]`` float64 computed / dense of proxy ``kind`` (``local`` or ``uniform``) in ``shape``.

    ``local``: one head scored once per piece for all layers and heads (they are identical); ``uniform``: every
    layer drawn and scored (``seed``, ``std``: see the module docstring)."""
    if kind not in PROXIES:
        raise ValueError(f"unknown proxy {kind!r}; choose from {', '.join(PROXIES)}")
    if length < 1:
        raise ValueError(f"proxy_work: length must be >= 1, got {length}")
    _check_budgets(budgets, shape.num_layers, shape.num_heads, f"model shape {shape.name!r}")
    dev = torch.device(device)
    per_layer = layer_budgets(budgets, dev)
    logit = float(yarn_logit_scale(torch.tensor([length]), shape.dca)[0])
    args = (shape.chunk_len, shape.sm_scale, logit)
    if kind == "local":
        q_at, k = _proxy(kind, shape, length, 0, dev, seed, std)
        done = _work(q_at, k, length, *args, per_layer, shape.last_q, prefill_chunk, heads_per_pass)
    else:
        done = torch.cat([_work(*_proxy(kind, shape, length, li, dev, seed, std), length, *args, [per_layer[li]],
                                shape.last_q, prefill_chunk, heads_per_pass) for li in range(shape.num_layers)])
    return done.double() / dense_pairs(length)
