"""Prompt text → token ids with the model's own tokenizer (its ``tokenizer.json``), off the event loop.

The rendered prompt already holds the family's special tokens (role headers, one image placeholder
per image). vLLM expands each image placeholder token into the image's patch tokens; the ids sent here
are the unexpanded ones. Only the Rust ``tokenizers`` library is loaded: no torch, no transformers.
"""

from __future__ import annotations

import asyncio
import json
import re
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from vlm_gateway.errors import InvalidRequest
from vlm_gateway.prompts.families import checkpoint_file

# Texts up to this many characters are tokenized on the event loop (well under a millisecond).
INLINE_CHARS = 4096
# Rendered prompts seen recently, by text: the same question about different images renders to the same
# text (each image is the same placeholder), so its ids are looked up, not computed again.
CACHED_TEXTS = 2048
# Long texts are encoded in threads of their own, this many at once: waiting for one, the rest hold no
# thread of the loop's default executor (image decoding, file I/O share it).
_LONG_TEXTS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlm-tokenize")
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet (Qwen, Llama 3/4): the character each byte is written as in the vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[chr(byte)] = byte
        else:
            chars[chr(256 + extra)] = byte
            extra += 1
    return chars


_BYTE_LEVEL = _byte_level_alphabet()


class Tokenizer:
    """One model's tokenizer, loaded once (on first use or by ``load``)."""

    def __init__(self, name_or_path: str) -> None:
        self.name_or_path = name_or_path
        self._tok: Any = None
        self._ids: dict[tuple[str, ...], list[int]] = {}
        self._lock = threading.Lock()
        self._recent: OrderedDict[tuple[str, bool], tuple[int, ...]] = OrderedDict()  # short texts' ids
        self._bytes: dict[int, list[int]] = {}  # token id → the bytes it stands for
        self._byte_level: bool | None = None

    def load(self) -> Any:
        """The ``tokenizers.Tokenizer``; ``FileNotFoundError`` when the checkpoint has no tokenizer.json."""
        with self._lock:
            if self._tok is None:
                from tokenizers import Tokenizer as RustTokenizer

                self._tok = RustTokenizer.from_file(str(checkpoint_file(self.name_or_path, "tokenizer.json")))
                self._tok.no_truncation()
                self._tok.no_padding()
            return self._tok

    def encode_sync(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.load().encode(text, add_special_tokens=add_special_tokens).ids

    def _encode_long(self, text: str, add_special_tokens: bool) -> list[int]:
        """A long text's ids (in a ``_LONG_TEXTS`` thread): ``encode_batch`` lets go of the GIL while it
        works, where ``encode`` holds it throughout (a long prompt froze the event loop for seconds)."""
        return self.load().encode_batch([text], add_special_tokens=add_special_tokens)[0].ids

    async def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Rendered chat prompts carry their own BOS (the family data says
        whether the tokenizer must add it); raw completion prompts get the tokenizer's, as vLLM does.
        A short text is encoded at once (a hop to a thread costs more than it), or found among the
        recently encoded; a long one is encoded in a thread."""
        if len(text) > INLINE_CHARS:
            return await asyncio.get_running_loop().run_in_executor(_LONG_TEXTS, self._encode_long, text,
                                                                    add_special_tokens)
        key = (text, add_special_tokens)
        ids = self._recent.get(key)
        if ids is None:
            ids = self._recent[key] = tuple(self.encode_sync(text, add_special_tokens))
            if len(self._recent) > CACHED_TEXTS:
                self._recent.popitem(last=False)
        else:
            self._recent.move_to_end(key)
        return list(ids)

    def decode(self, ids: list[int]) -> str:
        """Token ids as text, special tokens included (what ``echo`` shows of a prompt sent as ids)."""
        return self.load().decode(ids, skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> list[int]:
        """The bytes token ``token_id`` stands for, as OpenAI's logprobs ``bytes`` give them: a piece of a
        character for a byte token (where its text alone is empty or U+FFFD). Byte-level vocabularies
        (GPT-2's alphabet) and SentencePiece ones (``▁`` for a space, ``<0xNN>`` byte fallback) both."""
        found = self._bytes.get(token_id)
        if found is None:
            tok = self.load()
            if self._byte_level is None:  # the decoder's own settings: not the whole vocabulary serialized
                decoder = json.loads(tok.decoder.__getstate__()) if tok.decoder is not None else {}
                kinds = [decoder.get("type"), *(d.get("type") for d in decoder.get("decoders") or [])]
                self._byte_level = "ByteLevel" in kinds
            piece = tok.id_to_token(token_id) or ""
            if self._byte_level and all(c in _BYTE_LEVEL for c in piece):
                found = [_BYTE_LEVEL[c] for c in piece]
            elif not self._byte_level and (byte := _BYTE_TOKEN.fullmatch(piece)):
                found = [int(byte.group(1), 16)]
            else:  # a special or added token (written as itself), or a SentencePiece piece
                found = list(piece.encode() if self._byte_level else piece.replace("\u2581", " ").encode())
            self._bytes[token_id] = found
        return found

    def check_ids(self, ids: list[int], param: str) -> None:
        """A prompt sent as token ids holds only ids of this vocabulary (else a 400 naming ``param``)."""
        size = self.load().get_vocab_size(with_added_tokens=True)
        bad = next((i for i in ids if i >= size), None)
        if bad is not None:
            raise InvalidRequest(f"token id {bad} is outside the model's vocabulary of {size}", param=param)

    def token_ids(self, tokens: tuple[str, ...]) -> list[int]:
        """Ids of single special tokens (e.g. the family's stop tokens); unknown ones are skipped.
        Looked up once per tuple: every request of a model asks for the same ones."""
        if tokens not in self._ids:
            tok = self.load()
            found = (tok.token_to_id(token) for token in tokens)
            self._ids[tokens] = [int(i) for i in found if i is not None]
        return list(self._ids[tokens])
