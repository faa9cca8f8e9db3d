"""Chat chunks → the Responses API's streaming events, as server-sent events.

``response_events`` reads ``streaming.chat_chunks`` (one choice: text deltas, tool-call deltas, the
finish reason, then usage) and writes what OpenAI sends, in its order, each with ``sequence_number``::

    response.created, response.in_progress
    per output item, one after the other (an item is done before the next is added):
      message:       output_item.added, content_part.added, output_text.delta…, output_text.done,
                     content_part.done, output_item.done
      function_call: output_item.added, function_call_arguments.delta…, function_call_arguments.done,
                     output_item.done
    response.completed (or response.incomplete: max_output_tokens), with the whole response

An engine failure after the first byte closes the item being written as ``incomplete`` and ends the
stream with ``response.failed`` (the response with its ``error`` and the output so far); nothing is left
hanging. The SDK's ``client.responses.stream`` checks this order strictly. Lines are
``event: <type>\\ndata: <json>\\n\\n``; there is no ``[DONE]`` in this API.

A token limit (``finish_reason`` "length") cuts the item being written: a message, or a call whose
arguments are not yet whole JSON (a call that had ended just before is ``completed``, as it can be made).

The same ``OutputBuilder`` builds the output of an unstreamed response (``run.py``: its events are
dropped), so both list their items in the order the model wrote them; ``replayed`` rebuilds a stored
response's events from its output, with the items' own ids (``GET /v1/responses/{id}?stream=true``).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from vlm_gateway.errors import GatewayError
from vlm_gateway.responses_api.convert import rename, whole_arguments
from vlm_gateway.responses_api.output import failed, final, logprobs, new_id
from vlm_gateway.schemas.openai import ChatCompletionChunk, ToolCallDelta, Usage
from vlm_gateway.schemas.responses import (
    ContentPartAdded,
    ContentPartDone,
    FunctionCallArgumentsDelta,
    FunctionCallArgumentsDone,
    ItemStatus,
    Logprob,
    OutputFunctionCall,
    OutputItem,
    OutputItemAdded,
    OutputItemDone,
    OutputMessage,
    OutputText,
    OutputTextDelta,
    OutputTextDone,
    ResponseCompleted,
    ResponseCreated,
    ResponseFailed,
    ResponseIncomplete,
    ResponseInProgress,
    ResponseObject,
    StreamEvent,
)

log = logging.getLogger("vlm_gateway")
_ENCODER = msgspec.json.Encoder()


class _Open(msgspec.Struct):
    """The output item being streamed: a message's text or a function call's arguments, so far."""

    index: int
    id: str
    pieces: list[str] = []
    logprobs: list[Logprob] = []
    call_id: str = ""  # function calls only
    name: str = ""


class OutputBuilder:
    """Output items from chat chunks, and the events that say so. ``take`` each chunk, then ``finish``
    (or ``fail``); ``replay`` writes a finished item's events again (a stored response, streamed)."""

    def __init__(self, base: ResponseObject) -> None:
        self.base = base
        self.items: list[OutputItem | None] = []  # None: still open
        self.message: _Open | None = None
        self.call: _Open | None = None
        self.calls: dict[int, _Open] = {}  # by the chat tool call's index
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    def take(self, chunk: ChatCompletionChunk) -> list[StreamEvent]:
        if chunk.usage:
            self.usage = chunk.usage  # type: ignore[assignment]
        events: list[StreamEvent] = []
        for choice in chunk.choices:
            if choice.delta.content:
                events += self._text(choice.delta.content, logprobs(choice.logprobs))
            for call in choice.delta.tool_calls or []:
                events += self._tool_call(call)
            if choice.finish_reason:
                self.finish_reason = choice.finish_reason
        return events

    def finish(self) -> list[StreamEvent]:
        """Close what is still open (an answer with no output at all gets an empty message, as unstreamed).
        A token limit cut the open item, unless it is a call whose arguments had already ended."""
        cut = self.finish_reason == "length"
        events = [] if self.items else self._text("", [])
        call_cut = cut and self.call is not None and not whole_arguments("".join(self.call.pieces))
        return (events + self._close_message("incomplete" if cut else "completed")
                + self._close_call("incomplete" if call_cut else "completed"))

    def fail(self) -> list[StreamEvent]:
        """The stream broke off: the open item ends ``incomplete``, so every item added is also done."""
        return self._close_message("incomplete") + self._close_call("incomplete")

    def response(self) -> ResponseObject:
        return final(self.base, self.output, self.usage, self.finish_reason)

    @property
    def output(self) -> list[OutputItem]:
        return [item for item in self.items if item is not None]

    def replay(self, item: OutputItem) -> list[StreamEvent]:
        """The events that wrote ``item`` (its whole text or arguments as one delta), with its own ids and
        status: what the SDK accumulates into the same item."""
        if isinstance(item, OutputMessage):
            events = self._open_message(item.id)
            for part in item.content:
                events += self._text(part.text, part.logprobs)
            return events + self._close_message(item.status)
        events = self._open_call(item.id, item.call_id, item.name)
        assert self.call is not None
        return events + self._arguments(self.call, item.arguments) + self._close_call(item.status)

    # --- items ------------------------------------------------------------------------------------

    def _open_message(self, item_id: str) -> list[StreamEvent]:
        events = self._close_message("completed") + self._close_call("completed")
        self.message = m = _Open(len(self.items), item_id)
        self.items.append(None)
        return events + [
            OutputItemAdded(output_index=m.index, item=OutputMessage(id=m.id, status="in_progress", content=[])),
            ContentPartAdded(item_id=m.id, output_index=m.index, content_index=0, part=OutputText(""))]

    def _text(self, delta: str, lps: list[Logprob]) -> list[StreamEvent]:
        events = [] if self.message is not None else self._open_message(new_id("msg"))
        m = self.message
        assert m is not None
        m.pieces.append(delta)
        m.logprobs += lps
        if delta:
            events.append(OutputTextDelta(item_id=m.id, output_index=m.index, content_index=0, delta=delta,
                                          logprobs=lps))
        return events

    def _open_call(self, item_id: str, call_id: str, name: str) -> list[StreamEvent]:
        events = self._close_message("completed") + self._close_call("completed")
        self.call = call = _Open(len(self.items), item_id, call_id=call_id, name=name)
        self.items.append(None)
        events.append(OutputItemAdded(output_index=call.index, item=OutputFunctionCall(
            id=call.id, call_id=call.call_id, name=call.name, arguments="", status="in_progress")))
        return events

    def _tool_call(self, delta: ToolCallDelta) -> list[StreamEvent]:
        fn = delta.function
        call = self.calls.get(delta.index)
        events: list[StreamEvent] = []
        if call is None:
            events += self._open_call(new_id("fc"), delta.id or new_id("call"), (fn.name or "") if fn else "")
            call = self.calls[delta.index] = self.call  # type: ignore[assignment]
        elif call is not self.call:
            log.warning("a tool call's arguments came after the next call began; dropped")
            return events
        if fn is not None and fn.name and not call.name:
            call.name = fn.name
        return events + self._arguments(call, fn.arguments if fn is not None else None)

    @staticmethod
    def _arguments(call: _Open, delta: str | None) -> list[StreamEvent]:
        if not delta:
            return []
        call.pieces.append(delta)
        return [FunctionCallArgumentsDelta(item_id=call.id, output_index=call.index, delta=delta)]

    def _close_message(self, status: ItemStatus) -> list[StreamEvent]:
        m, self.message = self.message, None
        if m is None:
            return []
        text = "".join(m.pieces)
        part = OutputText(text, logprobs=m.logprobs)
        item = self.items[m.index] = OutputMessage(id=m.id, status=status, content=[part])
        return [OutputTextDone(item_id=m.id, output_index=m.index, content_index=0, text=text, logprobs=m.logprobs),
                ContentPartDone(item_id=m.id, output_index=m.index, content_index=0, part=part),
                OutputItemDone(output_index=m.index, item=item)]

    def _close_call(self, status: ItemStatus) -> list[StreamEvent]:
        c, self.call = self.call, None
        if c is None:
            return []
        arguments = "".join(c.pieces)
        item = self.items[c.index] = OutputFunctionCall(id=c.id, call_id=c.call_id, name=c.name,
                                                        arguments=arguments, status=status)
        return [FunctionCallArgumentsDone(item_id=c.id, output_index=c.index, name=c.name, arguments=arguments),
                OutputItemDone(output_index=c.index, item=item)]


def started(response: ResponseObject) -> ResponseObject:
    """``response`` as its stream's first events show it: in progress, nothing out yet."""
    return msgspec.structs.replace(response, status="in_progress", output=[], usage=None, error=None,
                                   incomplete_details=None, completed_at=None)


def opening(response: ResponseObject) -> list[StreamEvent]:
    """The first two events of ``response``'s stream (a replay sends them before waiting for its end)."""
    return [ResponseCreated(response=started(response)), ResponseInProgress(response=started(response))]


def replayed(response: ResponseObject) -> list[StreamEvent]:
    """The events after ``opening`` of a finished ``response``: its items as they were written, then the
    last event its status calls for. The API has no event for a cancelled response: it ends with
    ``response.failed`` (its response says ``cancelled``), as it did not complete."""
    out = OutputBuilder(started(response))
    events = [event for item in response.output for event in out.replay(item)]
    if response.status == "completed":
        return [*events, ResponseCompleted(response=response)]
    if response.status == "incomplete":
        return [*events, ResponseIncomplete(response=response)]
    return [*events, ResponseFailed(response=response)]


def sse(event: StreamEvent, sequence_number: int) -> bytes:
    event.sequence_number = sequence_number
    kind = type(event).__struct_config__.tag
    return b"event: " + str(kind).encode() + b"\ndata: " + _ENCODER.encode(event) + b"\n\n"


Done = Callable[[ResponseObject], Awaitable[None]]


async def _finished(done: Done, response: ResponseObject) -> None:
    """The client still gets its answer when storing it fails (logged: a follow-up will not find it)."""
    try:
        await done(response)
    except Exception:
        log.exception("storing response %s failed", response.id)


async def response_events(base: ResponseObject, chunks: AsyncIterator[ChatCompletionChunk], params: dict[str, str],
                          done: Done) -> AsyncIterator[bytes]:
    """The SSE body. ``done`` gets the final response (stored, when asked) before the last event is
    sent, so a client that continues the conversation as soon as it reads it finds it stored."""
    seq = itertools.count()
    out = OutputBuilder(base)
    try:
        yield sse(ResponseCreated(response=base), next(seq))
        yield sse(ResponseInProgress(response=base), next(seq))
        try:
            async for chunk in chunks:
                for event in out.take(chunk):
                    yield sse(event, next(seq))
        except GatewayError as exc:
            exc.param = rename(params, exc.param)
            for event in out.fail():
                yield sse(event, next(seq))
            response = failed(base, exc, out.output)
            await _finished(done, response)
            yield sse(ResponseFailed(response=response), next(seq))
            return
        for event in out.finish():
            yield sse(event, next(seq))
        response = out.response()
        await _finished(done, response)
        last = ResponseIncomplete if response.status == "incomplete" else ResponseCompleted
        yield sse(last(response=response), next(seq))
    finally:
        await chunks.aclose()  # type: ignore[attr-defined]
