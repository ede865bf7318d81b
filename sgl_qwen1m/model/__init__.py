"""The bundled tiny DCA model: tokenizer, config, pure-torch Qwen2 reference and training script.

* ``vocab``: the word-level tokenizer (``tokenizers``), saved as ``tokenizer.json`` + config files;
* ``spec``: ``config.json`` of the bundled model, its directory, and the plain-RoPE variant export;
* ``torch_qwen2``: :class:`TinyQwen2`, a pure-torch Qwen2 with plain RoPE or DCA (CPU or CUDA);
* ``tasks``: the RULER-style retrieval tasks (training data and the eval harness's prompts);
* ``train``: ``python -m sgl_qwen1m train`` (synthetic long-context retrieval);
* ``capture``: every layer's attention inputs of a reference prefill (for :mod:`sgl_qwen1m.refine`);
* ``text_data``, ``text_lm``: the small real-text LM (data builder, tokenizer, ``python -m sgl_qwen1m train-lm``);
* ``cli``: the ``train``, ``train-lm`` and ``model`` verbs of :mod:`sgl_qwen1m.cli`.

Nothing here imports SGLang.
"""

from sgl_qwen1m.model.spec import BUNDLED_MODEL_DIR, export_rope_variant, has_weights, make_config, require_weights

__all__ = ["BUNDLED_MODEL_DIR", "export_rope_variant", "has_weights", "make_config", "require_weights"]
