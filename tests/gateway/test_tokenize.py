import subprocess
import sys

import pytest

from vlm_gateway.tokenize import Tokenizer


async def test_encode_adds_bos_only_when_asked(tiny_checkpoint) -> None:
    tok = Tokenizer(str(tiny_checkpoint))  # LLaVA-1.5: BOS is <s>
    bos = tok.token_ids(("<s>",))[0]
    plain = await tok.encode("USER: <image>\nhi ASSISTANT:")
    with_bos = await tok.encode("USER: <image>\nhi ASSISTANT:", add_special_tokens=True)
    assert with_bos == [bos, *plain]
    assert plain.count(tok.token_ids(("<image>",))[0]) == 1  # the placeholder stays one token


def test_token_ids_skip_unknown_and_are_cached(tiny_checkpoint) -> None:
    tok = Tokenizer(str(tiny_checkpoint))
    ids = tok.token_ids(("</s>", "<|not-a-token|>"))
    assert len(ids) == 1
    ids.append(99)  # callers get a copy
    assert tok.token_ids(("</s>", "<|not-a-token|>")) == ids[:1]


@pytest.mark.parametrize("family", ["llava_1_5", "qwen2_5_vl", "gemma3", "llama4", "fastvlm", "phi3_5_vision"])
async def test_same_ids_as_the_transformers_tokenizer(family: str, tiny_dir) -> None:
    """The gateway loads only ``tokenizers`` (no torch, no transformers); its ids must equal the
    model's own transformers tokenizer's, with and without special tokens."""
    from transformers import AutoTokenizer

    from vlm_gateway.testing.tiny import ensure_tiny

    path = ensure_tiny(family, tiny_dir)
    ours, theirs = Tokenizer(str(path)), AutoTokenizer.from_pretrained(str(path))
    text = "SYSTEM: Hello\n\nUSER: describe the picture, ünïcødé 🐈 ok?\n\nASSISTANT: The cat is  black."
    for special in (False, True):
        assert await ours.encode(text, special) == theirs.encode(text, add_special_tokens=special)
    names = (theirs.eos_token, theirs.bos_token or theirs.eos_token)
    assert ours.token_ids(names) == [theirs.convert_tokens_to_ids(n) for n in names]


def test_gateway_import_path_loads_no_torch() -> None:
    code = ("import sys, vlm_gateway.app, vlm_gateway.cli, vlm_gateway.pipeline; "
            "import vlm_gateway.tokenize as t; "
            "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
            "{'torch', 'transformers', 'vllm'} or m.endswith('cpu_compat')); print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


async def test_recent_texts_are_looked_up_not_encoded_again(tiny_checkpoint, monkeypatch) -> None:
    """The same question about another image renders to the same text: its ids come from the recent
    texts (a copy each time), separately for with and without special tokens, within a bound."""
    from vlm_gateway import tokenize

    tok = Tokenizer(str(tiny_checkpoint))
    calls: list[str] = []
    encode, encode_long = tok.encode_sync, tok._encode_long
    monkeypatch.setattr(tok, "encode_sync", lambda text, special=False: calls.append(text) or encode(text, special))
    monkeypatch.setattr(tok, "_encode_long", lambda text, special: calls.append(text) or encode_long(text, special))
    monkeypatch.setattr(tokenize, "CACHED_TEXTS", 2)
    first = await tok.encode("USER: <image>\nhi ASSISTANT:")
    first.append(-1)  # callers get a copy
    assert await tok.encode("USER: <image>\nhi ASSISTANT:") == first[:-1]
    assert await tok.encode("USER: <image>\nhi ASSISTANT:", True) != first[:-1]
    assert len(calls) == 2
    await tok.encode("a")
    await tok.encode("b")  # the bound: the two oldest texts are gone
    await tok.encode("USER: <image>\nhi ASSISTANT:")
    assert len(calls) == 5
    await tok.encode("x" * (tokenize.INLINE_CHARS + 1))  # long texts are not kept
    await tok.encode("x" * (tokenize.INLINE_CHARS + 1))
    assert len(calls) == 7


@pytest.mark.parametrize("family", ["llava_1_5", "qwen2_5_vl", "gemma3", "llama4", "fastvlm", "phi3_5_vision"])
def test_token_bytes_rebuild_the_text_byte_for_byte(family: str, tiny_dir) -> None:
    """Logprobs' ``bytes``: each token's own, so that joined they are the text, characters split across
    byte tokens included (SentencePiece's ``▁`` is a space, and its pieces start with one)."""
    from vlm_gateway.testing.tiny import ensure_tiny

    tok = Tokenizer(str(ensure_tiny(family, tiny_dir)))
    text = "héllo wörld 世界 🙂 ok <tag>"
    joined = bytes(b for i in tok.encode_sync(text) for b in tok.token_bytes(i))
    assert joined.decode() in (text, " " + text)
    singles = [tok.token_bytes(i) for i in range(tok.load().get_vocab_size())]
    # every byte that is no character alone has a token of its own (byte level, or byte fallback)
    assert {b[0] for b in singles if len(b) == 1} >= set(range(0x80, 0x100))


async def test_a_long_text_is_encoded_by_the_call_that_lets_go_of_the_gil(tiny_checkpoint, monkeypatch) -> None:
    """``tokenizers``' ``encode`` holds the GIL throughout (a 900 KB prompt froze the event loop, /health
    included, for over a second, even in a worker thread); ``encode_batch`` lets go of it while it works.
    Long texts take the second, with the same ids; short ones stay on the loop."""
    tok = Tokenizer(str(tiny_checkpoint))
    text = "the cat sat on the mat, " * 2_000
    expected = tok.encode_sync(text)
    rust = tok.load()

    class OnlyBatch:
        def encode_batch(self, texts, add_special_tokens=False):
            return rust.encode_batch(texts, add_special_tokens=add_special_tokens)

        def encode(self, *args, **kwargs):
            raise AssertionError("a long text went through encode, which holds the GIL")

    monkeypatch.setattr(tok, "_tok", OnlyBatch())
    assert await tok.encode(text) == expected


async def test_long_texts_waiting_to_be_encoded_hold_no_default_threads(tiny_checkpoint, monkeypatch) -> None:
    """Long texts are encoded two at a time in threads of their own: the ones waiting their turn hold none
    of the loop's default threads, which image decoding and file I/O use."""
    import asyncio
    import threading

    tok = Tokenizer(str(tiny_checkpoint))
    go = threading.Event()
    monkeypatch.setattr(tok, "_encode_long", lambda text, special: go.wait(30) and [1])
    long = "x" * 10_000
    waiting = [asyncio.ensure_future(tok.encode(long)) for _ in range(40)]
    try:
        assert await asyncio.wait_for(asyncio.to_thread(lambda: "decoded"), 10) == "decoded"
    finally:
        go.set()
        assert await asyncio.gather(*waiting) == [[1]] * 40
