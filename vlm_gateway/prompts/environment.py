"""The Jinja environment templates render in, built once and reused.

It reproduces what ``transformers`` ``apply_chat_template`` gives a chat template:
``ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)`` with loop controls and a
``{% generation %}`` tag (renders its body), a ``tojson`` filter that keeps non-ASCII characters,
``raise_exception(message)`` (raises ``PromptRefused``, a 400) and ``strftime_now(format)``.
``strftime_now`` reads the clock at render time; ``render`` passes one bound to a fixed ``now``.
Templates load from ``templates/`` and are compiled once (``auto_reload`` off).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from vlm_gateway.errors import PromptRefused
from vlm_gateway.prompts.families import templates_dir


class GenerationTag(jinja2.ext.Extension):
    """``{% generation %}...{% endgeneration %}``: renders its body unchanged, as transformers does."""

    tags = {"generation"}

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return caller()


def raise_exception(message: str) -> NoReturn:
    """Template global: the template refuses the conversation (HTTP 400, ``invalid_conversation``)."""
    raise PromptRefused(message, param="messages")


def tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
           separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """Template filter: JSON that keeps non-ASCII characters (transformers' ``tojson``)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def strftime_at(now: datetime | None):
    """A ``strftime_now(format)`` for templates: formats ``now``, or the current local time if None."""

    def strftime_now(fmt: str) -> str:
        return (now or datetime.now()).strftime(fmt)

    return strftime_now


@lru_cache(maxsize=4)
def get_environment(templates: Path | None = None) -> ImmutableSandboxedEnvironment:
    """The sandboxed environment loading from ``templates`` (default: ``templates_dir()``), cached."""
    env = ImmutableSandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(templates or templates_dir())),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
        auto_reload=False,
        extensions=[GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_at(None)
    return env


def get_template(name: str, directory: str | Path | None = None) -> jinja2.Template:
    """A compiled template from ``directory`` (default: the package's ``templates/``), compiled on first
    use, then reused."""
    return get_environment(Path(directory) if directory else templates_dir()).get_template(name)
