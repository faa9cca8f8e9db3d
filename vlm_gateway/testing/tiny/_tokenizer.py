"""Tiny, deterministic BPE vocabularies in the two styles the real families use.

* ``sentencepiece``: Llama-2 / Gemma style. Spaces are ``▁``, unknown bytes fall back to ``<0x00>`` ..
  ``<0xFF>`` tokens, so any text encodes. The vocabulary starts with the family's leading specials
  (e.g. ``<unk> <s> </s>``), then the 256 byte tokens, then the learned pieces.
* ``bytelevel``: GPT-2 / Qwen2 / Llama-3/4 (tiktoken) style: the 256 byte-level symbols plus learned
  merges; any text encodes.

Merges are learned with ``tokenizers``' BPE trainer from a small built-in English corpus (the trainer
is deterministic for a fixed input). The result (``vocab``, ``merges``) is handed to the real
transformers tokenizer class of each family (``LlamaTokenizer``, ``GemmaTokenizer``, ``Qwen2Tokenizer``)
or wrapped with the family's pre-tokenizer, so the saved ``tokenizer.json`` has the real pipeline.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

_WORDS = """
the of and to in a is that for it as was with be by on not he I this are or his from at which but have
an they you were her she there one all we their can has been if more when will would who so no what
up out about into than them only other time new some could these two may first then do any like my
now over such our man me even most made after also did many before must through back years where
much your way well down should because each just those people how too little state good very make
world still see own men work long here get both between life being under never day same another know
while last might us great old year off come since against go came right used take three image
picture photo describe describes describing color colour red green blue yellow black white cat dog
car tree house sky water person people left right top bottom center small large what which where
please answer question text shown show shows showing there this that these those user assistant
system model hello hi thanks thank you sure here is a an the JSON json true false null { } [ ] : ,
0 1 2 3 4 5 6 7 8 9 10 100 2024 2025 yes no ok error tool call function name arguments value
""".split()  # noqa: SIM905

CORPUS = [" ".join(_WORDS[i : i + 12]) + (".\n" if i % 24 == 0 else ",\n\n") for i in range(0, len(_WORDS), 6)] + [
    "The image shows a small red car parked next to a green tree under a blue sky.",
    "Describe the picture in one sentence. What color is the cat? The cat is black and white.",
    "You are a helpful assistant. Answer the question about the image.",
    '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}',
    "Hello! How can I help you today? Thanks, that is all.",
]


def byte_tokens() -> list[str]:
    return [f"<0x{b:02X}>" for b in range(256)]


def train_sentencepiece(
    leading_specials: list[str], vocab_size: int = 1024, prepend_space: bool = True, extra_pieces=()
) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) for a byte-fallback ``▁`` vocabulary.

    ``extra_pieces``: strings made of one repeated character (e.g. "\\n\\n") that must be single
    vocabulary entries; merges that build them are added with top priority.
    """
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement="▁", prepend_scheme="first" if prepend_space else "never", split=True
    )
    alphabet = [chr(c) for c in range(32, 127) if chr(c) != " "] + ["▁", "\n", "\t"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(leading_specials) - 256,
        initial_alphabet=alphabet,
        limit_alphabet=len(alphabet),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    learned = json.loads(tok.to_str())["model"]
    pieces = sorted(learned["vocab"], key=learned["vocab"].get)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    extra_merges: list[tuple[str, str]] = []
    for piece in sorted(extra_pieces, key=len):
        if piece not in pieces:
            pieces.append(piece)
        if len(piece) > 1:
            half = len(piece) // 2 if len(piece) % 2 == 0 else len(piece) - 1
            a, b = piece[:half], piece[half:]
            extra_merges.append((a, b))
    vocab: dict[str, int] = {}
    for t in [*leading_specials, *byte_tokens(), *pieces]:
        vocab.setdefault(t, len(vocab))
    return vocab, extra_merges + [m for m in merges if m not in extra_merges]


def train_bytelevel(leading_specials: list[str] = (), vocab_size: int = 1024):
    """(vocab, merges) for a GPT-2-style byte-level vocabulary."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(leading_specials),
        initial_alphabet=alphabet,
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer=trainer)
    learned = json.loads(tok.to_str())["model"]
    # Byte symbols first in GPT-2 order, then learned pieces in training order.
    pieces = sorted(learned["vocab"], key=learned["vocab"].get)
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in learned["merges"]]
    vocab: dict[str, int] = {}
    for t in [*leading_specials, *sorted(alphabet, key=_byte_order()), *pieces]:
        vocab.setdefault(t, len(vocab))
    return vocab, merges


def _byte_order():
    """Sort key putting GPT-2's byte-to-unicode symbols in byte order (as GPT-2/Qwen vocabularies do)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    order = {chr(c): b for b, c in zip(bs, cs, strict=True)}
    return lambda ch: order.get(ch, 1 << 20)


def reserved(prefix: str, start: int, count: int) -> list[str]:
    """``<|{prefix}_{i}|>`` names, e.g. reserved("reserved_special_token", 0, 3)."""
    return [f"<|{prefix}_{i}|>" for i in range(start, start + count)]
