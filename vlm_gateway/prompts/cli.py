"""``vlm-gateway render``: print the exact prompt a conversation becomes for a model family.

    vlm-gateway render --family F --messages FILE [--tools FILE] [--now ISO8601] [--no-generation-prompt]

FILE (``-`` for stdin) holds a JSON list of chat messages; an image part is ``{"type": "image"}`` or
an OpenAI ``image_url`` part; assistant ``tool_calls`` are in OpenAI form (``arguments`` a JSON
string). ``--tools`` names a JSON list of OpenAI tool specs to offer. The prompt goes to stdout as
UTF-8 bytes with nothing appended. A conversation the template refuses, or any other invalid input,
exits with status 2 and the reason on stderr. Imports no engine code (no torch, vLLM or
transformers), so it answers at once.
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

import msgspec

from vlm_gateway.errors import InvalidRequest, from_validation
from vlm_gateway.prompts.families import load_families
from vlm_gateway.prompts.render import render_chat
from vlm_gateway.schemas.openai import ChatMessage, Tool

_DECODE_MESSAGES = msgspec.json.Decoder(list[ChatMessage])
_DECODE_TOOLS = msgspec.json.Decoder(list[Tool])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm-gateway render", description=__doc__.split("\n\n")[0])
    parser.add_argument("--family", required=True, choices=sorted(load_families()))
    parser.add_argument("--messages", required=True, metavar="FILE",
                        help="JSON list of messages ('-' reads stdin)")
    parser.add_argument("--tools", metavar="FILE", help="JSON list of tools to offer")
    parser.add_argument("--now", type=datetime.fromisoformat, metavar="ISO8601",
                        help="the date templates print (default: today)")
    parser.add_argument("--no-generation-prompt", dest="add_generation_prompt", action="store_false",
                        help="do not open an assistant turn at the end")
    return parser


def _read(path: str) -> bytes:
    if path == "-":
        return sys.stdin.buffer.read()
    with open(path, "rb") as f:
        return f.read()


def main(argv: list[str] | None = None) -> int:
    """Run the command; ``argv`` excludes the program name (a leading ``render`` is skipped)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["render"]:
        argv = argv[1:]
    args = _parser().parse_args(argv)
    try:
        source = args.messages
        messages = _DECODE_MESSAGES.decode(_read(args.messages))
        source = args.tools
        tools = _DECODE_TOOLS.decode(_read(args.tools)) if args.tools else None
        prompt = render_chat(load_families()[args.family], messages, tools=tools,
                             add_generation_prompt=args.add_generation_prompt, now=args.now)
    except OSError as exc:
        print(f"vlm-gateway render: {exc}", file=sys.stderr)
        return 1
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        print(f"vlm-gateway render: {source}: {from_validation(exc).message}", file=sys.stderr)
        return 2
    except InvalidRequest as exc:
        print(f"vlm-gateway render: refused: {exc.message}", file=sys.stderr)
        return 2
    sys.stdout.buffer.write(prompt.text.encode("utf-8"))
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
