"""Write our golden tool-calling prompts: every family x every tool case the shared set does not cover.

    .venv/bin/python -m tests.gateway.prompts.make_tool_goldens           # (re)write golden_tools/
    .venv/bin/python -m tests.gateway.prompts.make_tool_goldens --check   # compare only; exit 1 on a difference

Cases: the shared ``tool_cases.json`` and ``tool_cases_extra.json`` (see ``tool_cases.py``). Shared
goldens (llama4 and llama3_2_vision on the shared cases) are not copied: the tests read them where
they are. A refused conversation is written as ``<case>.error``: ``<ErrorType>: <message>``. Goldens
are rendered by our own templates, so every change is reviewed as a diff before it is committed.
"""

from __future__ import annotations

import argparse
import sys

from tests.gateway.prompts.tool_cases import OUR_GOLDENS, all_cases, render_case, shared_golden
from vlm_gateway.errors import InvalidRequest
from vlm_gateway.prompts.families import load_families


def expected_files() -> dict[str, bytes]:
    """Relative path under golden_tools/ → bytes, for every family and case without a shared golden."""
    files = {}
    for family in sorted(load_families()):
        for case in all_cases():
            if shared_golden(family, case["id"]) is not None:
                continue
            try:
                name, data = f"{case['id']}.txt", render_case(family, case).encode("utf-8")
            except InvalidRequest as exc:
                name, data = f"{case['id']}.error", f"{type(exc).__name__}: {exc.message}\n".encode()
            files[f"{family}/{name}"] = data
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args(argv)
    expected = expected_files()
    present = {str(p.relative_to(OUR_GOLDENS)) for p in OUR_GOLDENS.glob("*/*") if p.is_file()}
    if args.check:
        differ = [rel for rel, data in expected.items()
                  if not (OUR_GOLDENS / rel).is_file() or (OUR_GOLDENS / rel).read_bytes() != data]
        stale = sorted(present - set(expected))
        for rel in differ + stale:
            print(f"differs: {rel}" if rel in differ else f"stale: {rel}")
        return 1 if differ or stale else 0
    for rel in sorted(present - set(expected)):
        (OUR_GOLDENS / rel).unlink()
    for rel, data in expected.items():
        path = OUR_GOLDENS / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    print(f"wrote {len(expected)} goldens under {OUR_GOLDENS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
