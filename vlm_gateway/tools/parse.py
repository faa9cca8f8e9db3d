"""Model output → OpenAI tool calls, whole (``parse_tool_calls``) or streamed (``ToolCallStream``).

Both run the same scanner (``tools.scan``), so the pieces a stream yields add up to exactly what
``parse_tool_calls`` returns for the same text, however the text was split. Malformed calls (bad
JSON, a tool that was not offered, a marker never closed) stay text; nothing here raises on model
output.
"""

from __future__ import annotations

from vlm_gateway.schemas.openai import FunctionCallDelta, Tool, ToolCall, ToolCallDelta
from vlm_gateway.tools.format import ParsedOutput, StreamPiece, ToolFormat
from vlm_gateway.tools.scan import SCANNERS


def call_deltas(index: int, call: ToolCall) -> list[ToolCallDelta]:
    """One complete call as OpenAI streams it: a first piece with its id, type, name and empty
    arguments, then a piece with the arguments."""
    return [
        ToolCallDelta(index=index, id=call.id, type="function",
                      function=FunctionCallDelta(name=call.function.name, arguments="")),
        ToolCallDelta(index=index, function=FunctionCallDelta(arguments=call.function.arguments)),
    ]


class ToolCallStream:
    """Turns streamed text deltas into content and ``delta.tool_calls`` pieces.

    ``feed`` may hold text back while it could still be the start of a call (a partial marker, a JSON
    object not yet closed); ``finish`` releases whatever is left, as content if it never became a
    call. Calls are numbered from 0 in order of appearance (``ToolCallDelta.index``).
    """

    def __init__(self, fmt: ToolFormat, tools: list[Tool] | tuple[Tool, ...]) -> None:
        names = frozenset(tool.function.name for tool in tools)
        self._scanner = SCANNERS[fmt.parser](fmt, names)
        self._sent = 0
        self._finished = False

    @property
    def calls(self) -> list[ToolCall]:
        """The complete calls found so far (all of them after ``finish``)."""
        return list(self._scanner.calls)

    def feed(self, text: str) -> StreamPiece:
        if self._finished:
            raise RuntimeError("feed() after finish()")
        self._scanner.feed(text, final=False)
        return self._piece()

    def finish(self, cut: bool = False) -> StreamPiece:
        """The rest; ``cut``: the token limit ended the output (a forced call stays a call, unfinished)."""
        if self._finished:
            raise RuntimeError("finish() called twice")
        self._finished = True
        self._scanner.cut = cut
        self._scanner.feed("", final=True)
        self._scanner.content.finish()
        return self._piece()

    def _piece(self) -> StreamPiece:
        calls = self._scanner.calls
        deltas = [delta for index in range(self._sent, len(calls)) for delta in call_deltas(index, calls[index])]
        self._sent = len(calls)
        return StreamPiece(content=self._scanner.content.take(), calls=deltas)


def parse_tool_calls(fmt: ToolFormat, text: str, tools: list[Tool] | tuple[Tool, ...],
                     cut: bool = False) -> ParsedOutput:
    """A complete output split into content and calls of the offered ``tools``. ``content`` is None
    when there are calls and no other text. ``cut``: as ``ToolCallStream.finish``."""
    stream = ToolCallStream(fmt, tools)
    content = stream.feed(text).content + stream.finish(cut).content
    calls = stream.calls
    return ParsedOutput(content=None if calls and not content else content, calls=calls)
