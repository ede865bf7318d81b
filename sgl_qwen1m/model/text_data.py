"""Real-text data for the small language model: files from given roots, deduplicated, split, tokenized.

    build_dataset(["/tmp/site", "/usr/lib/python3/dist-packages"], "runs/lm/data", vocab_size=16384)

* **Files**: every ``.py``, ``.md`` and ``.rst`` under the roots (symlinks not followed), ``min_bytes`` to
  ``max_bytes`` in size (very large files are mostly generated tables), read as UTF-8 (undecodable bytes replaced).
* **Dedup**: by SHA-256 of the content; the first path in sorted (root, path) order is kept.
* **Split**: by content hash: a file is held out when ``int(sha256[:8], 16) % 10000 < heldout_pct * 100``. Stable on
  every machine and independent of the roots' order; a held-out file's content never occurs in training (dedup is
  by content, so no copy of it can land in train).
* **Tokenizer**: byte-level BPE trained with ``tokenizers`` on the training split only, on Qwen2's exact pipeline
  (:mod:`sgl_qwen1m.model.vocab`: NFC, Qwen's split regex, byte-level), so ``transformers``' ``Qwen2Tokenizer`` and
  SGLang tokenize identically; ``<|endoftext|>`` is id 0 (EOS, padding, document separator). Occurrences of that
  literal string inside files are removed before encoding.
* **Outputs** in ``out_dir``: ``manifest.json`` (every file: root index, path, bytes, sha256, split; counts and
  totals), the tokenizer files, ``train.bin`` and ``heldout.bin`` (``uint16`` ids, documents joined by EOS, in
  manifest order), ``heldout_docs.json`` (token length of each held-out document, in order).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

from sgl_qwen1m.model.vocab import EOS, QWEN2_SPLIT, save_tokenizer

__all__ = ["FileEntry", "collect_files", "split_of", "train_tokenizer", "build_dataset", "read_tokens",
           "heldout_documents", "EXTENSIONS", "MANIFEST"]

EXTENSIONS = (".py", ".md", ".rst")
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class FileEntry:
    root: int  # index into the manifest's roots
    path: str  # relative to its root
    bytes: int
    sha256: str
    split: str


def split_of(sha256: str, heldout_pct: float) -> str:
    """``"heldout"`` or ``"train"`` from the content hash (stable, order-independent)."""
    return "heldout" if int(sha256[:8], 16) % 10000 < round(heldout_pct * 100) else "train"


def _walk(root: Path, exts: Sequence[str]) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            if name.endswith(tuple(exts)):
                yield Path(dirpath) / name


def collect_files(
    roots: Sequence[Union[str, Path]],
    heldout_pct: float = 2.0,
    exts: Sequence[str] = EXTENSIONS,
    min_bytes: int = 64,
    max_bytes: int = 512 * 1024,
) -> list[FileEntry]:
    """Deduplicated entries of every matching file under ``roots`` (sorted by root, then path)."""
    seen: set[str] = set()
    out = []
    for ri, root in enumerate(roots):
        root = Path(root)
        if not root.is_dir():
            raise FileNotFoundError(f"data root {root} is not a directory")
        for path in _walk(root, exts):
            try:
                if path.is_symlink() or not min_bytes <= path.stat().st_size <= max_bytes:
                    continue
                data = path.read_bytes()
            except OSError:
                continue
            sha = hashlib.sha256(data).hexdigest()
            if sha in seen:
                continue
            seen.add(sha)
            out.append(FileEntry(ri, path.relative_to(root).as_posix(), len(data), sha, split_of(sha, heldout_pct)))
    return out


def _text(roots: Sequence[Union[str, Path]], e: FileEntry) -> str:
    return (Path(roots[e.root]) / e.path).read_bytes().decode("utf-8", errors="replace").replace(EOS, "")


def train_tokenizer(texts: Iterator[str], vocab_size: int):  # noqa: ANN201 - tokenizers.Tokenizer
    """Byte-level BPE on Qwen2's pre-tokenization; ``<|endoftext|>`` is id 0."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    if not 300 <= vocab_size <= 65535:
        raise ValueError(f"vocab_size must be in [300, 65535] (ids are stored as uint16), got {vocab_size}")
    tok = Tokenizer(models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    if tok.token_to_id(EOS) != 0:
        raise RuntimeError("tokenizer training did not put <|endoftext|> at id 0")
    return tok


def _encode_split(tok, roots, entries: list[FileEntry], path: Path, batch: int = 256) -> list[int]:  # noqa: ANN001
    """Write the split's ids (documents joined by EOS) to ``path``; returns each document's token count."""
    import numpy as np

    lengths: list[int] = []
    with open(path, "wb") as f:
        for s in range(0, len(entries), batch):
            encs = tok.encode_batch([_text(roots, e) for e in entries[s : s + batch]], add_special_tokens=False)
            for enc in encs:
                ids = np.asarray(enc.ids + [0], dtype=np.uint16)
                f.write(ids.tobytes())
                lengths.append(len(enc.ids))
    return lengths


def build_dataset(
    roots: Sequence[Union[str, Path]],
    out_dir: Union[str, Path],
    vocab_size: int = 16384,
    heldout_pct: float = 2.0,
    max_bytes: int = 512 * 1024,
    tokenizer_sample_bytes: Optional[int] = 64 * 2**20,
) -> dict:
    """Collect, split, train the tokenizer (on at most ``tokenizer_sample_bytes`` of training text, taken in hash
    order), encode both splits; returns the manifest (also written to ``out_dir/manifest.json``)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    roots = [str(Path(r).resolve()) for r in roots]
    entries = collect_files(roots, heldout_pct, max_bytes=max_bytes)
    train = sorted((e for e in entries if e.split == "train"), key=lambda e: e.sha256)
    held = sorted((e for e in entries if e.split == "heldout"), key=lambda e: e.sha256)
    if not train or not held:
        raise ValueError(f"need files in both splits: {len(train)} train, {len(held)} held out under {roots} "
                         "(more roots, or a larger --heldout-pct)")

    def sample() -> Iterator[str]:
        used = 0
        for e in train:
            if tokenizer_sample_bytes is not None and used >= tokenizer_sample_bytes:
                return
            used += e.bytes
            yield _text(roots, e)

    tok = train_tokenizer(sample(), vocab_size)
    save_tokenizer(out, model_max_length=1 << 20, tokenizer=tok)
    train_lens = _encode_split(tok, roots, train, out / "train.bin")
    held_lens = _encode_split(tok, roots, held, out / "heldout.bin")
    (out / "heldout_docs.json").write_text(json.dumps(held_lens) + "\n")
    manifest = {
        "roots": roots,
        "extensions": list(EXTENSIONS),
        "heldout_pct": heldout_pct,
        "max_bytes": max_bytes,
        "vocab_size": tok.get_vocab_size(),
        "counts": {
            "files": len(entries),
            "train_files": len(train),
            "heldout_files": len(held),
            "train_bytes": sum(e.bytes for e in train),
            "heldout_bytes": sum(e.bytes for e in held),
            "train_tokens": sum(train_lens) + len(train_lens),
            "heldout_tokens": sum(held_lens) + len(held_lens),
        },
        "files": [asdict(e) for e in train + held],
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=0) + "\n")
    return manifest


def read_tokens(path: Union[str, Path]):  # noqa: ANN201 - numpy memmap
    """The ``uint16`` token stream of ``train.bin`` / ``heldout.bin`` (memory-mapped)."""
    import numpy as np

    return np.memmap(path, dtype=np.uint16, mode="r")


def heldout_documents(data_dir: Union[str, Path]) -> list[list[int]]:
    """Held-out documents as id lists (EOS separators dropped), in manifest order."""
    data = read_tokens(Path(data_dir) / "heldout.bin")
    lens = json.loads((Path(data_dir) / "heldout_docs.json").read_text())
    docs, off = [], 0
    for n in lens:
        docs.append(data[off : off + n].astype("int64").tolist())
        off += n + 1
    return docs
