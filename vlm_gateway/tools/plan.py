"""``tools`` + ``tool_choice`` + ``parallel_tool_calls`` → what a chat request does with tools.

- ``"none"`` (or no tools): tools are not rendered into the prompt and the output is not parsed.
- ``"auto"``: tools are rendered; the output is parsed in the family's own call syntax.
- ``"required"``: tools are rendered and structured output forces a JSON array of
  ``{"name", "parameters"}`` objects (at most one with ``parallel_tool_calls`` false), the way vLLM
  serves ``tool_choice="required"``; the output is parsed as that array.
- a named function: tools are rendered and structured output forces that function's arguments
  object; the output is parsed as the arguments of one call.

Forced output is plain JSON, not the family's syntax: a grammar holds the model to it whatever the
prompt says. The schemas use only ``type``/``properties``/``required``/``enum``/``anyOf`` around the
tools' own parameter schemas, which xgrammar compiles.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from vlm_gateway.errors import InvalidRequest
from vlm_gateway.schemas.openai import NamedToolChoice, Tool, ToolChoice
from vlm_gateway.tools.format import ToolFormat

Mode = Literal["none", "auto", "required", "named"]

NO_PARAMETERS: dict = {"type": "object", "properties": {}}
REQUIRED_FORMAT = ToolFormat(parser="json_list", arguments_key=("parameters",),
                             source="structured output for tool_choice=required (tools.plan)")
NAMED_FORMAT = ToolFormat(parser="json_arguments", source="structured output for a named tool_choice (tools.plan)")


class ToolPlan(msgspec.Struct, frozen=True):
    """What to do with tools for one request.

    ``prompt_tools``: pass to ``render_chat(tools=...)`` (None: render no tools).
    ``tools``: the tools a call may name (for a named choice, that one function).
    ``structured_outputs``: vLLM's structured-output dict to send, or None.
    ``output_format(family.tools)``: the format to parse the output in, or None (plain text).
    """

    mode: Mode
    prompt_tools: list[Tool] | None
    tools: list[Tool]
    structured_outputs: dict | None

    def output_format(self, family_format: ToolFormat | None) -> ToolFormat | None:
        """The syntax the model's output is in: forced JSON for required / named, the family's own
        for auto (None if the family has no tool format), None when tools are off."""
        if self.mode == "required":
            return REQUIRED_FORMAT
        if self.mode == "named":
            return NAMED_FORMAT
        return family_format if self.mode == "auto" else None


def parameters_schema(tool: Tool) -> dict:
    """The tool's parameters schema; a tool without one takes an empty object."""
    return tool.function.parameters if tool.function.parameters is not None else NO_PARAMETERS


_DEFS = ("$defs", "definitions")  # where a schema keeps what its "$ref"s name ("#/$defs/Address")


def required_schema(tools: list[Tool], parallel: bool) -> dict:
    """A JSON array (1 item, or 1..n with ``parallel``) of ``{"name", "parameters"}`` objects, one
    ``anyOf`` branch per tool so each name goes with its own parameters. Each tool's ``$defs`` move to
    the array's root, where its ``$ref``s look for them (as vLLM's own required-mode schema does); two
    tools that define one name differently are a 400."""
    branches, shared = [], {}
    for i, tool in enumerate(tools):
        parameters = dict(parameters_schema(tool))
        for key in _DEFS:
            for name, definition in (parameters.pop(key, None) or {}).items():
                if shared.setdefault(key, {}).setdefault(name, definition) != definition:
                    raise InvalidRequest(f"tools define {key} {name!r} differently: with tool_choice \"required\" "
                                         "their schemas are one, so a name must mean one thing",
                                         param=f"tools[{i}].function.parameters")
        branches.append({
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [tool.function.name]}, "parameters": parameters},
            "required": ["name", "parameters"],
        })
    schema: dict = {"type": "array", "items": {"anyOf": branches}, "minItems": 1, **shared}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def _structured(schema: dict) -> dict:
    """vLLM's structured-output dict; compact JSON, as ``sampling`` sends it for response_format."""
    return {"json": schema, "disable_any_whitespace": True}


def _check_names(tools: list[Tool]) -> None:
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.function.name in seen:
            raise InvalidRequest(f"tools[{i}]: the function name {tool.function.name!r} is used twice; "
                                 "function names must be unique", param=f"tools[{i}].function.name")
        seen.add(tool.function.name)


def plan_tools(tools: list[Tool] | None, tool_choice: ToolChoice | None, parallel_tool_calls: bool = True,
               *, family_format: ToolFormat | None = None) -> ToolPlan:
    """The plan for a request's tool fields. ``tool_choice`` None means "auto" with tools and "none"
    without (OpenAI's default). ``family_format`` (the model family's ``Family.tools``): a family
    whose template takes one call per turn (``parallel = false``) is forced to one call too.

    Raises ``InvalidRequest`` (param ``tool_choice``) for "required" or a named function without
    tools, or a named function that is not among them; (param ``tools[i].function.name``) for a
    name used twice.
    """
    tools = list(tools or [])
    _check_names(tools)
    choice = tool_choice if tool_choice is not None else ("auto" if tools else "none")
    if choice == "none":
        return ToolPlan(mode="none", prompt_tools=None, tools=[], structured_outputs=None)
    if choice == "auto":
        return ToolPlan(mode="auto" if tools else "none", prompt_tools=tools or None, tools=tools,
                        structured_outputs=None)
    if not tools:
        raise InvalidRequest("tool_choice requires tools: send the functions the model may call in `tools`",
                             param="tool_choice")
    if choice == "required":
        parallel = parallel_tool_calls and (family_format is None or family_format.parallel)
        return ToolPlan(mode="required", prompt_tools=tools, tools=tools,
                        structured_outputs=_structured(required_schema(tools, parallel)))
    if not isinstance(choice, NamedToolChoice):
        raise InvalidRequest(f"unknown tool_choice {choice!r}", param="tool_choice")
    named = next((tool for tool in tools if tool.function.name == choice.function.name), None)
    if named is None:
        raise InvalidRequest(f"tool_choice names the function {choice.function.name!r}, which is not in `tools` "
                             f"({', '.join(tool.function.name for tool in tools)})", param="tool_choice")
    return ToolPlan(mode="named", prompt_tools=tools, tools=[named],
                    structured_outputs=_structured(parameters_schema(named)))
