"""``vlm-gateway serve`` freezes what it loaded out of the garbage collector's scans once it is up, and
collects its youngest generation less often (``cli.settle_heap``). The CLI runs in a subprocess whose
``uvicorn.run`` drives the app's lifespan with Litestar's test client instead of serving."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vlm_gateway.cli import GC_YOUNG_THRESHOLD

ROOT = Path(__file__).resolve().parents[2]
CODE = """
import gc, sys
START = gc.get_threshold()[0]  # this interpreter's default
import uvicorn
from litestar.testing import TestClient
from vlm_gateway import cli

def run(app, **kwargs):
    before = gc.get_freeze_count(), gc.get_threshold()[0]
    with TestClient(app):  # the lifespan, as uvicorn runs it
        print(START, *before, gc.get_freeze_count(), gc.get_threshold()[0])

uvicorn.run = run
sys.exit(cli.main(sys.argv[1:]))
"""


def test_serve_freezes_the_loaded_heap_once_up(tmp_path, tiny_checkpoint: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLM_GATEWAY_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    proc = subprocess.run([sys.executable, "-c", CODE, "serve", "--model", str(tiny_checkpoint), "--engine-url",
                           "http://127.0.0.1:9", "--port", "0"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    default, frozen_before, threshold_before, frozen, threshold = map(int, proc.stdout.split())
    assert (frozen_before, threshold_before) == (0, default)  # the interpreter's defaults until the app is up
    assert frozen > 10_000 and threshold == GC_YOUNG_THRESHOLD
