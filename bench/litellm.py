"""LiteLLM's proxy as a third target of `make bench` (``--litellm``), in front of the same vLLM server.

It is installed into a virtual environment of its own (``~/.cache/vlm-gateway/litellm-venv``, made on
first use), never into the project's. LiteLLM refuses to start without ``LITELLM_MASTER_KEY``; requests
carry it as their bearer token. Its model entry is vLLM's OpenAI route (``hosted_vllm/``), so LiteLLM
forwards the chat as it came: vLLM renders and processes the images, as when called directly.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

from tests.helpers import Child, free_port

VENV = Path.home() / ".cache" / "vlm-gateway" / "litellm-venv"
REQUIREMENT = "litellm[proxy]"


def ensure_venv() -> Path:
    """The ``litellm`` command of the bench's own LiteLLM environment, installed when missing."""
    command = VENV / "bin" / "litellm"
    if not command.exists():
        print(f"installing {REQUIREMENT} into {VENV}", file=sys.stderr)
        venv.create(VENV, with_pip=True, clear=True)
        subprocess.run([str(VENV / "bin" / "pip"), "install", "--quiet", REQUIREMENT], check=True)
    return command


def start(engine_url: str, model: str, logs: Path) -> tuple[Child, str, dict[str, str]]:
    """LiteLLM's proxy serving ``model`` from the vLLM server at ``engine_url``: the child, its base URL and
    the headers its requests need."""
    key = os.environ.get("LITELLM_MASTER_KEY")
    if not key:
        raise SystemExit("--litellm: set LITELLM_MASTER_KEY (LiteLLM's proxy refuses to start without it)")
    command = ensure_venv()
    config = logs / "litellm.yaml"
    config.write_text(f"model_list:\n  - model_name: {model}\n    litellm_params:\n"
                      f"      model: hosted_vllm/{model}\n      api_base: {engine_url}/v1\n"
                      f"litellm_settings:\n  drop_params: true\n")
    port = free_port()
    child = Child("litellm", [str(command), "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
                              "--num_workers", "1"], logs, env={"LITELLM_MASTER_KEY": key, "LITELLM_LOG": "ERROR"})
    url = f"http://127.0.0.1:{port}"
    child.wait_http(url + "/health/liveliness", 300)
    return child, url, {"Authorization": f"Bearer {key}"}
