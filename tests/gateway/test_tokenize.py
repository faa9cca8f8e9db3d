from gateway.tokenize import Tokenizer


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
