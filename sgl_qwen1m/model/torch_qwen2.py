"""A pure-torch Qwen2 that reads an HF model directory and runs it with plain RoPE or Dual Chunk Attention.

Legend: B batch, T tokens in a step, L tokens in the sequence (cache included), H query heads, Hkv KV heads,
D head dim (128), E hidden size, V vocab size, C DCA chunk length ``chunk_size - local_size``.

* ``forward(ids)`` is the training forward: plain RoPE at positions ``0..T-1`` and causal SDPA. At the training
  length this *is* DCA: any sequence of at most ``chunk_size`` tokens gets exactly plain-RoPE distances.
* ``prefill`` / ``decode`` / ``generate`` are the inference reference with a KV cache, mirroring SGLang: with DCA,
  keys are cached rotated at ``p % C``; queries are rotated at the DCA variant positions of
  :func:`sgl_qwen1m.ops.dca.plan.dca_positions` and attention is
  :func:`sgl_qwen1m.ops.dca.reference.dca_attention_ref`
  with the YaRN logit multiplier ``s(L)**2`` (``L`` = prompt length in prefill, cached + new length in decode).
  With ``impl="auto"`` a prefill of at most ``chunk_size`` tokens takes the exactly equivalent causal SDPA and a
  longer one the blocked form of :mod:`sgl_qwen1m.model.dca_train` (both tested equal to the reference);
  ``impl="ref"`` always calls the reference.
* Sparse prefill (``use_sparse=True``, or :meth:`TinyQwen2.set_sparse`): a full prefill longer than the sparse
  threshold attends only the keys ``qwen1m``'s vertical-slash selection keeps, per piece and head, through
  :func:`sgl_qwen1m.ops.sparse.prompt_ref.sparse_attention_prompt_ref` (the fp32 oracle of the Triton path; no
  engine chunked prefill: pieces are the DCA chunks). Decode stays dense, as in serving.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from sgl_qwen1m.ops.dca.plan import dca_positions, yarn_logit_scale
from sgl_qwen1m.ops.dca.reference import dca_attention_ref
from sgl_qwen1m.config import DCAConfig, SparseBudgets
from sgl_qwen1m.ops.sparse.plan import LayerBudget, layer_budgets
from sgl_qwen1m.ops.sparse.prompt_ref import sparse_attention_prompt_ref
from sgl_qwen1m.model.dca_train import dca_blocked_attention
from sgl_qwen1m.model.spec import SPARSE_FILE, WEIGHTS_FILE, read_config
from sgl_qwen1m.model.vocab import EOS_ID

__all__ = ["TinyQwen2", "KVCache", "rope_cos_sin", "apply_rope"]

KVCache = list  # per layer: [k [L, Hkv, D] rotated for storage, v [L, Hkv, D]]
_Q_VARIANTS = ("q_intra", "q_succ", "q_inter")  # the three variants attention uses (the critical ones only rank)
Q5_VARIANTS = (*_Q_VARIANTS, "q_succ_critical", "q_inter_critical")  # SGLang's order of the five


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``[T, D/2]`` (fp32) for integer ``positions [T]`` (neox layout, as SGLang)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    ang = positions.float()[:, None] * inv_freq[None, :]
    return ang.cos(), ang.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x [..., T, heads, D]`` by ``cos/sin [T, D/2]`` (neox style: halves, not interleaved pairs)."""
    d2 = x.shape[-1] // 2
    c, s = cos[:, None, :].to(x.dtype), sin[:, None, :].to(x.dtype)
    x1, x2 = x[..., :d2], x[..., d2:]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype) * self.weight.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, e: int, h: int, hkv: int, d: int) -> None:
        super().__init__()
        self.h, self.hkv, self.d = h, hkv, d
        self.q_proj = nn.Linear(e, h * d, bias=True)
        self.k_proj = nn.Linear(e, hkv * d, bias=True)
        self.v_proj = nn.Linear(e, hkv * d, bias=True)
        self.o_proj = nn.Linear(h * d, e, bias=False)


class MLP(nn.Module):
    def __init__(self, e: int, i: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(e, i, bias=False)
        self.up_proj = nn.Linear(e, i, bias=False)
        self.down_proj = nn.Linear(i, e, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        e, d = cfg["hidden_size"], cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
        self.self_attn = Attention(e, cfg["num_attention_heads"], cfg["num_key_value_heads"], d)
        self.mlp = MLP(e, cfg["intermediate_size"])
        self.input_layernorm = RMSNorm(e, cfg["rms_norm_eps"])
        self.post_attention_layernorm = RMSNorm(e, cfg["rms_norm_eps"])


class Body(nn.Module):
    def __init__(self, cfg: dict[str, Any]) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg["vocab_size"], cfg["hidden_size"])
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg["num_hidden_layers"]))
        self.norm = RMSNorm(cfg["hidden_size"], cfg["rms_norm_eps"])


class TinyQwen2(nn.Module):
    """Qwen2ForCausalLM with tied embeddings; parameter names equal the HF checkpoint's (``model.*``)."""

    def __init__(self, config: dict[str, Any], use_dca: Optional[bool] = None) -> None:
        super().__init__()
        if not config.get("tie_word_embeddings", False):
            raise ValueError("TinyQwen2 supports tie_word_embeddings=true only")
        self.config = dict(config)
        self.model = Body(config)
        self.head_dim = self.model.layers[0].self_attn.d
        self.theta = float(config.get("rope_theta", 10000.0))
        dca = DCAConfig.from_hf_config(config)
        self.dca: Optional[DCAConfig] = dca if (use_dca is None or use_dca) else None
        if use_dca and dca is None:
            raise ValueError("use_dca=True but config.json has no dual_chunk_attention_config")
        self.sm_scale = self.head_dim**-0.5
        self.sparse: Optional[list[LayerBudget]] = None
        self.sparse_threshold = 0
        self.sparse_last_q = 64
        std = float(config.get("initializer_range", 0.02))
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)

    # ---------------------------------------------------------------- weights
    @classmethod
    def from_pretrained(
        cls,
        model_dir: Union[str, Path],
        device: Union[str, torch.device] = "cpu",
        use_dca: Optional[bool] = None,
        use_sparse: bool = False,
    ) -> "TinyQwen2":
        """Load ``config.json`` + ``model.safetensors``; parameters are fp32 (upcast from bf16), eval mode.

        ``use_sparse``: run long prefills sparse with ``model_dir/sparse_attention_config.json`` and the DCA
        block's ``sparse_attention_threshold`` / ``sparse_attention_last_q``."""
        from safetensors.torch import load_file

        model = cls(read_config(model_dir), use_dca=use_dca)
        if use_sparse:
            path = Path(model_dir) / SPARSE_FILE
            if not path.is_file():
                raise ValueError(f"use_sparse=True but {path} does not exist")
            model.set_sparse(SparseBudgets.from_json(path, len(model.model.layers), model.model.layers[0].self_attn.h))
        state = load_file(str(Path(model_dir) / WEIGHTS_FILE))
        missing, unexpected = model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        if missing or [k for k in unexpected if k != "lm_head.weight"]:
            raise ValueError(f"checkpoint mismatch: missing {missing}, unexpected {unexpected}")
        return model.to(device).eval()

    def set_sparse(self, budgets: Optional[SparseBudgets], threshold: Optional[int] = None,
                   last_q: Optional[int] = None) -> None:
        """Turn sparse prefill on with ``budgets`` (None: off); threshold/last_q default to the DCA config's."""
        if budgets is None:
            self.sparse = None
            return
        if self.dca is None:
            raise ValueError("sparse prefill needs DCA (the model has no dual_chunk_attention_config)")
        self.sparse = layer_budgets(budgets, self.model.embed_tokens.weight.device)
        self.sparse_threshold = self.dca.sparse_attention_threshold if threshold is None else threshold
        self.sparse_last_q = self.dca.sparse_attention_last_q if last_q is None else last_q

    def save_weights(self, model_dir: Union[str, Path], dtype: torch.dtype = torch.bfloat16) -> Path:
        """Write ``model.safetensors`` (tied: no ``lm_head.weight``) in ``dtype``; returns the file path."""
        from safetensors.torch import save_file

        path = Path(model_dir) / WEIGHTS_FILE
        save_file({k: v.detach().to("cpu", dtype).contiguous() for k, v in self.state_dict().items()}, str(path))
        return path

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---------------------------------------------------------------- training forward
    def forward(self, ids: torch.Tensor, dca: Optional[DCAConfig] = None) -> torch.Tensor:
        """Logits ``[B, T, V]`` for token ids ``[B, T]``.

        ``dca=None``: plain RoPE, causal SDPA (== DCA for T <= chunk_size). With a ``dca`` config (training-time
        augmentation with a chunk shorter than T): DCA positions, YaRN logit scale ``yarn_logit_scale(T)``, exact.
        """
        b, t = ids.shape
        pos = torch.arange(t, device=ids.device)
        if dca is None:
            cos, sin = rope_cos_sin(pos, self.head_dim, self.theta)
        else:
            dp = dca_positions(pos, dca)
            q_cs = [rope_cos_sin(dp[n], self.head_dim, self.theta) for n in _Q_VARIANTS]
            cos, sin = rope_cos_sin(dp["k"], self.head_dim, self.theta)
            scale = self.sm_scale * float(yarn_logit_scale(torch.tensor([t]), dca)[0])
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            a = layer.self_attn
            hs = layer.input_layernorm(x)
            q = a.q_proj(hs).view(b, t, a.h, a.d)
            k = apply_rope(a.k_proj(hs).view(b, t, a.hkv, a.d), cos, sin).transpose(1, 2)
            v = a.v_proj(hs).view(b, t, a.hkv, a.d).transpose(1, 2)
            g = a.h // a.hkv
            k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
            if dca is None:
                o = F.scaled_dot_product_attention(apply_rope(q, cos, sin).transpose(1, 2), k, v, is_causal=True)
            else:
                qv = [apply_rope(q, *cs).transpose(1, 2) for cs in q_cs]
                o = dca_blocked_attention(*qv, k, v, dca.chunk_len, scale)
            x = x + a.o_proj(o.transpose(1, 2).reshape(b, t, a.h * a.d))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return self.model.norm(x) @ self.model.embed_tokens.weight.t()

    # ---------------------------------------------------------------- inference reference
    def _attend(
        self,
        q: torch.Tensor,
        k_new: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        pos: torch.Tensor,
        scale_len: int,
        impl: str,
        layer: int = 0,
    ) -> torch.Tensor:
        """Attention of new queries ``q [T, H, D]`` (unrotated) over cached ``k, v [L, Hkv, D]`` (k rotated
        for storage, new tokens included); ``k_new [T, Hkv, D]`` are the new tokens' unrotated keys and
        ``pos [T]`` the queries' absolute positions. Returns ``[T, H, D]`` float32."""
        dca, d = self.dca, self.head_dim
        logit_scale = float(yarn_logit_scale(torch.tensor([scale_len]), dca)[0])  # 1.0 without DCA
        n_keys, t = k.shape[0], q.shape[0]
        full_prefill = t == n_keys and int(pos[0]) == 0
        g = q.shape[1] // k.shape[1]
        vg = v.float().transpose(0, 1).repeat_interleave(g, 0)  # [H, L, D]
        if full_prefill and self.sparse is not None and n_keys > self.sparse_threshold:
            dp = dca_positions(pos, dca)
            q5 = torch.stack([apply_rope(q.float(), *rope_cos_sin(dp[n], d, self.theta)) for n in Q5_VARIANTS], 1)
            o, _ = sparse_attention_prompt_ref(q5, k.float(), v.float(), dca.chunk_len, self.sm_scale, logit_scale,
                                               self.sparse[layer], last_q=self.sparse_last_q)
            return o
        if full_prefill and impl == "auto" and (dca is None or n_keys <= dca.chunk_size):
            # Exact: up to chunk_size tokens DCA distances equal plain RoPE distances.
            cos, sin = rope_cos_sin(pos, d, self.theta)
            qr = apply_rope(q.float(), cos, sin).transpose(0, 1)
            kr = apply_rope(k_new.float(), cos, sin).transpose(0, 1)  # plain-position keys of this prefill
            o = F.scaled_dot_product_attention(
                qr, kr.repeat_interleave(g, 0), vg, is_causal=True, scale=self.sm_scale * logit_scale
            )
            return o.transpose(0, 1)
        if full_prefill and impl == "auto":  # long DCA prefill: the blocked form (tested equal to the reference)
            dp = dca_positions(pos, dca)
            qv = [apply_rope(q.float(), *rope_cos_sin(dp[n], d, self.theta)).transpose(0, 1)[None] for n in _Q_VARIANTS]
            kg = k.float().transpose(0, 1).repeat_interleave(g, 0)
            o = dca_blocked_attention(*qv, kg[None], vg[None], dca.chunk_len, self.sm_scale * logit_scale)
            return o[0].transpose(0, 1)
        if dca is None:
            cos, sin = rope_cos_sin(pos, d, self.theta)
            qv = apply_rope(q.float(), cos, sin)[:, None]  # [T, 1, H, D]
            chunk_len = None
        else:
            dp = dca_positions(pos, dca)
            qv = torch.stack([apply_rope(q.float(), *rope_cos_sin(dp[n], d, self.theta)) for n in _Q_VARIANTS], 1)
            chunk_len = dca.chunk_len
        outs = []
        step = 512
        for s in range(0, t, step):
            end = int(pos[min(s + step, t) - 1]) + 1  # keys past the block's last query are masked anyway
            o, _ = dca_attention_ref(
                qv[s : s + step], k[:end], v[:end], pos[s : s + step], chunk_len, self.sm_scale, logit_scale
            )
            outs.append(o)
        return torch.cat(outs)

    def _step(self, ids: torch.Tensor, cache: KVCache, scale_len: int, impl: str) -> torch.Tensor:
        """Run new tokens ``ids [T]`` after ``cache`` (updated in place); returns last-token logits ``[V]``."""
        start = cache[0][0].shape[0] if cache else 0
        t = ids.shape[0]
        pos = torch.arange(start, start + t, device=ids.device)
        kpos = dca_positions(pos, self.dca)["k"] if self.dca is not None else pos
        kcos, ksin = rope_cos_sin(kpos, self.head_dim, self.theta)
        x = self.model.embed_tokens(ids).float()
        for li, layer in enumerate(self.model.layers):
            a = layer.self_attn
            hs = layer.input_layernorm(x)
            q = a.q_proj(hs).view(t, a.h, a.d)
            k_raw = a.k_proj(hs).view(t, a.hkv, a.d)
            v = a.v_proj(hs).view(t, a.hkv, a.d)
            k = apply_rope(k_raw, kcos, ksin)
            if len(cache) <= li:
                cache.append([k[:0], v[:0]])
            cache[li][0] = torch.cat([cache[li][0], k])
            cache[li][1] = torch.cat([cache[li][1], v])
            o = self._attend(q, k_raw, cache[li][0], cache[li][1], pos, scale_len, impl, layer=li)
            x = x + a.o_proj(o.reshape(t, a.h * a.d))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        h = self.model.norm(x[-1])
        return h @ self.model.embed_tokens.weight.t()

    @torch.no_grad()
    def prefill(self, ids: Sequence[int], impl: str = "auto") -> tuple[torch.Tensor, KVCache]:
        """Process a whole prompt ``[L]``; returns (last logits ``[V]`` fp32, KV cache). ``impl``: auto | ref."""
        dev = self.model.embed_tokens.weight.device
        ids_t = torch.as_tensor(list(ids), dtype=torch.long, device=dev)
        cache: KVCache = []
        logits = self._step(ids_t, cache, scale_len=ids_t.shape[0], impl=impl)
        return logits, cache

    @torch.no_grad()
    def decode(self, token: int, cache: KVCache, impl: str = "auto") -> torch.Tensor:
        """Append one token; returns its logits ``[V]``. The YaRN scale uses the new sequence length."""
        dev = self.model.embed_tokens.weight.device
        n = cache[0][0].shape[0] + 1
        return self._step(torch.tensor([token], device=dev), cache, scale_len=n, impl=impl)

    @torch.no_grad()
    def generate(
        self, ids: Sequence[int], max_new_tokens: int, stop_ids: Sequence[int] = (EOS_ID,), impl: str = "auto"
    ) -> list[int]:
        """Greedy continuation of ``ids`` (stop token included when hit), at most ``max_new_tokens`` ids."""
        logits, cache = self.prefill(ids, impl=impl)
        out: list[int] = []
        for i in range(max_new_tokens):
            tok = int(torch.argmax(logits))
            out.append(tok)
            if tok in stop_ids or i == max_new_tokens - 1:
                break
            logits = self.decode(tok, cache, impl=impl)
        return out
