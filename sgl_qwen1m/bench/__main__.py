"""``python -m sgl_qwen1m.bench``; guarded because SGLang starts its scheduler with multiprocessing *spawn*."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
