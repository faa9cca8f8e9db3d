"""What a model's tool calls look like, and what parsing its output yields.

``ToolFormat`` is per-family data (``[<family>.tools]`` in ``templates/families.toml``, loaded onto
``Family.tools``): the syntax the family's template writes calls in, which is the syntax the model is
expected to answer in. The parsers read only this struct, never a family name, so a new family with a
known syntax is a TOML table, not code. This module imports nothing from ``vlm_gateway.prompts``
(``prompts.families`` imports it).
"""

from __future__ import annotations

from typing import Literal

import msgspec

from vlm_gateway.schemas.openai import ToolCall, ToolCallDelta

Parser = Literal["hermes", "json", "json_list", "json_arguments"]


class ToolFormat(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How one family writes tool calls.

    ``parser``:
      ``hermes``          ``<call_start>{"name": ..., "arguments": {...}}<call_end>`` blocks anywhere in
                          the text (Qwen's format; the Hermes function-calling convention)
      ``json``            bare ``{"name": ..., "parameters": {...}}`` objects at the very start of the
                          output, one or more (Llama's JSON format; Google's documented Gemma prompt)
      ``json_list``       the whole output is ``[{"name": ..., "parameters": {...}}, ...]`` (forced by
                          structured output for ``tool_choice="required"``; see ``tools.plan``)
      ``json_arguments``  the whole output is the arguments object of the one named function (forced
                          for a named ``tool_choice``)
    """

    parser: Parser
    call_start: str = ""  # hermes: the marker opening one call ...
    call_end: str = ""  # ... and the one closing it
    arguments_key: tuple[str, ...] = ("arguments",)  # keys of a call object holding its arguments, in order
    ignore: tuple[str, ...] = ()  # json: markers around or between calls that carry no meaning
    parallel: bool = True  # the format (and the family's template) takes several calls in one turn
    source: str = ""  # where the format comes from, for readers

    def __post_init__(self) -> None:
        if self.parser == "hermes" and not (self.call_start and self.call_end):
            raise ValueError("a hermes tool format needs call_start and call_end")


class ParsedOutput(msgspec.Struct, frozen=True):
    """A complete model output split into text and tool calls. ``content`` is None when the output
    held calls and nothing else (OpenAI's shape for a pure tool-call message)."""

    content: str | None
    calls: list[ToolCall]


class StreamPiece(msgspec.Struct, frozen=True):
    """What one streamed text delta turned into: text to send as ``delta.content`` (may be empty) and
    tool-call pieces to send as ``delta.tool_calls`` (may be empty)."""

    content: str
    calls: list[ToolCallDelta]
