"""The OpenAI SDK and LangChain's ``ChatOpenAI(use_responses_api=True)`` against the app served by
uvicorn (scripted engine): what real clients send and how strictly they read the answers."""

from __future__ import annotations

import threading

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_openai import ChatOpenAI

from tests.gateway.responses_api.conftest import wait_for
from tests.helpers import ALICE, BOB, png_data_uri
from vlm_gateway.tokenize import Tokenizer


@pytest.fixture
def alice(base_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=ALICE, max_retries=0)


@pytest.fixture(scope="module")
def prompt(tiny_checkpoint, engine):
    """The text of the last prompt the engine was sent."""
    tokenizer = Tokenizer(str(tiny_checkpoint))
    tokenizer.load()
    return lambda: tokenizer.decode(engine.requests[-1].token_ids)


def test_create_retrieve_delete(alice, base_url, engine) -> None:
    made = alice.responses.create(model="m", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": png_data_uri(),
                                                         "detail": "auto"}]}], instructions="Be brief.")
    assert made.output_text == "Hi there" and made.status == "completed" and made.usage.output_tokens == 2
    assert len(engine.requests[-1].images) == 1
    assert alice.responses.retrieve(made.id).output_text == "Hi there"
    bob = openai.OpenAI(base_url=base_url, api_key=BOB, max_retries=0)
    with pytest.raises(openai.NotFoundError):
        bob.responses.retrieve(made.id)
    follow = alice.responses.create(model="m", input="And?", previous_response_id=made.id)
    assert follow.previous_response_id == made.id
    alice.responses.delete(made.id)
    with pytest.raises(openai.NotFoundError) as missing:
        alice.responses.retrieve(made.id)
    assert missing.value.param == "response_id"
    with pytest.raises(openai.BadRequestError) as bad:
        alice.responses.create(model="m", input=[{"role": "user", "content": [
            {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}])
    assert bad.value.param == "input[0].content[0].image_url"


def test_stream_helper(alice) -> None:
    with alice.responses.stream(model="m", input="Hello") as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert final.output_text == "Hi there" and final.usage.total_tokens > 0


def test_create_with_stream_true(alice) -> None:
    events = list(alice.responses.create(model="m", input="Hello", stream=True))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == ["Hi", " there"] and events[-1].type == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_background_with_the_sdk(alice, engine) -> None:
    engine.gate.clear()
    made = alice.responses.create(model="m", input="Hello", background=True)
    assert made.status == "queued"
    wait_for(lambda: alice.responses.retrieve(made.id).status == "in_progress")
    assert alice.responses.cancel(made.id).status == "cancelled"
    assert alice.responses.retrieve(made.id).status == "cancelled"
    engine.gate.set()
    done = alice.responses.create(model="m", input="Hello", background=True)
    final = wait_for(lambda: (r := alice.responses.retrieve(done.id)).status == "completed" and r)
    assert final.output_text == "Hi there"


def test_reconnect_to_a_background_response(alice, engine) -> None:
    """``responses.stream(response_id=...)`` (GET ?stream=true): a response still running is waited for, then
    its events are sent as a live stream sends them; ``starting_after=k`` leaves out events 0..k."""
    engine.gate.clear()
    made = alice.responses.create(model="m", input="Hello", background=True)
    threading.Timer(0.3, engine.gate.set).start()
    with alice.responses.stream(response_id=made.id) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_response()
    assert final.id == made.id and final.status == "completed" and final.output_text == "Hi there"
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done", "response.completed"]
    every = list(alice.responses.retrieve(made.id, stream=True))
    assert [e.sequence_number for e in every] == list(range(len(kinds)))
    later = list(alice.responses.retrieve(made.id, stream=True, starting_after=3))
    assert [(e.type, e.sequence_number) for e in later] == [(e.type, e.sequence_number) for e in every[4:]]
    assert later[-1].response.output[0].id == final.output[0].id  # the stored items, their own ids
    with alice.responses.stream(response_id=made.id, starting_after=6) as stream:  # the SDK filters itself
        assert [event.type for event in stream] == kinds[7:]
        assert stream.get_final_response().output_text == "Hi there"


def test_a_response_deleted_while_waited_for_ends_its_stream(alice, engine) -> None:
    engine.gate.clear()
    made = alice.responses.create(model="m", input="Hello", background=True)
    wait_for(lambda: alice.responses.retrieve(made.id).status == "in_progress")
    threading.Timer(0.3, alice.responses.delete, [made.id]).start()
    got = list(alice.responses.retrieve(made.id, stream=True))
    assert [e.type for e in got] == ["response.created", "response.in_progress", "response.failed"]
    assert got[-1].response.error.message == f"Response with id '{made.id}' not found."


def test_replay_is_the_live_stream_again(alice, engine) -> None:
    engine.pieces = ["Hi there"]  # one delta: the replay sends each item's text in one
    live = list(alice.responses.create(model="m", input="Hello", stream=True))
    again = list(alice.responses.retrieve(live[-1].response.id, stream=True))
    assert [e.model_dump() for e in again] == [e.model_dump() for e in live]  # ids, numbers, objects: all


def test_langchain_responses_api(base_url, alice, prompt) -> None:
    llm = ChatOpenAI(model="m", base_url=base_url, api_key=ALICE, use_responses_api=True, max_retries=0)
    reply = llm.invoke([HumanMessage("Hello")])
    assert reply.text == "Hi there" and reply.usage_metadata["output_tokens"] == 2
    chunks = list(llm.stream("Hello"))
    assert "".join(c.text for c in chunks) == "Hi there"
    # a tool round trip as LangChain replays it: the AI turn with its call, then the tool's result
    history = [HumanMessage("Weather?"),
               AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Paris"}, "id": "call_1"}]),
               ToolMessage("sunny", tool_call_id="call_1")]
    assert llm.invoke(history).text == "Hi there"
    assert "Paris" in prompt() and "sunny" in prompt()
    chained = ChatOpenAI(model="m", base_url=base_url, api_key=ALICE, use_responses_api=True, max_retries=0,
                         use_previous_response_id=True)
    first = chained.invoke("My name is Ada.")
    second = chained.invoke([HumanMessage("My name is Ada."), first, HumanMessage("Name?")])
    assert second.text == "Hi there"
    previous = alice.responses.retrieve(second.response_metadata["id"]).previous_response_id
    assert previous == first.response_metadata["id"]
    assert prompt().count("My name is Ada.") == 1 and "Name?" in prompt()


def test_input_items_list_the_conversation(alice, base_url) -> None:
    """``responses.input_items.list``: what the response was given, the earlier turns of
    ``previous_response_id`` (with their outputs) included, instructions not; newest first by default;
    a cursor page; image URLs only when ``include`` asks; another key's response is a 404."""
    image = png_data_uri()
    first = alice.responses.create(model="m", instructions="Be brief.", input=[{"role": "user", "content": [
        {"type": "input_text", "text": "What is this?"}, {"type": "input_image", "image_url": image}]}])
    follow = alice.responses.create(model="m", previous_response_id=first.id, input=[
        {"type": "function_call", "call_id": "call_1", "name": "look", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "a cat"},
        {"role": "developer", "content": "Answer in French."}])
    listed = list(alice.responses.input_items.list(follow.id, order="asc"))
    assert [(i.type, getattr(i, "role", None)) for i in listed] == [
        ("message", "user"), ("message", "assistant"), ("function_call", None), ("function_call_output", None),
        ("message", "developer")]
    user, answer, call, output, developer = listed
    assert [p.type for p in user.content] == ["input_text", "input_image"] and user.content[0].text == "What is this?"
    assert user.content[1].image_url is None  # not asked for
    assert answer.content[0].type == "output_text" and answer.content[0].text == first.output_text
    assert (call.call_id, call.name, call.arguments, output.call_id, output.output) == (
        "call_1", "look", "{}", "call_1", "a cat")
    assert developer.content[0].text == "Answer in French."
    assert len({i.id for i in listed}) == 5
    newest = alice.responses.input_items.list(follow.id, limit=2)
    assert [i.id for i in newest.data] == [developer.id, output.id] and newest.has_more
    assert [i.id for i in alice.responses.input_items.list(follow.id, limit=2, after=output.id).data] == [
        call.id, answer.id]
    assert [i.id for i in alice.responses.input_items.list(follow.id)] == [i.id for i in reversed(listed)]
    with_urls = alice.responses.input_items.list(first.id, include=["message.input_image.image_url"])
    assert with_urls.data[0].content[1].image_url == image
    plain = httpx.get(f"{base_url}/responses/{first.id}/input_items", headers={"Authorization": f"Bearer {ALICE}"},
                      params={"include": "message.input_image.image_url"})  # a plain repeated key works too
    assert plain.json()["data"][0]["content"][1]["image_url"] == image
    with pytest.raises(openai.BadRequestError) as bad:
        alice.responses.input_items.list(first.id, limit=101)
    assert bad.value.param == "limit"
    with pytest.raises(openai.NotFoundError) as unknown:
        alice.responses.input_items.list(first.id, after="msg_nope")
    assert unknown.value.param == "after"
    with pytest.raises(openai.NotFoundError):
        openai.OpenAI(base_url=base_url, api_key=BOB, max_retries=0).responses.input_items.list(first.id)
