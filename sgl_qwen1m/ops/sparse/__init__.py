"""Vertical-slash sparse prefill: plan -> estimate -> select -> attend (see :mod:`sgl_qwen1m.ops`)."""
