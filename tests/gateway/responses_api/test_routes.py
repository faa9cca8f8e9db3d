"""/v1/responses over HTTP on the real app (memory state, in-process queue) with a scripted engine:
shapes checked with the OpenAI SDK's models, what reaches the engine, storage, ownership, background
jobs and cancellation, errors."""

from __future__ import annotations

import msgspec
import pytest
from openai.types.responses import Response

from tests.gateway.responses_api.conftest import wait_for
from tests.helpers import BOB, auth, png_data_uri
from vlm_gateway.engines.errors import EngineRejected


def create(client, **fields):
    return client.post("/v1/responses", json={"model": "m", **fields})


def ok(r) -> Response:
    assert r.status_code == 200, r.text
    return Response.model_validate(r.json())


def prompt_text(client, engine) -> str:
    return client.app.state.services.tokenizers["m"].decode(engine.requests[-1].token_ids)


def events(r) -> list[dict]:
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream"), r.text
    out = []
    for block in r.text.split("\n\n")[:-1]:
        kind, data = block.split("\n")
        out.append(msgspec.json.decode(data.removeprefix("data: ")))
        assert kind == f"event: {out[-1]['type']}"
    return out


def error(r, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()["error"]
    assert set(body) == {"message", "type", "param", "code"} and body["message"]
    return body


def test_string_input(client, engine) -> None:
    sdk = ok(create(client, input="Hello", metadata={"ticket": "42"}, temperature=0.3))
    assert sdk.output_text == "Hi there" and sdk.status == "completed" and sdk.model == "m"
    assert sdk.metadata == {"ticket": "42"} and sdk.temperature == 0.3 and sdk.store is True
    sent = engine.requests[-1]
    assert sdk.usage.input_tokens == len(sent.token_ids) and sdk.usage.output_tokens == 2
    assert sent.sampling.temperature == 0.3 and "Hello" in prompt_text(client, engine)


def test_message_with_image_and_instructions(client, engine) -> None:
    image = png_data_uri()
    sdk = ok(create(client, instructions="Answer in French.", max_output_tokens=5, input=[
        {"role": "user", "content": [{"type": "input_text", "text": "What is this?"},
                                     {"type": "input_image", "image_url": image, "detail": "low"}]}]))
    sent = engine.requests[-1]
    assert len(sent.images) == 1 and sent.images[0].startswith("data:image/")
    assert sent.sampling.max_tokens == 5 and sdk.max_output_tokens == 5
    assert sdk.instructions == "Answer in French." and "Answer in French." in prompt_text(client, engine)
    assert sdk.usage.input_tokens == len(sent.token_ids) + 99  # the engine's count, the image expanded


def test_json_schema_reaches_structured_outputs(client, engine) -> None:
    schema = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
    sdk = ok(create(client, input="x", text={"format": {"type": "json_schema", "name": "person", "schema": schema,
                                                        "strict": True}}))
    assert engine.requests[-1].sampling.structured_outputs == {"json": schema, "disable_any_whitespace": True}
    assert sdk.text.format.type == "json_schema" and sdk.text.format.name == "person"


def test_max_output_tokens_is_incomplete(client, engine) -> None:
    engine.finish = "length"
    sdk = ok(create(client, input="x", max_output_tokens=2))
    assert sdk.status == "incomplete" and sdk.incomplete_details.reason == "max_output_tokens"
    streamed = events(create(client, input="x", max_output_tokens=2, stream=True))
    assert streamed[-1]["type"] == "response.incomplete"
    assert streamed[-1]["response"]["incomplete_details"] == {"reason": "max_output_tokens"}


def test_chat_fields_are_refused_with_the_fields_to_use(client, engine) -> None:
    err = error(create(client, input="x", max_tokens=5), 400)
    assert err["code"] == "unknown_parameter" and "max_output_tokens" in err["message"]
    err = error(create(client, input="x", response_format={"type": "json_object"}), 400)
    assert err["code"] == "unknown_parameter" and "text.format" in err["message"]
    assert engine.requests == []
    assert ok(create(client, input="x", service_tier="auto")).status == "completed"  # others: still ignored


def test_prompt_cache_key_and_safety_identifier_are_echoed(client, engine) -> None:
    sdk = ok(create(client, input="x", prompt_cache_key="tenant-1", safety_identifier="user-42"))
    assert (sdk.prompt_cache_key, sdk.safety_identifier) == ("tenant-1", "user-42")
    assert ok(client.get(f"/v1/responses/{sdk.id}")).safety_identifier == "user-42"
    assert ok(create(client, input="x")).safety_identifier is None


def test_logprobs(client) -> None:
    sdk = ok(create(client, input="x", include=["message.output_text.logprobs"], top_logprobs=2))
    logprobs = sdk.output[0].content[0].logprobs
    assert [lp.token for lp in logprobs] == ["Hi", " there"] and logprobs[0].bytes == [72, 105]
    assert [t.token for t in logprobs[0].top_logprobs] == ["Hi", "x"]


def test_streamed_event_sequence(client) -> None:
    got = events(create(client, input="Hello", stream=True))
    assert [e["type"] for e in got] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done", "response.completed"]
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    assert [e["delta"] for e in got if e["type"] == "response.output_text.delta"] == ["Hi", " there"]
    final = Response.model_validate(got[-1]["response"])
    assert final.output_text == "Hi there" and final.usage.output_tokens == 2
    assert got[0]["response"]["status"] == "in_progress" and got[0]["response"]["id"] == final.id
    assert ok(client.get(f"/v1/responses/{final.id}")).output_text == "Hi there"  # stored


def test_failure_mid_stream_is_response_failed(client, engine) -> None:
    engine.fail, engine.fail_after = EngineRejected("bad value"), 1
    got = events(create(client, input="x", stream=True))
    assert got[-1]["type"] == "response.failed"
    failed = Response.model_validate(got[-1]["response"])
    assert failed.status == "failed" and failed.error.message == "bad value" and failed.error.code == "invalid_prompt"
    assert client.get(f"/v1/responses/{failed.id}").json()["status"] == "failed"
    # the item it had begun is closed, incomplete, and is the failed response's output
    assert [e["type"] for e in got[2:]] == [
        "response.output_item.added", "response.content_part.added", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.failed"]
    assert got[-2]["item"]["status"] == "incomplete" and got[-2]["item"]["id"] == got[2]["item"]["id"]
    assert [(i.id, i.status, i.content[0].text) for i in failed.output] == [(got[2]["item"]["id"], "incomplete", "Hi")]


def test_failure_before_output_keeps_its_status(client, engine) -> None:
    engine.fail = EngineRejected("too long", "context_length_exceeded")
    for stream in (False, True):
        err = error(create(client, input="x", stream=stream), 400)
        assert (err["code"], err["param"]) == ("context_length_exceeded", "input")


def test_a_schema_the_engine_refuses_names_text_format(client, engine) -> None:
    engine.fail = EngineRejected("The provided JSON schema contains features not supported by xgrammar.")
    fmt = {"type": "json_schema", "name": "x", "schema": {"type": "object", "patternProperties": {"a": {}}}}
    err = error(create(client, input="x", text={"format": fmt}), 400)
    assert err["param"] == "text.format"


def long_conversation(turns: int = 4) -> list[dict]:
    items: list[dict] = []
    for t in range(turns):
        items += [{"role": "user", "content": f"Question {t}: " + "word " * 40},
                  {"role": "assistant", "content": f"Answer {t}."}]
    return [*items, {"role": "user", "content": "Last question?"}]


def test_truncation_auto_drops_the_oldest_turns_until_the_conversation_fits(client, engine) -> None:
    fields = dict(input=long_conversation(), instructions="Be terse.", max_output_tokens=4)
    ok(create(client, **fields))
    whole = len(engine.requests[-1].token_ids)
    engine.max_model_len = whole - 20  # a turn is about 45 tokens: the oldest one has to go
    err = error(create(client, **fields), 400)  # truncation "disabled", the default
    assert (err["code"], err["param"]) == ("context_length_exceeded", "input")
    for stream in (False, True):
        r = create(client, **fields, truncation="auto", stream=stream)
        response = Response.model_validate(events(r)[-1]["response"]) if stream else ok(r)
        prompt = prompt_text(client, engine)
        assert "Question 0" not in prompt and "Answer 0." not in prompt
        assert all(text in prompt for text in ("Be terse.", "Question 1", "Answer 1.", "Last question?"))
        assert response.status == "completed" and response.truncation == "auto"
        assert response.usage.input_tokens == len(engine.requests[-1].token_ids) <= whole - 20 - 4
        stored = client.get(f"/v1/responses/{response.id}/input_items", params={"order": "asc"}).json()["data"]
        assert stored[0]["content"][0]["text"].startswith("Question 0")  # the conversation keeps every turn
    engine.max_model_len = 12  # the last turn alone does not fit either
    err = error(create(client, **fields, truncation="auto"), 400)
    assert (err["code"], err["param"]) == ("context_length_exceeded", "input")


def test_truncation_auto_follows_the_engines_count(client, engine, monkeypatch) -> None:
    """An engine that expands images itself knows the prompt's real length: its refusal drops a turn too."""
    tokenizer, answer = client.app.state.services.tokenizers["m"], engine.generate

    async def generate(request):
        if "Question 1" in tokenizer.decode(request.token_ids):
            raise EngineRejected("The prompt (5000 tokens) is longer than the maximum model length of 4096",
                                 "context_length_exceeded")
        async for delta in answer(request):
            yield delta

    monkeypatch.setattr(engine, "generate", generate)
    response = ok(create(client, input=long_conversation(), truncation="auto"))
    assert response.output_text == "Hi there" and "Question 2" in prompt_text(client, engine)
    assert "Question 1" not in prompt_text(client, engine)


def test_truncation_auto_in_the_background(client, engine) -> None:
    fields = dict(input=long_conversation(), max_output_tokens=4)
    ok(create(client, **fields))
    engine.max_model_len = len(engine.requests[-1].token_ids) - 20
    made = ok(create(client, **fields, truncation="auto", background=True))
    final = wait_for(lambda: (r := client.get(f"/v1/responses/{made.id}").json())["status"] not in (
        "queued", "in_progress") and r)
    assert final["status"] == "completed" and final["truncation"] == "auto", final
    assert "Question 0" not in prompt_text(client, engine) and "Last question?" in prompt_text(client, engine)


def test_store_and_previous_response_id(client, engine) -> None:
    first = ok(create(client, input="My name is Ada.", instructions="Be terse."))
    engine.pieces = ["Noted"]
    second = ok(create(client, input="What is my name?", previous_response_id=first.id))
    assert second.previous_response_id == first.id and second.output_text == "Noted"
    prompt = prompt_text(client, engine)
    assert prompt.index("My name is Ada.") < prompt.index("Hi there") < prompt.index("What is my name?")
    assert "Be terse." not in prompt  # instructions are not carried over
    third = ok(create(client, input="And again?", previous_response_id=second.id))
    prompt = prompt_text(client, engine)
    assert all(text in prompt for text in ("My name is Ada.", "Hi there", "What is my name?", "Noted"))
    assert third.status == "completed"


def test_get_delete_and_not_found(client) -> None:
    made = ok(create(client, input="x"))
    assert ok(client.get(f"/v1/responses/{made.id}")).model_dump() == made.model_dump()
    r = client.delete(f"/v1/responses/{made.id}")
    assert r.status_code == 200 and r.json() == {"id": made.id, "object": "response", "deleted": True}
    err = error(client.get(f"/v1/responses/{made.id}"), 404)
    assert err["param"] == "response_id" and made.id in err["message"]
    error(client.delete(f"/v1/responses/{made.id}"), 404)
    err = error(create(client, input="x", previous_response_id="resp_nope"), 404)
    assert (err["param"], err["code"]) == ("previous_response_id", "previous_response_not_found")
    unstored = ok(create(client, input="x", store=False))
    assert unstored.store is False
    error(client.get(f"/v1/responses/{unstored.id}"), 404)


def test_another_key_sees_nothing(client) -> None:
    made = ok(create(client, input="x"))
    for r in (client.get(f"/v1/responses/{made.id}", headers=auth(BOB)),
              client.delete(f"/v1/responses/{made.id}", headers=auth(BOB)),
              client.post(f"/v1/responses/{made.id}/cancel", headers=auth(BOB)),
              client.post("/v1/responses", json={"model": "m", "input": "x", "previous_response_id": made.id},
                          headers=auth(BOB))):
        assert r.status_code == 404, r.text
    assert client.get(f"/v1/responses/{made.id}").status_code == 200  # still there for its owner
    assert client.get(f"/v1/responses/{made.id}", headers={"Authorization": ""}).status_code == 401


def test_function_call_round_trip(client, engine) -> None:
    sdk = ok(create(client, input=[
        {"role": "user", "content": "Weather in Paris?"},
        {"type": "function_call", "call_id": "call_1", "name": "weather", "arguments": '{"city":"Paris"}'},
        {"type": "function_call_output", "call_id": "call_1", "output": [
            {"type": "input_text", "text": "radar image:"}, {"type": "input_image", "image_url": png_data_uri()}]},
    ], tools=[{"type": "function", "name": "weather", "parameters": {"type": "object"}}]))
    assert sdk.output_text == "Hi there" and sdk.tools[0].name == "weather"
    assert len(engine.requests[-1].images) == 1  # the tool result's image went to the engine


WEATHER = [{"type": "function", "name": "weather", "parameters": {"type": "object"}}]


HERMES_CALL = ["<tool_call>\n", '{"name": "weather", "arguments": {"city": "Paris"}}', "\n</tool_call>"]


def test_output_items_in_the_order_written_streamed_or_not(client, engine) -> None:
    """A call, then text: both ways list them so; a token limit cuts the last item, and a call that had
    ended before it is complete."""
    def items(finish: str, stream: bool) -> list[tuple[str, str]]:
        engine.finish = finish
        r = create(client, input="x", tools=WEATHER, stream=stream)
        response = Response.model_validate(events(r)[-1]["response"]) if stream else ok(r)
        return [(i.type, i.status) for i in response.output]

    for stream in (False, True):
        engine.pieces = [*HERMES_CALL, " Then more text."]
        assert items("stop", stream) == [("function_call", "completed"), ("message", "completed")], stream
        assert items("length", stream) == [("function_call", "completed"), ("message", "incomplete")], stream
        engine.pieces = HERMES_CALL
        assert items("length", stream) == [("function_call", "completed")], stream


def test_a_call_cut_off_at_max_output_tokens_does_not_stop_the_conversation(client, engine) -> None:
    engine.pieces, engine.finish = ['{"city": "Pa'], "length"
    cut = ok(create(client, input="Weather in Paris?", tools=WEATHER, max_output_tokens=4,
                    tool_choice={"type": "function", "name": "weather"}))
    call = cut.output[0]
    assert cut.status == "incomplete" and call.type == "function_call" and call.status == "incomplete"
    engine.reset()
    follow = ok(create(client, input="Try again.", previous_response_id=cut.id, tools=WEATHER))
    assert follow.status == "completed" and '"Pa' not in prompt_text(client, engine)
    by_hand = [{"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True),
               {"role": "user", "content": "Try again."}]  # the SDK's way: input += response.output
    assert ok(create(client, input=by_hand, tools=WEATHER)).status == "completed"
    answered = [{"type": "function_call_output", "call_id": call.call_id, "output": "error: cut off"}]
    assert ok(create(client, input=answered, previous_response_id=cut.id, tools=WEATHER)).status == "completed"
    assert ok(create(client, input=by_hand[:2] + answered, tools=WEATHER)).status == "completed"


def test_a_tool_result_needs_its_call(client, engine) -> None:
    """A result whose call_id no call had (here or in the previous response) is a 400 naming it."""
    engine.pieces = HERMES_CALL
    made = ok(create(client, input="Weather?", tools=WEATHER))
    call_id = made.output[0].call_id
    result = {"type": "function_call_output", "call_id": call_id, "output": "sunny"}
    assert ok(create(client, input=[result], previous_response_id=made.id, tools=WEATHER)).status == "completed"
    err = error(create(client, input=[{**result, "call_id": "call_nope"}], tools=WEATHER), 400)
    assert err["param"] == "input[0].call_id" and "call_nope" in err["message"]
    err = error(create(client, input=[{"role": "user", "content": "x"}, result], tools=WEATHER), 400)
    assert err["param"] == "input[1].call_id"


def test_a_calls_bad_arguments_are_named_by_its_input_item(client) -> None:
    items = [{"role": "user", "content": "Weather?"}, {"role": "assistant", "content": "Calling."},
             {"type": "function_call", "call_id": "c1", "name": "weather", "arguments": "{}"},
             {"type": "function_call", "call_id": "c2", "name": "weather", "arguments": "{bad"},
             {"type": "function_call_output", "call_id": "c1", "output": "sunny"},
             {"type": "function_call_output", "call_id": "c2", "output": "rain"}]
    err = error(create(client, input=items, tools=WEATHER), 400)
    assert err["param"] == "input[3].arguments" and err["message"].startswith("input[3].arguments is not valid")


@pytest.mark.parametrize("fields,status,param", [
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]},
     400, "input[0].content[0].image_url"),
    ({"input": [{"role": "user", "content": "a"}, {"role": "user", "content": [
        {"type": "input_text", "text": "b"}, {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}],
      "instructions": "s"}, 400, "input[1].content[1].image_url"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "file-nope"}]}]},
     404, "input[0].content[0].file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_video"}]}]}, 400, "input[0].content[0].type"),
    ({"input": "x", "temperature": 9}, 400, "temperature"),
    ({"input": "x", "tools": [{"type": "web_search"}]}, 400, "tools[0].type"),
    ({"input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, 400, "text.format.schema"),
    ({"input": "x", "model": "nope"}, 404, "model"),
    ({"input": "x", "background": True, "store": False}, 400, "store"),
    ({"input": "x", "background": True, "stream": True}, 400, "stream"),
    ({"input": 5}, 400, "input"),
    ({"input": "x", "include": ["message.output_text.logprob"]}, 400, "include[0]"),  # a typo: not ignored
    # OpenAI-hosted state the gateway does not keep: refused, not answered without that context
    ({"input": "x", "conversation": "conv_1"}, 400, "conversation"),
    ({"input": "x", "conversation": {"id": "conv_1"}}, 400, "conversation"),
    ({"input": "x", "prompt": {"id": "pmpt_1"}}, 400, "prompt"),
    # chat's names for max_output_tokens and text.format: refused, not ignored
    ({"input": "x", "max_tokens": 5}, 400, "max_tokens"),
    ({"input": "x", "response_format": {"type": "json_object"}}, 400, "response_format"),
    ({"input": [{"role": "user"}]}, 400, "input[0].content"),
])
def test_errors_name_the_parameter(client, fields, status, param) -> None:
    err = error(client.post("/v1/responses", json={"model": "m", **fields}), status)
    assert err["param"] == param


def test_background_run_and_cancel(client, engine) -> None:
    engine.gate.clear()  # the engine holds its answers: the first job runs, the next ones wait (1 worker slot)
    running = ok(create(client, input="first", background=True))
    assert running.status == "queued" and running.background is True and running.output == []
    wait_for(lambda: client.get(f"/v1/responses/{running.id}").json()["status"] == "in_progress")
    queued = ok(create(client, input="second", background=True))
    assert client.get(f"/v1/responses/{queued.id}").json()["status"] == "queued"

    assert ok(client.post(f"/v1/responses/{queued.id}/cancel")).status == "cancelled"
    assert ok(client.post(f"/v1/responses/{queued.id}/cancel")).status == "cancelled"  # idempotent
    assert ok(client.post(f"/v1/responses/{running.id}/cancel")).status == "cancelled"
    wait_for(lambda: engine.aborted == 1)  # the running request was stopped in the engine
    assert client.get(f"/v1/responses/{running.id}").json()["status"] == "cancelled"
    assert client.get(f"/v1/responses/{queued.id}").json()["status"] == "cancelled"
    deleted = ok(create(client, input="deleted while running", background=True))
    wait_for(lambda: client.get(f"/v1/responses/{deleted.id}").json()["status"] == "in_progress")
    assert client.delete(f"/v1/responses/{deleted.id}").status_code == 200
    wait_for(lambda: engine.aborted == 2)  # deleting it stopped it too, and it stored nothing after
    assert client.get(f"/v1/responses/{deleted.id}").status_code == 404
    sent = len(engine.requests)

    engine.gate.set()
    done = ok(create(client, input="third", background=True))
    final = wait_for(lambda: (r := client.get(f"/v1/responses/{done.id}").json())["status"] == "completed" and r)
    assert Response.model_validate(final).output_text == "Hi there"
    assert len(engine.requests) == sent + 1  # the cancelled queued one never reached the engine
    assert client.get(f"/v1/responses/{queued.id}").json()["status"] == "cancelled"
    err = error(client.post(f"/v1/responses/{done.id}/cancel"), 400)
    assert err["param"] == "response_id"

    follow = ok(create(client, input="more", previous_response_id=done.id))
    assert "third" in prompt_text(client, engine) and follow.status == "completed"


def test_background_failure_is_stored(client) -> None:
    made = ok(create(client, background=True, input=[
        {"role": "user", "content": [{"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]))
    final = wait_for(lambda: (r := client.get(f"/v1/responses/{made.id}").json())["status"] == "failed" and r)
    assert Response.model_validate(final).error.param == "input[0].content[0].image_url"


def test_stream_a_stored_response_again(client, engine) -> None:
    """GET ?stream=true: the stored items with their ids and statuses, in the order written; the last event
    is the one the response's status calls for; an unknown id is a 404 before any event."""
    engine.pieces = [*HERMES_CALL, " Then more text."]
    made = ok(create(client, input="x", tools=WEATHER))
    got = events(client.get(f"/v1/responses/{made.id}", params={"stream": "true"}))
    assert [e["sequence_number"] for e in got] == list(range(len(got)))
    done = [e["item"] for e in got if e["type"] == "response.output_item.done"]
    assert done == [i.model_dump(mode="json", exclude_none=True) for i in made.output]
    assert got[-1]["type"] == "response.completed" and got[-1]["response"]["output"] == done
    assert [e["type"] for e in events(client.get(f"/v1/responses/{made.id}?stream=true&starting_after=9"))] == [
        e["type"] for e in got[10:]]
    error(client.get("/v1/responses/resp_nope", params={"stream": "true"}), 404)
    error(client.get(f"/v1/responses/{made.id}", params={"stream": "true"}, headers=auth(BOB)), 404)

    engine.finish = "length"
    cut = ok(create(client, input="x", tools=WEATHER, max_output_tokens=20))
    assert events(client.get(f"/v1/responses/{cut.id}?stream=true"))[-1]["type"] == "response.incomplete"
    engine.reset()
    engine.gate.clear()
    running = ok(create(client, input="x", background=True))
    client.post(f"/v1/responses/{running.id}/cancel")
    last = events(client.get(f"/v1/responses/{running.id}?stream=true"))[-1]
    assert (last["type"], last["response"]["status"]) == ("response.failed", "cancelled")


def test_cancel_needs_a_background_response(client) -> None:
    made = ok(create(client, input="x"))
    err = error(client.post(f"/v1/responses/{made.id}/cancel"), 400)
    assert err["message"] == "Cannot cancel a synchronous response."
