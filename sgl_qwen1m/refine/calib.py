"""Calibration sequences for sparsity refinement: token windows of exactly ``--length`` tokens.

``--calib`` is a file or a glob (files taken in sorted order). Per file, by suffix:

* ``.json``: a list of token ids, a list of such lists, or ``{"input_ids": [...]}``;
* ``.jsonl``: one object per line with ``input_ids`` (ids) or ``text`` (tokenized);
* ``.bin``: a raw ``uint16`` token stream (the text-LM data builder's ``train.bin`` / ``heldout.bin``; only the
  tokens needed are read);
* anything else: UTF-8 text, tokenized with the model directory's ``tokenizer.json``.

Every file / entry becomes one token run; runs are joined with the model's EOS id and the stream is cut into
consecutive, non-overlapping windows of ``length`` tokens (the first ``num_seqs`` are used).
"""

from __future__ import annotations

import glob
import json
from pathlib import Path
from typing import Union

__all__ = ["load_calibration", "calibration_files"]


def calibration_files(pattern: str) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern)) if any(c in pattern for c in "*?[") else [Path(pattern)]
    files = [f for f in files if f.is_file()]
    if not files:
        raise FileNotFoundError(f"--calib {pattern!r} matches no file")
    return files


def _runs(path: Path, tokenizer, limit: int) -> list[list[int]]:  # noqa: ANN001
    if path.suffix == ".json":
        raw = json.loads(path.read_text())
        if isinstance(raw, dict):
            raw = raw.get("input_ids")
        if isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            return [raw]
        if isinstance(raw, list) and all(isinstance(r, list) for r in raw):
            return [list(map(int, r)) for r in raw]
        raise ValueError(f"{path}: expected a list of token ids, a list of lists or {{'input_ids': [...]}}")
    if path.suffix == ".jsonl":
        out = []
        for n, line in enumerate(path.read_text().splitlines()):
            if not line.strip():
                continue
            obj = json.loads(line)
            if "input_ids" in obj:
                out.append(list(map(int, obj["input_ids"])))
            elif "text" in obj:
                out.append(_encode(tokenizer, obj["text"], path))
            else:
                raise ValueError(f"{path}:{n + 1}: need 'input_ids' or 'text'")
        return out
    if path.suffix == ".bin":
        import numpy as np

        return [np.fromfile(path, dtype=np.uint16, count=limit).astype(np.int64).tolist()]  # only what is used
    return [_encode(tokenizer, path.read_text(encoding="utf-8", errors="replace"), path)]


def _encode(tokenizer, text: str, path: Path) -> list[int]:  # noqa: ANN001
    if tokenizer is None:
        raise ValueError(f"{path}: text calibration data needs the model's tokenizer.json")
    return tokenizer.encode(text, add_special_tokens=False).ids


def load_calibration(
    pattern: str, length: int, num_seqs: int = 1, model_dir: Union[str, Path, None] = None, eos_id: int = 0
) -> list[list[int]]:
    """``num_seqs`` windows of ``length`` tokens from the files ``pattern`` names (see the module docstring)."""
    if length <= 0 or num_seqs <= 0:
        raise ValueError(f"--length and --num-seqs must be > 0, got {length}, {num_seqs}")
    tokenizer = None
    if model_dir is not None and (Path(model_dir) / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    stream: list[int] = []
    for f in calibration_files(pattern):
        for run in _runs(f, tokenizer, length * num_seqs - len(stream)):
            if stream:
                stream.append(eos_id)
            stream += run
            if len(stream) >= length * num_seqs:
                break
    have = len(stream) // length
    if have == 0:
        raise ValueError(f"calibration data {pattern!r} has {len(stream)} tokens; --length {length} needs at least "
                         f"{length} (one window)")
    return [stream[i * length : (i + 1) * length] for i in range(min(have, num_seqs))]

