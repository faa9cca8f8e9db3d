"""Tool-calling cases: the shared ``tool_cases.json`` plus our own ``tool_cases_extra.json``, decoded the
way a request is, and where their golden renderings are.

Cases are in Hugging Face form (assistant ``tool_calls`` with ``arguments`` as objects and no ids).
A request carries OpenAI form, so ``case_messages`` gives each call an id and its arguments as a JSON
string, then decodes with msgspec like a request body. ``case_tools`` decodes the case's tools into
``Tool`` structs.

Goldens: the shared ``golden_tools/<family>/<case>.txt`` for the families whose official templates
take tools (llama4, llama3_2_vision) and shared cases; ours, under ``golden_tools/`` next to this file,
for every other family and case (written by ``make_tool_goldens.py``). ``.error`` records a refusal,
one line ``<ErrorType>: <message>``.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import msgspec

from tests.gateway.prompts.conformance import conformance_dir
from vlm_gateway.prompts.families import get_family
from vlm_gateway.prompts.order import strings_to_parts
from vlm_gateway.prompts.render import render_chat
from vlm_gateway.schemas.openai import ChatMessage, Tool

HERE = Path(__file__).resolve().parent
EXTRA_CASES = HERE / "tool_cases_extra.json"
OUR_GOLDENS = HERE / "golden_tools"


def shared_spec() -> dict:
    return json.loads((conformance_dir() / "tool_cases.json").read_text(encoding="utf-8"))


def all_cases() -> list[dict]:
    """Shared cases first, then ours (ids are unique across both)."""
    extra = json.loads(EXTRA_CASES.read_text(encoding="utf-8"))
    return shared_spec()["cases"] + extra["cases"]


def case(case_id: str) -> dict:
    return next(c for c in all_cases() if c["id"] == case_id)


def openai_messages(case: dict) -> list[dict]:
    """The case's messages as an OpenAI client sends them (call ids, arguments as JSON text)."""
    out = []
    for i, message in enumerate(case["messages"]):
        message = dict(message)
        if "tool_calls" in message:
            message["tool_calls"] = [
                {"id": call.get("id", f"call_{i}_{j}"), "type": "function",
                 "function": {"name": call["function"]["name"],
                              "arguments": json.dumps(call["function"]["arguments"], ensure_ascii=False)}}
                for j, call in enumerate(message["tool_calls"])]
        out.append(message)
    return out


def case_messages(case: dict) -> list[ChatMessage]:
    return msgspec.json.decode(json.dumps(openai_messages(case)).encode(), type=list[ChatMessage])


def case_tools(case: dict) -> list[Tool] | None:
    tools = case.get("tools")
    return None if tools is None else msgspec.convert(tools, list[Tool])


def shared_golden(family: str, case_id: str) -> Path | None:
    """The shared golden (.txt or .error) for this family and case, if the shared set has one."""
    for suffix in (".txt", ".error"):
        path = conformance_dir() / "golden_tools" / family / f"{case_id}{suffix}"
        if path.is_file():
            return path
    return None


def our_golden(family: str, case_id: str) -> Path | None:
    for suffix in (".txt", ".error"):
        path = OUR_GOLDENS / family / f"{case_id}{suffix}"
        if path.is_file():
            return path
    return None


def render_now() -> datetime:
    return datetime.fromisoformat(shared_spec()["render"]["strftime_now"])


def render_case(family_name: str, case: dict) -> str:
    """The prompt a chat request with this case's messages and tools gets: the family's request-level
    step for string content (LLaVA reads list content only), then ``render_chat``. Raises what
    ``render_chat`` raises (``PromptRefused`` when the template refuses the conversation)."""
    family = get_family(family_name)
    messages = case_messages(case)
    if family.string_content_as_parts:
        messages = strings_to_parts(messages)
    return render_chat(family, messages, tools=case_tools(case), now=render_now()).text
