"""Incremental scanners: model text in, content text and complete tool calls out.

One scanner per call syntax (``ToolFormat.parser``). Each is fed text as it arrives (``final`` on the
last feed) and appends to ``content`` and ``calls``. The non-streamed parse runs the same scanner over
the whole text, so streaming and non-streaming agree by construction, whatever the split.

Decisions a scanner makes:
- A call is emitted whole, once its text is complete (end marker, closing brace, end of output):
  only then can it be told apart from text that merely looks like a call (bad JSON, unknown tool),
  which stays content. Text outside calls is passed on as soon as it cannot be the start of a call.
- Whitespace that only frames calls (newlines around ``<tool_call>`` blocks at the start or end of
  the output) is dropped; any other text, whitespace between two pieces of text included, is kept
  byte for byte. Without calls the content is the output, unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from vlm_gateway.schemas.openai import ToolCall
from vlm_gateway.tools.calls import (
    call_from_arguments,
    call_from_object,
    call_from_text,
    calls_from_list,
    cut_call,
    loads,
)
from vlm_gateway.tools.format import ToolFormat


class Content:
    """Content text; with calls, whitespace is dropped at its end, and at its start when the output
    opens with a call (the newlines that only frame calls); whitespace between two pieces of text is
    kept. Trailing whitespace is held until more text (kept) or the end (dropped after a call)."""

    def __init__(self) -> None:
        self._out: list[str] = []
        self._pending = ""  # trailing whitespace not yet known to be content
        self._emitted = False  # some non-space content was emitted
        self._called = False  # a call was seen

    def text(self, text: str) -> None:
        if not text:
            return
        text = self._pending + text
        core = text.rstrip()
        self._pending = text[len(core):]
        if core:
            if self._called and not self._emitted:
                core = core.lstrip()
            self._out.append(core)
            self._emitted = True

    def call(self) -> None:
        self._called = True
        if not self._emitted:
            self._pending = ""

    def finish(self) -> None:
        if not self._called:
            self._out.append(self._pending)
        self._pending = ""

    def take(self) -> str:
        out = "".join(self._out)
        self._out.clear()
        return out


def _partial_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of ``text`` that is the beginning of a marker (not all of it)."""
    longest = 0
    for marker in markers:
        for size in range(min(len(marker) - 1, len(text)), longest, -1):
            if text.endswith(marker[:size]):
                longest = size
                break
    return longest


class Scanner:
    def __init__(self, fmt: ToolFormat, names: frozenset[str]) -> None:
        self.fmt = fmt
        self.names = names
        self.content = Content()
        self.calls: list[ToolCall] = []
        self.buf = ""
        self.cut = False  # set before the final feed when the token limit ended the output

    def feed(self, text: str, final: bool) -> None:
        raise NotImplementedError

    def emit(self, call: ToolCall) -> None:
        self.content.call()
        self.calls.append(call)


class ObjectScan:
    """Where a JSON object opened at ``buf[start]`` closes, for a ``buf`` that grows between calls.

    Braces count outside strings only, so a ``}`` or a marker inside a string argument ends nothing. A
    character JSON never has outside strings (the ``<`` of an end marker after a missing brace) shows at
    once that the text is no JSON: the scanner can give it back as text instead of holding it to the end.
    """

    OPEN = -1  # not closed yet
    NOT_JSON = -2
    _OUTSIDE_STRINGS = frozenset(" \t\n\r{}[],:-+.0123456789eEtruefalsn")  # all JSON may have there

    def __init__(self, start: int) -> None:
        self.start = start
        self.scanned = start
        self.depth = 0
        self.in_string = False
        self.escaped = False

    def end(self, buf: str) -> int:
        """Index just past the closing brace, or ``OPEN``, or ``NOT_JSON``."""
        for k in range(self.scanned, len(buf)):
            c = buf[k]
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c == "{":
                self.depth += 1
            elif c == "}":
                self.depth -= 1
                if self.depth == 0:
                    return k + 1
            elif c not in self._OUTSIDE_STRINGS:
                return self.NOT_JSON
        self.scanned = len(buf)
        return self.OPEN


class HermesScanner(Scanner):
    """``<call_start>`` JSON object ``<call_end>`` blocks anywhere in the text.

    The object's end is found by its braces, not by the first end marker, which may sit in a string
    argument. Models forget the end marker: another block or the end of output ends a call as well. A
    start marker not followed by (whitespace and) an object that is a call of an offered tool, then one
    of those endings, is text: the scan goes on right after it, so prose that mentions the marker is
    passed on at once and a real block after it still counts."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str]) -> None:
        super().__init__(fmt, names)
        self.in_block = False  # buf is what follows a start marker
        self.object: ObjectScan | None = None  # the block's object, once its "{" is seen
        self.call: ToolCall | None = None  # the block's call, once its object closed and is one ...
        self.call_end = 0  # ... and where in buf that object closed

    def feed(self, text: str, final: bool) -> None:
        self.buf += text
        while self._block(final) if self.in_block else self._text(final):
            pass

    def _text(self, final: bool) -> bool:
        """Pass text on up to the next start marker; False to wait for more text."""
        i = self.buf.find(self.fmt.call_start)
        if i < 0:
            keep = 0 if final else _partial_suffix(self.buf, (self.fmt.call_start,))
            self.content.text(self.buf[:len(self.buf) - keep])
            self.buf = self.buf[len(self.buf) - keep:]
            return False
        self.content.text(self.buf[:i])
        self.buf, self.in_block = self.buf[i + len(self.fmt.call_start):], True
        return True

    def _block(self, final: bool) -> bool:
        """Decide whether the block is a call (and where it ends) or its marker is text; False to wait."""
        if self.object is None:
            body = self.buf.lstrip()
            if not body and not final:
                return False
            if not body.startswith("{"):
                return self._marker_is_text()
            self.object = ObjectScan(len(self.buf) - len(body))
        if self.call is None:
            end = self.object.end(self.buf)
            if end == ObjectScan.OPEN and not final:
                return False
            self.call = None if end < 0 else call_from_text(self.buf[self.object.start:end], self.names,
                                                            self.fmt.arguments_key)
            if self.call is None:
                return self._marker_is_text()
            self.call_end = end
        return self._ending(self.call, final)

    def _ending(self, call: ToolCall, final: bool) -> bool:
        """After a call's object: an end marker, another start marker or the end of output; False to wait."""
        start, end = self.fmt.call_start, self.fmt.call_end
        rest = self.buf[self.call_end:].lstrip()
        if rest.startswith(end):
            taken = len(self.buf) - len(rest) + len(end)
        elif rest.startswith(start) or (final and not rest):
            taken = len(self.buf) - len(rest)
        elif not final and (start.startswith(rest) or end.startswith(rest)):
            return False
        else:
            return self._marker_is_text()
        self.emit(call)
        self.buf = self.buf[taken:]
        self._reset()
        return True

    def _marker_is_text(self) -> bool:
        """The start marker is text; what followed it is scanned again (it may hold a real block)."""
        self.content.text(self.fmt.call_start)
        self._reset()
        return True

    def _reset(self) -> None:
        self.in_block, self.object, self.call = False, None, None


class JsonScanner(Scanner):
    """Bare JSON call objects at the start of the output, separated by whitespace or ``ignore``
    markers. The first thing that is not a valid call ends the calls: it and everything after it is
    content. Output that does not start with a call is content as a whole."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str]) -> None:
        super().__init__(fmt, names)
        self.state = "start"  # "start": before or between calls; "object": inside one; "rest": content
        self.held = ""  # whitespace and markers since the last call, dropped if a call follows
        self.markers = tuple(sorted(fmt.ignore, key=len, reverse=True))
        self.object = ObjectScan(0)

    def feed(self, text: str, final: bool) -> None:
        self.buf += text
        while self.buf:
            if self.state == "rest":
                self.content.text(self.buf)
                self.buf = ""
            elif self.state == "object":
                if not self._object(final):
                    return
            elif not self._start(final):
                return
        if final and self.state == "start":
            self._end_calls()

    def _start(self, final: bool) -> bool:
        """Consume separators (buf is not empty); False to wait for more text."""
        buf = self.buf
        if buf[0].isspace():
            size = len(buf) - len(buf.lstrip())
            self.held, self.buf = self.held + buf[:size], buf[size:]
            return True
        if not final and any(m.startswith(buf) and m != buf for m in self.markers):
            return False  # could still become a (longer) marker
        marker = next((m for m in self.markers if buf.startswith(m)), None)
        if marker is not None:
            self.held, self.buf = self.held + marker, buf[len(marker):]
        elif buf[0] == "{":
            self.state, self.object = "object", ObjectScan(0)
        else:
            self._end_calls()
        return True

    def _object(self, final: bool) -> bool:
        """Find where the object opened at buf[0] closes; False to wait for more text."""
        end = self.object.end(self.buf)
        if end == ObjectScan.OPEN and not final:
            return False
        call = None if end < 0 else call_from_text(self.buf[:end], self.names, self.fmt.arguments_key)
        if call is None:
            self._end_calls()
        else:
            self.held, self.buf, self.state = "", self.buf[end:], "start"
            self.emit(call)
        return True

    def _end_calls(self) -> None:
        """No (more) calls: the held separators are content only if no call came before them."""
        if not self.calls:
            self.content.text(self.held)
        self.held, self.state = "", "rest"


class WholeScanner(Scanner):
    """The whole output is one JSON value (forced by structured output): held until the end, then
    calls if it is a valid ``json_list`` / ``json_arguments`` value, else content; an output the token
    limit cut short is still the forced call (``json_list``: its whole calls and the one it cut), its
    arguments unfinished."""

    def __init__(self, fmt: ToolFormat, names: frozenset[str]) -> None:
        super().__init__(fmt, names)
        self.chunks: list[str] = []  # joined once at the end: outputs can be long

    def feed(self, text: str, final: bool) -> None:
        self.chunks.append(text)
        if not final:
            return
        text = "".join(self.chunks)
        self.chunks.clear()
        if self.fmt.parser == "json_list":
            calls = calls_from_list(text, self.names, self.fmt.arguments_key)
            if calls is None and self.cut:
                calls = calls_from_cut_list(text, self.names, self.fmt.arguments_key)
        else:
            call = call_from_arguments(text, next(iter(self.names))) if len(self.names) == 1 else None
            if call is None and self.cut and len(self.names) == 1:  # the forced call, as far as it got
                call = cut_call(next(iter(self.names)), text)
            calls = None if call is None else [call]
        if calls is None:
            self.content.text(text)
        else:
            for call in calls:
                self.emit(call)


_CUT_CALL = re.compile(r'\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*,\s*"(\w+)"\s*:\s*(.*)\Z', re.S)


def calls_from_cut_list(text: str, names: frozenset[str], arguments_key: Iterable[str]) -> list[ToolCall] | None:
    """A ``json_list`` output the token limit cut short: its whole calls, then the call it cut (once that
    one's name is whole) with its arguments as far as they got, as a forced call that ran out of tokens
    comes back; None when it holds no call at all."""
    body = text.lstrip()
    if not body.startswith("["):
        return None
    calls: list[ToolCall] = []
    k = 1
    while True:
        while k < len(body) and body[k] in " \t\r\n,":
            k += 1
        if k >= len(body) or body[k] != "{":
            break
        end = ObjectScan(k).end(body)
        if end < 0:  # the one the limit cut
            cut = _CUT_CALL.match(body, k)
            if cut and cut.group(1) in names and cut.group(2) in arguments_key:
                calls.append(cut_call(cut.group(1), cut.group(3)))
            break
        call = call_from_object(loads(body[k:end]), names, arguments_key)
        if call is None:
            return None
        calls.append(call)
        k = end
    return calls or None


SCANNERS: dict[str, type[Scanner]] = {
    "hermes": HermesScanner,
    "json": JsonScanner,
    "json_list": WholeScanner,
    "json_arguments": WholeScanner,
}
