"""`vlm-gateway render`: exact prompt bytes on stdout, exit 2 on a refused conversation."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.gateway.prompts.conformance import cases_spec, conformance_dir, repo_root
from vlm_gateway.prompts.cli import main


def _messages_file(tmp_path: Path, case_id: str) -> Path:
    case = next(c for c in cases_spec()["cases"] if c["id"] == case_id)
    path = tmp_path / f"{case_id}.json"
    path.write_text(json.dumps(case["messages"], ensure_ascii=False), encoding="utf-8")
    return path


def _run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "vlm_gateway.prompts.cli", *args], cwd=repo_root(),
                          capture_output=True, timeout=30)


@pytest.mark.parametrize(("family", "case_id"), [("llama3_2_vision", "unicode_text"),
                                                 ("phi3_5_vision", "images_in_two_turns"),
                                                 ("llava_1_5", "whitespace_padded_text")])
def test_prints_exact_golden_bytes(tmp_path: Path, family: str, case_id: str) -> None:
    done = _run("render", "--family", family, "--messages", str(_messages_file(tmp_path, case_id)),
                "--now", "2025-01-15T12:00:00")
    assert done.returncode == 0, done.stderr
    assert done.stdout == (conformance_dir() / "golden" / family / f"{case_id}.txt").read_bytes()


def test_refusal_exits_2_with_reason(tmp_path: Path) -> None:
    done = _run("--family", "gemma3", "--messages", str(_messages_file(tmp_path, "consecutive_user_turns")))
    assert done.returncode == 2
    assert done.stdout == b""
    assert b"Conversation roles must alternate" in done.stderr


def test_openai_image_url_parts_and_no_generation_prompt(tmp_path: Path, capsysbinary) -> None:
    path = tmp_path / "m.json"
    path.write_text(json.dumps([{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
        {"type": "text", "text": "hi"}]}]))
    assert main(["--family", "fastvlm", "--messages", str(path), "--no-generation-prompt"]) == 0
    assert capsysbinary.readouterr().out == (
        b"<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<image>\nhi<|im_end|>\n")


def test_bad_input(tmp_path: Path, capsysbinary) -> None:
    path = tmp_path / "m.json"
    path.write_text('[{"role": "robot", "content": "hi"}]')
    assert main(["--family", "qwen2_5_vl", "--messages", str(path)]) == 2
    assert b"$[0].role" in capsysbinary.readouterr().err
    assert main(["--family", "qwen2_5_vl", "--messages", str(tmp_path / "missing.json")]) == 1
    with pytest.raises(SystemExit):
        main(["--family", "nope", "--messages", str(path)])


def test_imports_no_engine_code_and_loads_fast() -> None:
    probe = (
        "import sys, time; t = time.perf_counter(); import vlm_gateway.prompts.cli; "
        "t = time.perf_counter() - t; "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'vllm', 'transformers', 'engines'}); "
        "print(repr((t, heavy)))"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=repo_root(), capture_output=True, text=True,
                          timeout=30, check=True)
    seconds, heavy = eval(done.stdout)  # noqa: S307 - our own probe's output
    assert heavy == []
    assert seconds < 1.0


def test_tools_file(tmp_path: Path) -> None:
    from tests.gateway.prompts.tool_cases import case, openai_messages, our_golden

    c = case("tool_result_with_image")
    messages, tools = tmp_path / "messages.json", tmp_path / "tools.json"
    messages.write_text(json.dumps(openai_messages(c)), encoding="utf-8")
    tools.write_text(json.dumps(c["tools"]), encoding="utf-8")
    done = _run("render", "--family", "phi3_5_vision", "--messages", str(messages), "--tools", str(tools))
    assert done.returncode == 0, done.stderr
    assert done.stdout == our_golden("phi3_5_vision", c["id"]).read_bytes()
    tools.write_text('[{"function": {}}]', encoding="utf-8")
    done = _run("--family", "phi3_5_vision", "--messages", str(messages), "--tools", str(tools))
    assert done.returncode == 2 and str(tools).encode() in done.stderr
