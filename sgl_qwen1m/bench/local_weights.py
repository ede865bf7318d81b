"""Structured dummy weights whose attention decays with distance (``--weights local`` backends of the e2e bench).

SGLang's dummy loader fills every weight uniformly in about [-1e-3, 1e-3]. Queries and keys are then ~1e-4 and the
attention softmax is flat: every column and diagonal scores the same up to rounding, vertical-slash selection picks
scattered diagonals, and a 64x64-tile kernel computes 48-83% of the dense work
(``benchmarks/results/sparse-e2e-h100/sparse_stats_h100.log``). Trained long-context models attend mostly to nearby
tokens, so that measurement says little about their prefill.

Both recipes give every query and key of a head the same vector ``v`` (:func:`local_bias_vector`) before RoPE:
``amplitude`` on the lower-frequency rotary pairs and 0 on the ``skip_high_pairs`` highest-frequency pairs. After RoPE
the score of a query and a key at distance ``d`` is then ``amplitude**2 / sqrt(D) * 2 * sum_i cos(theta_i * d)`` over
the kept pairs: large at ``d = 0`` and decaying roughly logarithmically with ``d`` (geometric RoPE frequencies), i.e.
attention mass falls off like a power of the distance. Zeroing the fastest pairs removes the score oscillation that
would otherwise scatter the top diagonals. :func:`local_attention_tensors` picks the recipe from ``model_type``.

``qwen2-bias`` (qwen2, qwen2_moe): keep every random weight and set the ``q_proj`` and ``k_proj`` biases of every
layer to ``v`` per head; the projection of the ~1e-3 hidden state adds only ~1e-4.

``qwen3-embed-proj-norm`` (qwen3, qwen3_moe): there are no q/k biases (``attention_bias`` false) and per-head RMSNorm
(``q_norm``/``k_norm``, weight ``[head_dim]``) runs on q and k before RoPE, so a constant must come from the input:

1. ``model.embed_tokens.weight`` rows: ``embed_constant`` (0.25) in every column ``j % embed_period == 0`` (so column
   0 is the same positive number for every token), U(-1, 1) elsewhere. The random part keeps tokens distinct, so the
   MoE router still spreads tokens over the experts as on dummy weights (a constant embedding would send every token
   to the same top-k experts); the constant columns add a router bias ~5% of the token-dependent part. The tensor is
   an ``as_strided`` view (row ``t`` = ``s[t * period : t * period + hidden]``) of a ``period * vocab`` storage, 19 MB
   for Qwen3-30B-A3B instead of 0.6 GB: SGLang's serializer passes it with its strides through shared memory and the
   receiving rank materializes it (``tensor.to(device)``).
2. ``input_layernorm.weight`` = ``e_0``: the attention input is ``x = x0 * e_0`` with ``x0 = 0.25 / rms(h) ~ 0.44 > 0``
   for every token. Keeping the dummy weight would leave ``x0 = w[0] * 0.25 / rms(h) ~ 2e-4`` (one dummy value shared
   by all layers: SGLang seeds every parameter alike), where ``q_norm``'s ``eps = 1e-6`` would shrink q and k by an
   arbitrary factor; its random sign would cancel in ``q . k`` (q and k share ``x``) but its size would not.
3. ``q_proj.weight`` / ``k_proj.weight``: zeros except column 0 = 1, so every head's q and k are ``x0 * ones``.
4. ``q_norm.weight`` = ``k_norm.weight`` = ``v``: RMSNorm turns ``x0 * ones`` into ``ones * x0/sqrt(x0**2 + eps)``
   = ``ones`` (to ~3e-6), times ``v``. This is the same as column 0 = ``v`` with norm weight ``rms(v)`` but exact in
   bf16 (``rms(v) = 1.299`` is not a bf16 number; 1.5 and 0 are).

The residual stream stays the embedding row: each dummy layer adds ~1e-5 (``v_proj``/``o_proj`` of ``x0 ~ 0.44``
through ~1e-3 weights, and the MoE of ``post_attention_layernorm(h) ~ 1e-3``), against 0.25 in column 0 over 48
layers, so every layer sees the same positive ``x0``. Only the named HF weights change; ``v_proj``, ``o_proj``,
experts, router and ``lm_head`` keep their dummy values. With ``tie_word_embeddings`` (small Qwen3 models) the LM
head becomes the structured embedding: logits stay finite, tokens still mean nothing.

SGLang 0.5.17's Qwen3(-MoE) ``load_weights`` maps ``q_proj``/``k_proj`` into the fused ``qkv_proj`` (shards "q"/"k",
``v`` untouched) and loads the other names as they are; it skips unknown names silently (the update still reports
success). Building its ``Qwen3MoeForCausalLM`` / ``Qwen3ForCausalLM`` on CPU and loading these tensors changed exactly
the embedding and each layer's ``input_layernorm``, ``qkv_proj`` (q and k rows), ``q_norm`` and ``k_norm``.

Dense kernels do the same work on either weights; the sparse path chooses its pattern from the real estimation on
these weights (nothing in the sparse path knows about them). :func:`slash_spread` measures the property on CPU.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch

from sgl_qwen1m.model.local_vector import DEFAULT_AMPLITUDE, DEFAULT_SKIP_HIGH_PAIRS, local_bias_vector
from sgl_qwen1m.sizing import ModelShape

__all__ = [
    "DEFAULT_AMPLITUDE",
    "DEFAULT_SKIP_HIGH_PAIRS",
    "RECIPES",
    "WEIGHT_KINDS",
    "local_attention_biases",
    "local_attention_tensors",
    "local_bias_vector",
    "local_recipe",
    "qwen3_local_tensors",
    "slash_spread",
    "structured_embedding",
    "update_batches",
]

WEIGHT_KINDS = ("dummy", "local")
EMBED_CONSTANT = 0.25
EMBED_PERIOD = 64
EMBED_SEED = 0
RECIPES = {"qwen2": "qwen2-bias", "qwen2_moe": "qwen2-bias", "qwen3": "qwen3-embed-proj-norm",
           "qwen3_moe": "qwen3-embed-proj-norm"}


def _check_heads(num_layers: int, num_heads: int, num_kv_heads: int) -> None:
    if min(num_layers, num_heads, num_kv_heads) <= 0 or num_heads % num_kv_heads:
        raise ValueError(f"bad shape: layers={num_layers} heads={num_heads} kv_heads={num_kv_heads}")


def local_attention_biases(
    num_layers: int,
    num_heads: int,
    num_kv_heads: int,
    head_dim: int,
    amplitude: float = DEFAULT_AMPLITUDE,
    skip_high_pairs: int = DEFAULT_SKIP_HIGH_PAIRS,
) -> list[tuple[str, torch.Tensor]]:
    """``qwen2-bias``: HF-named ``(name, tensor)`` pairs for ``Engine.update_weights_from_tensor``, q/k biases.

    ``q_proj.bias`` is ``[num_heads * head_dim]``, ``k_proj.bias`` ``[num_kv_heads * head_dim]`` (float32, CPU).
    """
    _check_heads(num_layers, num_heads, num_kv_heads)
    v = local_bias_vector(head_dim, amplitude, skip_high_pairs)
    out: list[tuple[str, torch.Tensor]] = []
    for i in range(num_layers):
        pre = f"model.layers.{i}.self_attn"
        out.append((f"{pre}.q_proj.bias", v.repeat(num_heads).contiguous()))
        out.append((f"{pre}.k_proj.bias", v.repeat(num_kv_heads).contiguous()))
    return out


def structured_embedding(
    vocab: int,
    hidden: int,
    constant: float = EMBED_CONSTANT,
    period: int = EMBED_PERIOD,
    seed: int = EMBED_SEED,
    dtype: torch.dtype = torch.bfloat16,
) -> torch.Tensor:
    """``[vocab, hidden]`` view: ``constant`` where ``column % period == 0``, U(-1, 1) elsewhere (see module doc).

    Row ``t`` is ``s[t * period : t * period + hidden]`` of one ``period * (vocab - 1) + hidden`` storage whose
    multiples of ``period`` hold ``constant``; rows overlap, so it is never materialized here.
    """
    if min(vocab, hidden, period) <= 0:
        raise ValueError(f"bad embedding shape: vocab={vocab} hidden={hidden} period={period}")
    g = torch.Generator().manual_seed(seed)
    s = torch.empty(period * (vocab - 1) + hidden, dtype=dtype).uniform_(-1.0, 1.0, generator=g)
    s[::period] = constant
    return s.as_strided((vocab, hidden), (period, 1))


def qwen3_local_tensors(
    shape: ModelShape, amplitude: float = DEFAULT_AMPLITUDE, skip_high_pairs: int = DEFAULT_SKIP_HIGH_PAIRS,
    dtype: torch.dtype = torch.bfloat16,
) -> list[tuple[str, torch.Tensor]]:
    """``qwen3-embed-proj-norm``: HF-named pairs (CPU, ``dtype``) for a Qwen3 / Qwen3-MoE checkpoint layout.

    One embedding, then per layer ``input_layernorm.weight [hidden]``, ``self_attn.q_proj.weight [heads*D, hidden]``,
    ``k_proj.weight [kv_heads*D, hidden]``, ``q_norm.weight [D]``, ``k_norm.weight [D]``. Layers share the same
    tensor objects (their values are equal), so the serializer sends each once.
    """
    num_layers, hidden, head_dim = shape.layers, shape.hidden, shape.head_dim
    _check_heads(num_layers, shape.heads, shape.kv_heads)
    v = local_bias_vector(head_dim, amplitude, skip_high_pairs).to(dtype)
    ln = torch.zeros(hidden, dtype=dtype)
    ln[0] = 1.0
    q_w = torch.zeros(shape.heads * head_dim, hidden, dtype=dtype)
    q_w[:, 0] = 1.0
    k_w = torch.zeros(shape.kv_heads * head_dim, hidden, dtype=dtype)
    k_w[:, 0] = 1.0
    emb = structured_embedding(shape.vocab, hidden, dtype=dtype)
    out: list[tuple[str, torch.Tensor]] = [("model.embed_tokens.weight", emb)]
    for i in range(num_layers):
        pre = f"model.layers.{i}"
        out += [
            (f"{pre}.input_layernorm.weight", ln),
            (f"{pre}.self_attn.q_proj.weight", q_w),
            (f"{pre}.self_attn.k_proj.weight", k_w),
            (f"{pre}.self_attn.q_norm.weight", v),
            (f"{pre}.self_attn.k_norm.weight", v),
        ]
    return out


def _recipe_name(config: Mapping[str, Any]) -> str:
    model_type = config.get("model_type")
    if model_type not in RECIPES:
        raise ValueError(
            f"no local-weights recipe for model_type={model_type!r}; supported: {', '.join(sorted(RECIPES))}"
        )
    return RECIPES[model_type]


def local_recipe(
    config: Mapping[str, Any], amplitude: float = DEFAULT_AMPLITUDE, skip_high_pairs: int = DEFAULT_SKIP_HIGH_PAIRS
) -> dict[str, Any]:
    """What :func:`local_attention_tensors` does for this HF ``config.json`` dict (recipe name and parameters)."""
    recipe = _recipe_name(config)
    info: dict[str, Any] = {"recipe": recipe, "amplitude": amplitude, "zeroed_high_frequency_pairs": skip_high_pairs}
    if recipe == "qwen3-embed-proj-norm":
        info.update(embed_constant=EMBED_CONSTANT, embed_period=EMBED_PERIOD, embed_seed=EMBED_SEED)
    return info


def local_attention_tensors(
    config: Mapping[str, Any], amplitude: float = DEFAULT_AMPLITUDE, skip_high_pairs: int = DEFAULT_SKIP_HIGH_PAIRS
) -> list[tuple[str, torch.Tensor]]:
    """HF-named ``(name, tensor)`` pairs for ``Engine.update_weights_from_tensor``, by ``config["model_type"]``.

    qwen2 / qwen2_moe: :func:`local_attention_biases`; qwen3 / qwen3_moe: :func:`qwen3_local_tensors`; any other
    ``model_type`` raises ``ValueError``. ``config`` is the model directory's ``config.json`` dict.
    """
    recipe = _recipe_name(config)
    sh = ModelShape.from_config(config)
    if recipe == "qwen2-bias":
        return local_attention_biases(sh.layers, sh.heads, sh.kv_heads, sh.head_dim, amplitude, skip_high_pairs)
    return qwen3_local_tensors(sh, amplitude, skip_high_pairs)


def update_batches(
    named: Sequence[tuple[str, torch.Tensor]], max_bytes: int = 1 << 30
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Split ``named`` into consecutive lists of at most ``max_bytes`` once materialized (one tensor may exceed it).

    SGLang copies every tensor of one ``update_weights_from_tensor`` call to the GPU before loading any, so the
    batches bound that transient memory (the shared per-layer tensors count once per name there).
    """
    batch: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named:
        n = t.numel() * t.element_size()
        if batch and size + n > max_bytes:
            yield batch
            batch, size = [], 0
        batch.append((name, t))
        size += n
    if batch:
        yield batch


def slash_spread(
    bias: torch.Tensor, length: int, num_slash: int, rope_base: float = 1e7, last_q: int = 64, block: int = 64
) -> tuple[int, int]:
    """How scattered the top ``num_slash`` diagonals are when q = k = ``bias`` (CPU, one head).

    Scores the last ``last_q`` queries against ``length`` keys as the estimation does (softmax, then sums per
    diagonal) and returns ``(block diagonals the top diagonals touch, the minimum for a contiguous band)``. A ratio
    near 1 means a tile kernel computes little more than the budget.
    """
    from sgl_qwen1m.model.torch_qwen2 import apply_rope, rope_cos_sin

    d = bias.numel()
    pos = torch.arange(length)
    qpos = pos[-last_q:]
    cos, sin = rope_cos_sin(pos, d, rope_base)
    k = apply_rope(bias.double().expand(length, 1, d), cos, sin)[:, 0]
    q = k[-last_q:]  # q = k = bias: the same rotation at the same positions
    s = (q @ k.T) / math.sqrt(d)
    off = qpos.view(-1, 1) - pos.view(1, -1)
    p = torch.softmax(s.masked_fill(off < 0, float("-inf")), dim=-1)
    diag = torch.zeros(length, dtype=torch.float64).index_add_(0, off.clamp(min=0).flatten(), p.flatten())
    top = torch.topk(diag, min(num_slash, length)).indices
    blocks = torch.unique(torch.cat([top // block, (top + block - 1) // block]))
    return int(blocks.numel()), num_slash // block + 1
