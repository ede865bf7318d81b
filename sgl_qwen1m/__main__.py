"""``python -m sgl_qwen1m <verb>``: see :mod:`sgl_qwen1m.cli`. Guarded: SGLang starts processes with *spawn*."""

from sgl_qwen1m.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
