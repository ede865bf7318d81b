"""The bundled model's tokenizer: a tiny byte-level BPE in exactly Qwen2's format.

Transformers 5 loads any ``model_type: qwen2`` directory with its own ``Qwen2Tokenizer`` class, which rebuilds the
pipeline from ``vocab`` + ``merges`` (NFC, Qwen's split regex, byte-level, BPE, byte-level decoder) and ignores the
rest of ``tokenizer.json``. So the tokenizer here *is* that pipeline, with a small vocabulary: ``<|endoftext|>``,
the 256 byte symbols, and merges that make every word of the task templates one token (``Ġword``). Digits are one
token each (Qwen's regex splits them) and a space before a number is its own ``Ġ`` token.

Prompts start with a space, so every word is a ``Ġword`` token and the ids of a text are the concatenation of its
fragments' ids (``ids(" a") + ids(" b") == ids(" a b")``), which lets task generators build prompts in id space.
There is no BOS (as in Qwen); ``<|endoftext|>`` (id 0) is EOS and padding.

``save_tokenizer(dir)`` writes ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``;
``transformers.AutoTokenizer.from_pretrained(dir)`` and SGLang then tokenize exactly as :func:`build_tokenizer`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

__all__ = [
    "EOS",
    "EOS_ID",
    "FILLER_SENTENCES",
    "TASK_WORDS",
    "KEY_NOUNS",
    "VOCAB_SIZE",
    "build_tokenizer",
    "save_tokenizer",
    "load_tokenizer",
]

EOS = "<|endoftext|>"
EOS_ID = 0
PUNCTUATION = ".,:?=;!-"
# Qwen2's pre-tokenisation regex (transformers' Qwen2Tokenizer uses exactly this).
QWEN2_SPLIT = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

# Haystack: RULER's "noise" essay sentences plus a few more of the same kind (no key noun appears here).
FILLER_SENTENCES = (
    "the grass is green.",
    "the sky is blue.",
    "the sun is yellow.",
    "here we go.",
    "there and back again.",
    "the night is dark.",
    "the snow is white.",
    "birds sing in the morning.",
    "we walk along the road.",
    "time goes on and on.",
)

# Words of the task instructions, needles and questions (see ``sgl_qwen1m.model.tasks``).
TASK_WORDS = (
    "a all an and answer are assigned assignment chain find following for hidden important in inside irrelevant is it"
    " key lot magic memorize number numbers of one pass remember special text that the them there track value var"
    " variable variables what"
).split()

# Keys of the needle tasks and variable names of variable tracking: one token each, disjoint from the filler.
KEY_NOUNS = (
    "apple river stone tiger candle mirror garden rocket violin dragon castle pencil falcon forest island jacket"
    " ladder lemon magnet needle orange parrot pepper planet puzzle rabbit saddle silver spider statue teapot throne"
    " tomato tunnel turtle velvet wallet window winter zebra anchor banana basket bottle bridge button camera carpet"
    " cherry cookie copper desert dollar engine feather finger hammer helmet kettle lizard marble meadow monkey napkin"
).split()

VOCAB_SIZE = 800  # config.json vocab_size (embedding rows); the tokenizer uses fewer ids


def _bytes_to_unicode() -> list[str]:
    """GPT-2's byte -> printable-character table (the ByteLevel alphabet), in byte order."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return [out[b] for b in range(256)]


def _words() -> list[str]:
    words: list[str] = []
    for s in FILLER_SENTENCES:
        words += [w.strip(PUNCTUATION) for w in s.split()]
    return list(dict.fromkeys(words + TASK_WORDS + KEY_NOUNS))


def _vocab_and_merges() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """``<|endoftext|>``, the 256 byte symbols, then one token per merge: ``Ġ`` + word, built left to right
    (``Ġt``, ``Ġth``, ``Ġthe``), and ``Ġ`` + each punctuation mark."""
    space = _bytes_to_unicode()[ord(" ")]  # "Ġ"
    tokens = [EOS] + _bytes_to_unicode()
    merges: list[tuple[str, str]] = []
    seen = set(tokens)
    pieces = [[space, *w] for w in _words()] + [[space, p] for p in PUNCTUATION]
    for chars in pieces:
        cur = chars[0]
        for ch in chars[1:]:
            if cur + ch not in seen:
                seen.add(cur + ch)
                tokens.append(cur + ch)
                merges.append((cur, ch))
            cur += ch
    if len(tokens) > VOCAB_SIZE:
        raise ValueError(f"vocabulary has {len(tokens)} tokens, more than VOCAB_SIZE={VOCAB_SIZE}")
    return {t: i for i, t in enumerate(tokens)}, merges


def build_tokenizer() -> Tokenizer:
    """The tokenizer object: Qwen2's pipeline over the tiny vocabulary (deterministic on every machine)."""
    vocab, merges = _vocab_and_merges()
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(EOS, special=True, normalized=False)])
    return tok


def save_tokenizer(
    out_dir: Union[str, Path], model_max_length: int = 131072, tokenizer: Optional[Tokenizer] = None
) -> None:
    """Write the three tokenizer files into ``out_dir`` (created if needed); ``tokenizer`` defaults to the bundled
    one (any tokenizer built on the same Qwen2 pipeline with ``<|endoftext|>`` as id 0 fits the config files)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (tokenizer or build_tokenizer()).save(str(out / "tokenizer.json"))
    special = {"eos_token": EOS, "pad_token": EOS, "unk_token": None, "bos_token": None}
    cfg = {
        "tokenizer_class": "Qwen2Tokenizer",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "split_special_tokens": False,
        **special,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps({"eos_token": EOS, "pad_token": EOS}, indent=2) + "\n")


def load_tokenizer(model_dir: Union[str, Path]) -> Tokenizer:
    """The ``tokenizers`` object from ``model_dir/tokenizer.json`` (no transformers import)."""
    return Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
