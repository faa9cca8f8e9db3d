"""Prompt text → token ids with the model's own tokenizer, off the event loop.

The rendered prompt already holds the family's special tokens (role headers, one image placeholder
per image). vLLM expands each image placeholder
token into the image's patch tokens; the ids sent here are the unexpanded ones.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

_IMPORT_LOCK = threading.Lock()  # transformers' lazy module import is not thread-safe


def _auto_tokenizer() -> Any:
    with _IMPORT_LOCK:
        from engines.cpu_compat import install_import_hook

        install_import_hook()  # transformers imports torchvision when installed (CUDA build on CPU torch)
        from transformers import AutoTokenizer  # heavy import, only where a model is served

        return AutoTokenizer


class Tokenizer:
    """One model's tokenizer, loaded once (on first use or by ``load``)."""

    def __init__(self, name_or_path: str) -> None:
        self.name_or_path = name_or_path
        self._tok: Any = None
        self._ids: dict[tuple[str, ...], list[int]] = {}
        self._lock = threading.Lock()

    def load(self) -> Any:
        with self._lock:
            if self._tok is None:
                self._tok = _auto_tokenizer().from_pretrained(self.name_or_path)
            return self._tok

    def encode_sync(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.load().encode(text, add_special_tokens=add_special_tokens))

    async def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``. Rendered chat prompts carry their own BOS (the family data says
        whether the tokenizer must add it); raw completion prompts get the tokenizer's, as vLLM does."""
        return await asyncio.to_thread(self.encode_sync, text, add_special_tokens)

    def token_ids(self, tokens: tuple[str, ...]) -> list[int]:
        """Ids of single special tokens (e.g. the family's stop tokens); unknown ones are skipped.
        Looked up once per tuple: every request of a model asks for the same ones."""
        if tokens not in self._ids:
            tok = self.load()
            found = (tok.convert_tokens_to_ids(token) for token in tokens)
            self._ids[tokens] = [int(i) for i in found if i is not None and i != tok.unk_token_id]
        return list(self._ids[tokens])
