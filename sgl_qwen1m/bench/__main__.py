"""``python -m sgl_qwen1m.bench ...`` = ``python -m sgl_qwen1m bench ...`` (guarded: SGLang uses *spawn*)."""

import sys

from sgl_qwen1m.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["bench", *sys.argv[1:]]))
