"""The gateway through the real OpenAI Python SDK (base_url), against real vLLM engines."""

from __future__ import annotations

import json

import openai
import pytest

from tests.e2e.conftest import EMBEDDED_FAMILY, REMOTE_FAMILIES, model_id
from tests.helpers import png_data_uri
from vlm_gateway.tokenize import Tokenizer

pytestmark = pytest.mark.engine

EMBEDDED = model_id(EMBEDDED_FAMILY)
REMOTE = model_id(REMOTE_FAMILIES[0])


@pytest.fixture(scope="module")
def client(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=120)


def image_message(text: str = "What is in this image?") -> list[dict]:
    return [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri(), "detail": "low"}},
        {"type": "text", "text": text},
    ]}]


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_chat_with_data_uri_image(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=image_message(), max_tokens=8,
                                           temperature=0)
    assert reply.id.startswith("chatcmpl-")
    assert reply.object == "chat.completion"
    assert reply.model == model
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str) and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert reply.usage.completion_tokens == 8 or choice.finish_reason == "stop"
    # the image was expanded by the engine: far more prompt tokens than the text alone
    assert reply.usage.prompt_tokens > 20
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_chat_streamed_with_usage(client: openai.OpenAI, model: str) -> None:
    stream = client.chat.completions.create(model=model, messages=image_message(), max_tokens=8,
                                            temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [finishes[0]] and finishes[0] in ("stop", "length")
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.completion_tokens >= 1 and usage.prompt_tokens > 20
    # streamed and non-streamed agree on the same greedy request
    full = client.chat.completions.create(model=model, messages=image_message(), max_tokens=8, temperature=0)
    assert text == full.choices[0].message.content
    # (streamed from a model whose images the gateway placed, the gateway counts usage; whole, vLLM does)
    assert (usage.prompt_tokens, usage.completion_tokens) == (full.usage.prompt_tokens, full.usage.completion_tokens)


def test_completions_create(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=REMOTE, prompt="USER: Say something. ASSISTANT:", max_tokens=5,
                                      temperature=0)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    assert isinstance(reply.choices[0].text, str)
    assert reply.usage.completion_tokens <= 5


def test_completions_streamed(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=EMBEDDED, prompt="Hello", max_tokens=4, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    full = client.completions.create(model=EMBEDDED, prompt="Hello", max_tokens=4, temperature=0)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == full.choices[0].text


def test_models_list(client: openai.OpenAI) -> None:
    models = {m.id: m for m in client.models.list()}
    assert EMBEDDED in models and REMOTE in models
    card = models[EMBEDDED].model_dump()
    assert card["owned_by"] and card["max_images"] >= 1 and card["context_length"] == 4096
    assert card["family"] == EMBEDDED_FAMILY


def test_unknown_model_is_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="no-such-model", messages=image_message(), max_tokens=2)
    assert info.value.code == "model_not_found"
    assert info.value.body["param"] == "model"


@pytest.mark.parametrize("content", [
    [{"type": "image_url", "image_url": "not-an-object"}],
    [{"type": "video", "video": "x"}],
    [{"type": "text"}],
    42,
], ids=["image_url-string", "unknown-part", "text-missing", "number"])
def test_malformed_content_is_bad_request(client: openai.OpenAI, content) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=EMBEDDED, messages=[{"role": "user", "content": content}],
                                       max_tokens=2)
    assert info.value.body["param"].startswith("messages[0].content")
    assert info.value.body["type"] == "invalid_request_error"


def test_broken_image_is_bad_request(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,bm90IGFuIGltYWdl"}},
        {"type": "text", "text": "hi"}]}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=EMBEDDED, messages=messages, max_tokens=2)
    assert info.value.body["param"] == "messages[0].content[0].image_url"


DOCUMENTED_PROMPT = "SYSTEM: Hello\n\nUSER:<image>\ntell me about the image\n\nASSISTANT:"


@pytest.mark.parametrize("family", ["llava_1_5", EMBEDDED_FAMILY])
def test_completions_with_images_in_extra_body(client: openai.OpenAI, family: str) -> None:
    """The documented raw prompt with one hand-written <image> marker, images sent via extra_body."""
    reply = client.completions.create(model=model_id(family), prompt=DOCUMENTED_PROMPT, max_tokens=4,
                                      temperature=0, extra_body={"images": [png_data_uri(64, 64)],
                                                                 "return_token_ids": True})
    assert isinstance(reply.choices[0].text, str)
    assert reply.usage.prompt_tokens > 20  # the image was expanded
    assert len(reply.model_extra["prompt_token_ids"]) == reply.usage.prompt_tokens


def test_completions_marker_mismatch_bad_request(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=REMOTE, prompt=DOCUMENTED_PROMPT, max_tokens=2,
                                  extra_body={"images": [png_data_uri(), png_data_uri()]})
    assert info.value.body["param"] == "prompt"


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_logprobs_on_an_image_request(client: openai.OpenAI, model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=image_message(), max_tokens=10, temperature=0,
                                           logprobs=True, top_logprobs=5, extra_body={"ignore_eos": True})
    content = reply.choices[0].logprobs.content
    assert len(content) == 10 == reply.usage.completion_tokens
    # tokens may be parts of a character (random weights pick any byte token): their bytes, joined, are
    # the text's, whole characters included (the engine's own bytes for such a piece are empty); an
    # unfinished character at the very end may or may not be in the engine's text as U+FFFD
    text = reply.choices[0].message.content
    joined = b"".join(bytes(c.bytes) for c in content).decode(errors="replace")
    assert joined.rstrip("\ufffd") == text.rstrip("\ufffd")
    for entry in content:
        assert entry.logprob <= 0 and len(entry.top_logprobs) == 5
        assert entry.logprob <= max(t.logprob for t in entry.top_logprobs) + 1e-4  # greedy: the best one
    streamed = client.chat.completions.create(model=model, messages=image_message(), max_tokens=10, temperature=0,
                                              logprobs=True, top_logprobs=5, stream=True,
                                              extra_body={"ignore_eos": True})
    tokens = [c.token for chunk in streamed if chunk.choices and chunk.choices[0].logprobs
              for c in chunk.choices[0].logprobs.content]
    assert tokens == [c.token for c in content]


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_logit_bias_steers_the_engine_and_a_bad_one_names_itself(client: openai.OpenAI, model: str) -> None:
    probe = client.completions.create(model=model, prompt="a", max_tokens=1, extra_body={"return_token_ids": True})
    a = probe.model_extra["prompt_token_ids"][-1]  # the id of "a" (or "▁a"): 1 in the tiny vocabularies' ~800
    forced = client.completions.create(model=model, prompt="Hello", max_tokens=3, logit_bias={str(a): 100},
                                       extra_body={"ignore_eos": True})
    assert forced.choices[0].text.replace(" ", "") == "aaa"
    chat = client.chat.completions.create(model=model, messages=image_message(), max_tokens=3,
                                          logit_bias={str(a): 100}, extra_body={"ignore_eos": True})
    assert chat.choices[0].message.content.replace(" ", "") == "aaa"
    for bias in ({"99999999": 1}, {"abc": 1}, {str(a): 101}):  # past the vocabulary (the engine's check), no id
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=model, messages=image_message(), max_tokens=1, logit_bias=bias)
        assert info.value.body["param"].startswith("logit_bias"), info.value.body


@pytest.mark.parametrize(("model", "family"), [(EMBEDDED, EMBEDDED_FAMILY), (REMOTE, REMOTE_FAMILIES[0])],
                         ids=["embedded", "remote"])
def test_logprobs_carry_the_bytes_of_a_piece_of_a_character(client: openai.OpenAI, checkpoints, model: str,
                                                            family: str) -> None:
    """A byte token (the first byte of "世", 0xE4: "ä" in Qwen's byte-level alphabet, "<0xE4>" in LLaVA's
    SentencePiece vocabulary) has no text of its own; its logprob entry still carries its byte."""
    tokenizer = Tokenizer(str(checkpoints[family]))
    byte = next(i for i in range(tokenizer.load().get_vocab_size()) if tokenizer.token_bytes(i) == [0xE4])
    reply = client.chat.completions.create(model=model, messages=image_message(), max_tokens=3, logprobs=True,
                                           top_logprobs=1, logit_bias={str(byte): 100},
                                           extra_body={"ignore_eos": True})
    content = reply.choices[0].logprobs.content
    assert [c.bytes for c in content] == [[0xE4]] * 3  # vLLM's own: [] (the token's text is empty)
    assert [c.top_logprobs[0].bytes for c in content] == [[0xE4]] * 3


def test_completions_logprobs_echo_and_prompt_forms(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=REMOTE, prompt="Hello there", max_tokens=4, temperature=0, logprobs=3,
                                      extra_body={"ignore_eos": True})
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == 4 and len(lp.top_logprobs) == 4 and all(len(t) <= 3 for t in lp.top_logprobs)
    assert "".join(lp.tokens) == reply.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(4)]
    echoed = client.completions.create(model=REMOTE, prompt="Hello there", max_tokens=2, temperature=0, echo=True,
                                       logprobs=1, extra_body={"ignore_eos": True})
    lp = echoed.choices[0].logprobs
    assert echoed.choices[0].text.startswith("Hello there")
    assert lp.token_logprobs[0] is None and all(v is not None for v in lp.token_logprobs[1:])
    assert len(lp.tokens) == echoed.usage.prompt_tokens + 2
    many = client.completions.create(model=REMOTE, prompt=["One", "Two", "Three"], max_tokens=2, n=2,
                                     temperature=1)
    assert sorted(c.index for c in many.choices) == list(range(6))
    ids = client.completions.create(model=REMOTE, prompt=[[1, 300], [1, 300, 301]], max_tokens=2, temperature=0)
    assert len(ids.choices) == 2 and ids.usage.prompt_tokens == 5


def test_n_greedy_answers_at_temperature_0(client: openai.OpenAI) -> None:
    """OpenAI takes n > 1 at temperature 0; vLLM refuses it as such, so the gateway asks for its equal."""
    chat = client.chat.completions.create(model=REMOTE, messages=image_message(), n=2, temperature=0, max_tokens=5,
                                          extra_body={"ignore_eos": True})
    assert len(chat.choices) == 2 and chat.choices[0].message.content == chat.choices[1].message.content
    comp = client.completions.create(model=REMOTE, prompt="Hello there", n=3, temperature=0, max_tokens=4,
                                     extra_body={"ignore_eos": True})
    assert len(comp.choices) == 3 and len({c.text for c in comp.choices}) == 1


def test_image_by_file_id(client: openai.OpenAI, tmp_path) -> None:
    from tests.helpers import png_bytes

    path = tmp_path / "red.png"
    path.write_bytes(png_bytes())
    uploaded = client.files.create(file=path.open("rb"), purpose="vision")
    by_file = client.chat.completions.create(model=REMOTE, max_tokens=3, temperature=0, messages=[{
        "role": "user", "content": [{"type": "image_url", "image_url": {"file_id": uploaded.id}},
                                    {"type": "text", "text": "What is in this image?"}]}])
    by_uri = client.chat.completions.create(model=REMOTE, max_tokens=3, temperature=0, messages=[{
        "role": "user", "content": [{"type": "image_url", "image_url": {"url": png_data_uri()}},
                                    {"type": "text", "text": "What is in this image?"}]}])
    assert by_file.choices[0].message.content == by_uri.choices[0].message.content
    assert by_file.usage.prompt_tokens == by_uri.usage.prompt_tokens
    client.files.delete(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model=REMOTE, max_tokens=3, messages=[{
            "role": "user", "content": [{"type": "image_url", "image_url": {"file_id": uploaded.id}}]}])


COLOR_TOOL = {"type": "function", "function": {
    "name": "report_color", "description": "Report the main color of the picture.",
    # bounded values only: a random model fills an unbounded integer or string until max_tokens
    "parameters": {"type": "object", "properties": {"color": {"type": "string", "enum": ["red", "green", "blue"]},
                                                    "sure": {"type": "boolean"}},
                   "required": ["color", "sure"]}}}


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
@pytest.mark.parametrize("choice", ["required", {"type": "function", "function": {"name": "report_color"}}],
                         ids=["required", "named"])
def test_forced_tool_call_with_an_image(client: openai.OpenAI, model: str, choice) -> None:
    reply = client.chat.completions.create(model=model, messages=image_message("Which color? Use the tool."),
                                           tools=[COLOR_TOOL], tool_choice=choice, parallel_tool_calls=False,
                                           max_tokens=60, temperature=0)
    choice0 = reply.choices[0]
    assert choice0.finish_reason == "tool_calls", choice0
    (call,) = choice0.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "report_color"
    args = json.loads(call.function.arguments)  # valid against the tool's schema, from a random model
    assert args["color"] in ("red", "green", "blue") and isinstance(args["sure"], bool)


def test_streamed_tool_call_reassembled_by_the_sdk(client: openai.OpenAI) -> None:
    with client.chat.completions.stream(model=EMBEDDED, messages=image_message("Which color? Use the tool."),
                                        tools=[COLOR_TOOL], tool_choice="required", parallel_tool_calls=False,
                                        max_tokens=60, temperature=0) as stream:
        for _ in stream:
            pass
        final = stream.get_final_completion()
    (call,) = final.choices[0].message.tool_calls
    assert call.function.name == "report_color" and json.loads(call.function.arguments)["color"]
    whole = client.chat.completions.create(model=EMBEDDED, messages=image_message("Which color? Use the tool."),
                                           tools=[COLOR_TOOL], tool_choice="required", parallel_tool_calls=False,
                                           max_tokens=60, temperature=0)
    assert whole.choices[0].message.tool_calls[0].function.arguments == call.function.arguments


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_tool_result_carrying_an_image(client: openai.OpenAI, model: str) -> None:
    def conversation(result_content) -> list[dict]:
        return [{"role": "user", "content": "Take a screenshot and tell me what you see."},
                {"role": "assistant", "content": None, "tool_calls": [{
                    "id": "call_shot", "type": "function",
                    "function": {"name": "screenshot", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "call_shot", "content": result_content}]

    tools = [{"type": "function", "function": {"name": "screenshot", "description": "Take a screenshot.",
                                               "parameters": {"type": "object", "properties": {}}}}]
    with_image = client.chat.completions.create(model=model, tools=tools, max_tokens=4, temperature=0,
                                                messages=conversation([
                                                    {"type": "text", "text": "screenshot:"},
                                                    {"type": "image_url", "image_url": {"url": png_data_uri()}}]))
    text_only = client.chat.completions.create(model=model, tools=tools, max_tokens=4, temperature=0,
                                               messages=conversation("screenshot: (none)"))
    # the image reached the engine: its tokens are in the prompt
    assert with_image.usage.prompt_tokens_details.image_tokens > 0
    assert text_only.usage.prompt_tokens_details.image_tokens == 0


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_responses_create_and_stream_with_input_image(client: openai.OpenAI, model: str) -> None:
    content = [{"type": "input_text", "text": "What is in this image?"},
               {"type": "input_image", "image_url": png_data_uri(), "detail": "low"}]
    created = client.responses.create(model=model, input=[{"role": "user", "content": content}],
                                      max_output_tokens=8, temperature=0)
    assert created.status in ("completed", "incomplete") and created.output_text
    assert created.usage.input_tokens > 20 and created.usage.output_tokens <= 8
    with client.responses.stream(model=model, input=[{"role": "user", "content": content}], max_output_tokens=8,
                                 temperature=0) as stream:
        events = list(stream)
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    # a random model runs into max_output_tokens: the stream ends with response.incomplete, as OpenAI's does
    assert events[-1].type == f"response.{created.status}"
    assert "".join(deltas) == events[-1].response.output_text == created.output_text
    again = client.responses.retrieve(created.id)
    assert again.output_text == created.output_text
    follow = client.responses.create(model=model, previous_response_id=created.id, input="And the colors?",
                                     max_output_tokens=4, temperature=0)
    assert follow.usage.input_tokens > created.usage.input_tokens  # the earlier turn is in the prompt


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_responses_truncation_auto_fits_a_long_conversation(client: openai.OpenAI, model: str) -> None:
    """Four turns of an image and about 900 text tokens overflow the 4096-token context. Qwen2.5-VL
    (embedded): the gateway counts the images' tokens itself (144 each) and drops the oldest turn before
    sending; LLaVA (remote): vLLM expands each image to 576 tokens and refuses the prompt, which drops a
    turn, twice."""
    image = {"type": "input_image", "image_url": png_data_uri(336, 336, (200, 120, 40)), "detail": "high"}
    items: list[dict] = []
    for t in range(4):
        text = {"type": "input_text", "text": f"Turn {t}: " + "lorem ipsum " * 100}
        items += [{"role": "user", "content": [image, text]}, {"role": "assistant", "content": f"Answer {t}."}]
    items.append({"role": "user", "content": "And now?"})
    with pytest.raises(openai.BadRequestError) as err:
        client.responses.create(model=model, input=items, max_output_tokens=4)
    assert err.value.code == "context_length_exceeded" and err.value.param == "input"
    response = client.responses.create(model=model, input=items, max_output_tokens=4, truncation="auto")
    assert response.truncation == "auto" and response.status in ("completed", "incomplete")
    assert 2 * 900 < response.usage.input_tokens <= 4096 - 4  # at least the last two image turns are kept
    assert response.usage.input_tokens_details.image_tokens > 0


@pytest.mark.parametrize("model", [EMBEDDED, REMOTE], ids=["embedded", "remote"])
def test_a_resent_prompt_reports_its_cached_tokens(client: openai.OpenAI, model: str) -> None:
    """vLLM's prefix cache, as OpenAI reports prompt caching: ``prompt_tokens_details.cached_tokens``
    (whole and streamed answers, and the Responses API's ``input_tokens_details``)."""
    color = (17, 160, 90) if model == EMBEDDED else (90, 17, 160)  # an image no other test sends
    messages = [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": png_data_uri(640, 480, color)}},
        {"type": "text", "text": "Describe the picture."}]}]
    first = client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    assert first.usage.prompt_tokens_details.cached_tokens == 0  # nothing sent it before
    again = client.chat.completions.create(model=model, messages=messages, max_tokens=2)
    cached = again.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < again.usage.prompt_tokens == first.usage.prompt_tokens  # the last block is computed
    streamed = list(client.chat.completions.create(model=model, messages=messages, max_tokens=2, stream=True,
                                                   stream_options={"include_usage": True}))
    assert streamed[-1].usage.prompt_tokens_details.cached_tokens == cached
    response = client.responses.create(model=model, max_output_tokens=2, input=[{"role": "user", "content": [
        {"type": "input_image", "image_url": messages[0]["content"][0]["image_url"]["url"]},
        {"type": "input_text", "text": "Describe the picture."}]}])
    assert response.usage.input_tokens_details.cached_tokens == cached
