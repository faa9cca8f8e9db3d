"""The package as users get it: a wheel built from this checkout, installed into a fresh virtual
environment outside the checkout (no torch, no vLLM, no tests), serving a chat request through the
OpenAI SDK to one of the session's real vLLM engines."""

from __future__ import annotations

import os
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import openai
import pytest

from tests.e2e.conftest import model_id
from tests.helpers import REPO, Child, free_port

pytestmark = pytest.mark.engine
FAMILY = "llava_1_5"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(out), str(REPO)],
                   check=True, capture_output=True, text=True)
    (path,) = out.glob("vlm_gateway-*.whl")
    return path


def test_wheel_holds_one_package_with_its_templates(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert all(top == "vlm_gateway" or top.startswith("vlm_gateway-") for top in tops), tops  # one import name
    for family in ("qwen2_5_vl", "llava_1_5", "gemma3", "llama4", "llama3_2_vision", "phi3_5_vision", "fastvlm"):
        assert f"vlm_gateway/templates/{family}.jinja" in names
    assert "vlm_gateway/templates/families.toml" in names and "vlm_gateway/seeds/domains.toml" in names
    assert {f"vlm_gateway/playground/static/{n}" for n in ("index.html", "app.js", "style.css")} <= set(names)
    assert not [n for n in names if n.startswith("tests/")]


def test_installed_wheel_serves_a_chat_outside_the_checkout(wheel: Path, tmp_path: Path, vllm_servers,
                                                            checkpoints, logs: Path) -> None:
    home = tmp_path / "venv"
    venv.create(home, with_pip=True)
    python, env = home / "bin" / "python", {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(wheel)],
                   check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    probe = subprocess.run([str(python), "-c", "import vlm_gateway, importlib.util as u; print(vlm_gateway.__file__); "
                            "print(u.find_spec('torch') is None and u.find_spec('transformers') is None)"],
                           check=True, capture_output=True, text=True, env=env, cwd=tmp_path).stdout.split()
    assert probe[0].startswith(str(home)) and probe[1] == "True"  # the installed copy, and no torch

    port = free_port()
    config = tmp_path / "gateway.toml"
    config.write_text("\n".join([
        f"port = {port}", "", "[[models]]", f'id = "{model_id(FAMILY)}"', f'checkpoint = "{checkpoints[FAMILY]}"',
        f'engine = {{ kind = "remote", urls = ["{vllm_servers[FAMILY]}"] }}', ""]))
    child = Child("wheel-gateway", [str(home / "bin" / "vlm-gateway"), "serve", "--config", str(config)], logs,
                  env={"PYTHONPATH": ""}, cwd=tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        child.wait_http(url + "/health", 120, ok=lambda r: r.status_code == 200 and r.json()["model_loaded"])
        reply = openai.OpenAI(base_url=url + "/v1", api_key="unused").chat.completions.create(
            model=model_id(FAMILY), max_tokens=4, messages=[{"role": "user", "content": "Hello"}])
        assert reply.usage.completion_tokens == 4 and reply.usage.prompt_tokens > 0
    finally:
        child.stop()
