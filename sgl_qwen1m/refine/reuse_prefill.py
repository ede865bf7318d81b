"""Serving's chunked sparse prefill with pattern reuse, for the reference model on CPU (used by :mod:`.reuse`).

* :func:`serving_pieces`: the pieces of a prompt prefilled with ``--chunked-prefill-size`` (prefill chunks cut at
  DCA chunk boundaries) and which run sparse (``config.runs_sparse`` on their prefill chunk, as ``plan_pieces``).
* :func:`gathered_sparse_attention` / :func:`fast_sparse_prompt`: the fp32 oracle
  :func:`~sgl_qwen1m.ops.sparse.prompt_ref.sparse_attention_prompt_ref` (same scores, same selection, same pattern,
  same reuse rule: :mod:`sgl_qwen1m.ops.sparse.reuse`) with the attention computed on the pattern's keys only
  instead of a masked dense pass: equal up to fp32 summation order (``tests/test_pattern_reuse.py``), several times
  faster on CPU at 8K-16K tokens.
* :func:`chunked_sparse_prefill`: a context in which :class:`~sgl_qwen1m.model.torch_qwen2.TinyQwen2` prefills long
  prompts that way (dense pieces exact, sparse pieces as above); decode steps stay dense, as in serving.

Shapes: ``q5`` ``[L, 5, H, D]`` rotated query variants, ``qa`` ``[L, 3, H, D]`` attention variants (intra, succ,
inter), ``k``/``v`` ``[L, Hkv, D]`` fp32; ``v_idx`` ``[H, KV]`` int32 (PAD-padded), ``cov`` ``[H, NB]`` int8.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator, Optional, Sequence

import torch

from sgl_qwen1m.config import runs_sparse
from sgl_qwen1m.model.capture import query_variants
from sgl_qwen1m.ops.dca.plan import yarn_logit_scale
from sgl_qwen1m.ops.dca.reference import dca_attention_ref
from sgl_qwen1m.ops.sparse.plan import BLOCK, PAD, LayerBudget
from sgl_qwen1m.ops.sparse.prompt_ref import attention_variants, piece_scores, prompt_pieces
from sgl_qwen1m.ops.sparse.prompt_ref import sparse_attention_prompt_ref
from sgl_qwen1m.ops.sparse.reuse import estimation_anchors, piece_pattern

__all__ = ["serving_pieces", "gathered_sparse_attention", "fast_sparse_prompt", "chunked_sparse_prefill"]


def serving_pieces(length: int, chunk_len: Optional[int], prefill_chunk: int,
                   threshold: int) -> list[tuple[int, int, bool]]:
    """``(q_pos0, q_end, sparse)`` of every piece of a ``length``-token prompt prefilled in ``prefill_chunk``
    chunks: a piece is sparse iff its prefill chunk is (``runs_sparse(chunk end, chunk length, threshold)``)."""
    out = []
    for a, b in prompt_pieces(length, chunk_len, prefill_chunk):
        s = a // prefill_chunk * prefill_chunk
        e = min(s + prefill_chunk, length)
        out.append((a, b, runs_sparse(e, e - s, threshold)))
    return out


def gathered_sparse_attention(qa: torch.Tensor, k: torch.Tensor, v: torch.Tensor, piece: tuple[int, int],
                              chunk_len: Optional[int], scale: float, v_idx: torch.Tensor,
                              cov: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of the piece's rows over exactly the keys of the pattern (``v_idx [H, KV]``, ``cov [H, NB]``).

    ``qa`` ``[L, V, H, D]`` attention variants (intra, succ, inter with DCA; ``V == 1`` without), ``k``/``v``
    ``[L, Hkv, D]`` fp32, ``scale`` = ``sm_scale * logit_scale``. Per 64-row block and head the keys are the chosen
    block diagonals' key blocks plus the chosen columns outside them; each key uses the query variant of its DCA
    stage. Returns ``(out [b - a, H, D], lse [b - a, H])`` fp32, natural log.
    """
    a, b = piece
    h, d = qa.shape[2], qa.shape[3]
    g = h // k.shape[1]
    cid = a // chunk_len if chunk_len is not None else 0
    out = torch.empty(b - a, h, d, dtype=torch.float32, device=k.device)
    lse = torch.empty(b - a, h, dtype=torch.float32, device=k.device)
    ar = torch.arange(BLOCK, device=k.device)
    diags = [torch.nonzero(cov[i]).flatten() for i in range(h)]
    cols = [c[c != PAD].long() for c in v_idx]
    for rb in range(a // BLOCK, (b - 1) // BLOCK + 1):
        r0, r1 = max(a, rb * BLOCK), min(b, rb * BLOCK + BLOCK)
        rows = torch.arange(r0, r1, device=k.device)
        for i in range(h):
            kb = rb - diags[i][diags[i] <= rb]
            blk = (kb[:, None] * BLOCK + ar).flatten()
            c = cols[i][cols[i] < r1]
            c = c[cov[i, rb - c // BLOCK] == 0]  # columns inside a chosen block diagonal are already there
            keys = torch.cat([blk[blk < r1], c])
            stage = (cid - keys // chunk_len).clamp(max=2) if chunk_len is not None else torch.zeros_like(keys)
            parts = [keys[stage == s] for s in range(3)]
            keys = torch.cat(parts)
            logits = torch.cat([qa[r0:r1, s, i] @ k[p, i // g].t() for s, p in enumerate(parts) if p.numel()], 1)
            logits = (logits * scale).masked_fill(keys[None, :] > rows[:, None], float("-inf"))
            m = torch.logsumexp(logits, -1)
            out[r0 - a : r1 - a, i] = torch.exp(logits - m[:, None]) @ v[keys, i // g]
            lse[r0 - a : r1 - a, i] = m
    return out, lse


def fast_sparse_prompt(q5: torch.Tensor, k: torch.Tensor, v: torch.Tensor, chunk_len: Optional[int],
                       sm_scale: float, logit_scale: float, budget: LayerBudget, last_q: int,
                       pieces: Sequence[tuple[int, int]],
                       reestimate_every: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`~sgl_qwen1m.ops.sparse.prompt_ref.sparse_attention_prompt_ref` (same arguments and result, given
    ``pieces``) with :func:`gathered_sparse_attention` as the attention step."""
    qa = attention_variants(q5, chunk_len)
    anchors = estimation_anchors(pieces, chunk_len, reestimate_every)
    outs, lses, est_end = [], [], 0
    for i, (a, b) in enumerate(pieces):
        if anchors[i] == i:
            vert, sl = piece_scores(q5, k, (a, b), chunk_len, sm_scale, logit_scale, last_q)
            est_end = b
        v_idx, cov = piece_pattern(vert, sl, est_end, budget, keys=b)
        o, lse = gathered_sparse_attention(qa, k, v, (a, b), chunk_len, sm_scale * logit_scale, v_idx, cov)
        outs.append(o)
        lses.append(lse)
    return torch.cat(outs), torch.cat(lses)


@contextmanager
def chunked_sparse_prefill(model: Any, prefill_chunk: int, reestimate_every: int = 1,
                           oracle: bool = False) -> Iterator[None]:
    """Within the block, ``model`` (a :class:`~sgl_qwen1m.model.torch_qwen2.TinyQwen2` with sparse budgets set)
    prefills long prompts as serving does with ``--chunked-prefill-size prefill_chunk`` (:func:`serving_pieces`),
    with pattern reuse every ``reestimate_every`` pieces; ``oracle`` runs the fp32 oracle instead of the gathered
    attention. Other calls (decode, short prompts) go to the model's own attention."""
    orig = model._attend
    dca = model.dca

    def hook(q, k_new, k, v, pos, scale_len, impl, layer=0):  # noqa: ANN001 - mirrors TinyQwen2._attend
        n = k.shape[0]
        if not (q.shape[0] == n and int(pos[0]) == 0 and model.sparse is not None and n > model.sparse_threshold):
            return orig(q, k_new, k, v, pos, scale_len, impl, layer=layer)
        logit_scale = float(yarn_logit_scale(torch.tensor([scale_len]), dca)[0])
        q5, kf, vf = query_variants(model, q, pos), k.float(), v.float()
        qa = attention_variants(q5, dca.chunk_len)
        out = torch.empty(n, q.shape[1], q.shape[2], dtype=torch.float32, device=q.device)
        pieces = serving_pieces(n, dca.chunk_len, prefill_chunk, model.sparse_threshold)
        for a, b, sparse in pieces:
            if not sparse:
                rows = torch.arange(a, b, device=q.device)
                out[a:b] = dca_attention_ref(qa[a:b], kf[:b], vf[:b], rows, dca.chunk_len, model.sm_scale,
                                             logit_scale)[0]
        sp = [(a, b) for a, b, s in pieces if s]
        if sp:
            fn = sparse_attention_prompt_ref if oracle else fast_sparse_prompt
            o, _ = fn(q5, kf, vf, dca.chunk_len, model.sm_scale, logit_scale, model.sparse[layer],
                      last_q=model.sparse_last_q, pieces=sp, reestimate_every=reestimate_every)
            out[torch.cat([torch.arange(a, b, device=q.device) for a, b in sp])] = o
        return out

    model._attend = hook
    try:
        yield
    finally:
        del model._attend  # the instance attribute; the class method shows again
