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

An engine failure after the first byte ends the stream with ``response.failed`` (the response with its
``error``); nothing is left hanging. The SDK's ``client.responses.stream`` checks this order strictly.
Lines are ``event: <type>\\ndata: <json>\\n\\n``; there is no ``[DONE]`` in this API.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import msgspec

from vlm_gateway.errors import GatewayError
from vlm_gateway.responses_api.convert import rename
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
    """Output items from chat chunks, and the events that say so. ``take`` each chunk, then ``finish``."""

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
        """Close what is still open (an answer with no output at all gets an empty message, as unstreamed)."""
        status: ItemStatus = "incomplete" if self.finish_reason == "length" else "completed"
        events = [] if self.items else self._text("", [])
        return events + self._close_message(status) + self._close_call(status)

    def response(self) -> ResponseObject:
        return final(self.base, self.output, self.usage, self.finish_reason)

    @property
    def output(self) -> list[OutputItem]:
        return [item for item in self.items if item is not None]

    # --- items ------------------------------------------------------------------------------------

    def _text(self, delta: str, lps: list[Logprob]) -> list[StreamEvent]:
        events = self._close_call("completed")
        if self.message is None:
            self.message = m = _Open(len(self.items), new_id("msg"))
            self.items.append(None)
            events += [OutputItemAdded(output_index=m.index, item=OutputMessage(id=m.id, status="in_progress",
                                                                                content=[])),
                       ContentPartAdded(item_id=m.id, output_index=m.index, content_index=0, part=OutputText(""))]
        m = self.message
        m.pieces.append(delta)
        m.logprobs += lps
        if delta:
            events.append(OutputTextDelta(item_id=m.id, output_index=m.index, content_index=0, delta=delta,
                                          logprobs=lps))
        return events

    def _tool_call(self, delta: ToolCallDelta) -> list[StreamEvent]:
        fn = delta.function
        call = self.calls.get(delta.index)
        events: list[StreamEvent] = []
        if call is None:
            events += self._close_message("completed") + self._close_call("completed")
            call = _Open(len(self.items), new_id("fc"), call_id=delta.id or new_id("call"),
                         name=(fn.name or "") if fn else "")
            self.calls[delta.index] = self.call = call
            self.items.append(None)
            events.append(OutputItemAdded(output_index=call.index, item=OutputFunctionCall(
                id=call.id, call_id=call.call_id, name=call.name, arguments="", status="in_progress")))
        elif call is not self.call:
            log.warning("a tool call's arguments came after the next call began; dropped")
            return events
        if fn is not None and fn.name and not call.name:
            call.name = fn.name
        if fn is not None and fn.arguments:
            call.pieces.append(fn.arguments)
            events.append(FunctionCallArgumentsDelta(item_id=call.id, output_index=call.index, delta=fn.arguments))
        return events

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
