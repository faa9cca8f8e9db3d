"""From the JSON a model wrote to an OpenAI ``ToolCall``, or to nothing.

A call counts only when it names an offered tool and its arguments are a JSON object; anything else
returns None and the caller keeps the text as content. Arguments are re-serialized compactly, so
the client gets the same ``arguments`` string however the model spaced its JSON.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import string
from collections.abc import Iterable
from typing import Any

from vlm_gateway.schemas.openai import FunctionCall, ToolCall

_ID_ALPHABET = string.ascii_letters + string.digits
_NO_VALUE = object()
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def new_call_id() -> str:
    """``call_`` and 24 random letters and digits, the shape of OpenAI's tool-call ids."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    """A JSON number as a float; one too large for a float (``1e999``) would become ``inf`` and be
    written back as ``Infinity``, which is not JSON, so it is refused like ``Infinity`` itself."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} does not fit a float")
    return value


def loads(text: str) -> Any:
    """JSON without NaN / Infinity (written, or reached by overflow), or ``_NO_VALUE`` for anything that
    is not. Control characters written raw inside strings (a literal newline in code, or what a grammar
    let through: xgrammar's JSON strings admit them) are taken as the characters they are; :func:`compact`
    writes them escaped again."""
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float, strict=False)
    except (ValueError, RecursionError):
        return _NO_VALUE


def _escape_surrogate(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


def compact(value: Any) -> str:
    """JSON without optional whitespace, non-ASCII kept (what OpenAI's ``arguments`` look like). A lone
    surrogate (the model wrote ``"\\ud83d"``, half an emoji) is no character UTF-8 can encode, so it is
    escaped again as the model wrote it: kept raw, the whole response could not be sent."""
    return _SURROGATE.sub(_escape_surrogate, json.dumps(value, ensure_ascii=False, separators=(",", ":")))


def make_call(name: str, arguments: dict) -> ToolCall:
    return ToolCall(id=new_call_id(), function=FunctionCall(name=name, arguments=compact(arguments)))


def cut_call(name: str, text: str) -> ToolCall:
    """The call of ``name`` that the token limit cut short: its arguments as far as they were written (no
    JSON yet), as OpenAI and vLLM return a forced call that ran out of tokens (``finish_reason: length``)."""
    return ToolCall(id=new_call_id(), function=FunctionCall(name=name, arguments=text))


def _arguments(value: Any) -> dict | None:
    """An arguments object; a JSON string holding one is accepted too (models sometimes quote it)."""
    if isinstance(value, str):
        value = loads(value)
    return value if isinstance(value, dict) else None


def call_from_object(obj: Any, names: Iterable[str], arguments_key: Iterable[str]) -> ToolCall | None:
    """``{"name": <offered tool>, <arguments key>: {...}}`` → a call (arguments ``{}`` when the object
    holds nothing but its name); None for anything else, such as arguments under another key, which
    stays the model's text rather than a call without them."""
    if not isinstance(obj, dict):
        return None
    name = obj.get("name")
    if not isinstance(name, str) or name not in names:
        return None
    value = next((obj[key] for key in arguments_key if key in obj), None)
    if value is None:
        if set(obj) - {"name", "type"}:
            return None
        value = {}
    arguments = _arguments(value)
    return None if arguments is None else make_call(name, arguments)


def call_from_text(text: str, names: Iterable[str], arguments_key: Iterable[str]) -> ToolCall | None:
    """``call_from_object`` for JSON text."""
    obj = loads(text)
    return None if obj is _NO_VALUE else call_from_object(obj, names, arguments_key)


def calls_from_list(text: str, names: Iterable[str], arguments_key: Iterable[str]) -> list[ToolCall] | None:
    """A JSON array of call objects → calls, all of them valid and at least one; else None."""
    items = loads(text)
    if not isinstance(items, list) or not items:
        return None
    calls = [call_from_object(item, names, arguments_key) for item in items]
    return None if any(call is None for call in calls) else calls  # type: ignore[return-value]


def call_from_arguments(text: str, name: str) -> ToolCall | None:
    """The arguments object of the function ``name`` → its call; None if ``text`` is no JSON object."""
    arguments = loads(text)
    return make_call(name, arguments) if isinstance(arguments, dict) else None
