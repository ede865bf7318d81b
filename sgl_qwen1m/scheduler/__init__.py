"""Chunked-prefill policy (plain Python; the SGLang hooks that apply it live in ``sgl_qwen1m.adapter``)."""
