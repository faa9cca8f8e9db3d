"""``tools`` + ``tool_choice`` + ``parallel_tool_calls`` → what a chat request does with tools.

- ``"none"`` (or no tools): tools are not rendered into the prompt and the output is not parsed.
- ``"auto"``: tools are rendered; the output is parsed in the family's own call syntax.
- ``"required"``: tools are rendered and structured output forces a JSON array of
  ``{"name", "parameters"}`` objects (at most one with ``parallel_tool_calls`` false), the way vLLM
  serves ``tool_choice="required"``; the output is parsed as that array.
- a named function: tools are rendered and structured output forces that function's arguments
  object; the output is parsed as the arguments of one call.

Forced output is plain JSON, not the family's syntax: a grammar holds the model to it whatever the
prompt says. The schemas use only ``type``/``properties``/``required``/``enum``/``anyOf`` and
``$ref``/``$defs`` around the tools' own parameter schemas, which xgrammar compiles.
"""

from __future__ import annotations

from typing import Any, Literal

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
    """The tool's parameters schema as the forced output's schema: a tool without one takes an empty
    object, and one without a ``type`` (``{}``) is made an object's, since the forced output must be
    the arguments object of a call (any other JSON would come back as plain content)."""
    parameters = tool.function.parameters
    if parameters is None:
        return NO_PARAMETERS
    return parameters if "type" in parameters else {"type": "object", **parameters}


_DEFS = ("$defs", "definitions")  # where a schema keeps what its "$ref"s name ("#/$defs/Address")
_DATA = frozenset({"const", "enum", "default", "examples"})  # keywords whose values are data, not schemas
_NAMED = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})  # name → schema


def _reroot(node: Any, prefix: str, names: bool = False) -> Any:
    """``node`` with its root-relative ``$ref``s (``#``, ``#/properties/a``) made relative to ``prefix``,
    where the schema now sits; refs into ``$defs`` / ``definitions`` stay, as those move to the root.
    ``names``: ``node`` maps names to schemas (a property may be called ``default`` or ``$ref``)."""
    if isinstance(node, list):
        return [_reroot(item, prefix) for item in node]
    if not isinstance(node, dict):
        return node
    if names:
        return {name: _reroot(schema, prefix) for name, schema in node.items()}
    out = {}
    for key, value in node.items():
        if key == "$ref" and isinstance(value, str) and _is_root_relative(value):
            out[key] = prefix + value[1:]
        else:
            out[key] = value if key in _DATA else _reroot(value, prefix, names=key in _NAMED)
    return out


def _is_root_relative(ref: str) -> bool:
    return ref == "#" or (ref.startswith("#/") and not ref.startswith(tuple(f"#/{key}/" for key in _DEFS)))


def _share(shared: dict, key: str, name: str, definition: object, i: int) -> None:
    """Put one definition into the root's ``$defs`` / ``definitions``; a name meaning two things is a 400."""
    if shared.setdefault(key, {}).setdefault(name, definition) != definition:
        raise InvalidRequest(f"tools define {key} {name!r} differently: with tool_choice \"required\" "
                             "their schemas are one, so a name must mean one thing",
                             param=f"tools[{i}].function.parameters")


def required_schema(tools: list[Tool], parallel: bool) -> dict:
    """A JSON array (1 item, or 1..n with ``parallel``) of ``{"name", "parameters"}`` objects, one
    ``anyOf`` branch per tool so each name goes with its own parameters.

    Each tool's parameters schema is nested here, not the root it was written as: it goes to the root's
    ``$defs`` as ``__tool_<i>_parameters``, and its refs relative to its own root (``"$ref": "#"`` for a
    tree, ``#/properties/a``) are rewritten to point there; otherwise they would name this array (a
    recursive tree would take a list of calls as a child) or nothing (xgrammar refuses the schema). Its
    own ``$defs`` move to the root, where its ``$ref``s look for them (as vLLM's own required-mode schema
    does); two tools that define one name differently are a 400."""
    branches, shared = [], {}
    for i, tool in enumerate(tools):
        key = f"__tool_{i}_parameters"
        parameters = _reroot(parameters_schema(tool), f"#/$defs/{key}")
        for defs_key in _DEFS:
            for name, definition in (parameters.pop(defs_key, None) or {}).items():
                _share(shared, defs_key, name, definition, i)
        _share(shared, "$defs", key, parameters, i)
        branches.append({
            "type": "object",
            "properties": {"name": {"type": "string", "enum": [tool.function.name]},
                           "parameters": {"$ref": f"#/$defs/{key}"}},
            "required": ["name", "parameters"],
        })
    schema: dict = {"type": "array", "items": {"anyOf": branches}, "minItems": 1, **shared}
    if not parallel:
        schema["maxItems"] = 1
    return schema


def _structured(schema: dict) -> dict:
    """vLLM's structured-output dict; compact JSON, as ``sampling`` sends it for response_format."""
    return {"json": schema, "disable_any_whitespace": True}


def _check_tools(tools: list[Tool]) -> None:
    seen: set[str] = set()
    for i, tool in enumerate(tools):
        if tool.function.name in seen:
            raise InvalidRequest(f"tools[{i}]: the function name {tool.function.name!r} is used twice; "
                                 "function names must be unique", param=f"tools[{i}].function.name")
        seen.add(tool.function.name)
        _check_parameters(tool, i)


def _check_parameters(tool: Tool, i: int) -> None:
    """Arguments are a JSON object (OpenAI requires an object schema): a schema of another type could
    only be answered with something that is no call, which a forced choice would return as content."""
    kind = (tool.function.parameters or {}).get("type", "object")
    if kind != "object":
        raise InvalidRequest(f"tools[{i}].function.parameters must be a JSON schema of type \"object\" "
                             f"(the arguments object), not {kind!r}", param=f"tools[{i}].function.parameters")


def plan_tools(tools: list[Tool] | None, tool_choice: ToolChoice | None, parallel_tool_calls: bool = True,
               *, family_format: ToolFormat | None = None) -> ToolPlan:
    """The plan for a request's tool fields. ``tool_choice`` None means "auto" with tools and "none"
    without (OpenAI's default). ``family_format`` (the model family's ``Family.tools``): a family
    whose template takes one call per turn (``parallel = false``) is forced to one call too.

    Raises ``InvalidRequest`` (param ``tool_choice``) for "required" or a named function without
    tools, or a named function that is not among them; (param ``tools[i].function.name``) for a
    name used twice; (param ``tools[i].function.parameters``) for parameters whose type is not "object".
    """
    tools = list(tools or [])
    _check_tools(tools)
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
