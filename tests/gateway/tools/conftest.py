"""Formats and tools the parser tests share."""

from __future__ import annotations

import pytest

from vlm_gateway.prompts.families import get_family
from vlm_gateway.schemas.openai import FunctionDef, Tool
from vlm_gateway.tools import ToolFormat

WEATHER = Tool(FunctionDef("get_weather", "Current weather.", {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}))
CLICK = Tool(FunctionDef("click", parameters={
    "type": "object", "properties": {"x": {"type": "integer"}, "y": {"type": "integer"}}, "required": ["x", "y"]}))
SCREENSHOT = Tool(FunctionDef("screenshot"))
TOOLS = [WEATHER, CLICK, SCREENSHOT]


def fmt(family: str) -> ToolFormat:
    tools = get_family(family).tools
    assert tools is not None
    return tools


@pytest.fixture
def hermes() -> ToolFormat:
    return fmt("qwen2_5_vl")


@pytest.fixture
def llama4() -> ToolFormat:
    return fmt("llama4")


@pytest.fixture
def gemma() -> ToolFormat:
    return fmt("gemma3")
