"""vlm_gateway.engines.cpu_compat and vlm_gateway.engines.vllm_server helpers (no vLLM server is started here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vlm_gateway.engines import cpu_compat
from vlm_gateway.engines.vllm_launch import CPU_ENV, server_command, server_env

REPO = Path(__file__).resolve().parents[2]


def run_py(code: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    if env is None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env["PYTHONPATH"] = str(REPO)
    return subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout
    )


def test_import_torchvision_after_apply_in_fresh_process():
    r = run_py(
        "import vlm_gateway.engines.cpu_compat as c; print(c.apply()); print(c.apply())\n"
        "import torchvision, torchvision.transforms.v2, torchaudio, transformers.processing_utils\n"
        "print('ok', torchvision.__version__)"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    first, second, last = r.stdout.strip().splitlines()[-3:]
    assert first == second  # idempotent
    assert last.startswith("ok ")


def test_child_env_fixes_every_python_process_lazily():
    env = cpu_compat.child_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    r = run_py(
        "import sys; assert 'torch' not in sys.modules  # the hook is lazy\n"
        "import torchvision, transformers.processing_utils\n"
        "import vlm_gateway.engines.cpu_compat as c; print(sorted(c.apply()))",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "torchvision" in r.stdout


def test_child_env_reaches_spawned_children():
    # vLLM starts EngineCore and its worker with multiprocessing "spawn" on CPU.
    env = cpu_compat.child_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    r = run_py(
        "import importlib, multiprocessing as mp\n"
        "if __name__ == '__main__':\n"
        "    p = mp.get_context('spawn').Process(target=importlib.import_module, args=('torchvision',))\n"
        "    p.start(); p.join(); print('exitcode', p.exitcode)",
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "exitcode 0" in r.stdout, r.stderr[-3000:]


def test_unusable_torchcodec_raises_import_error():
    r = run_py(
        "import vlm_gateway.engines.cpu_compat as c; res = c.apply()\n"
        "try:\n    import torchcodec\nexcept ImportError:\n    print('import-error', res['torchcodec'])\n"
        "else:\n    print('imported', res['torchcodec'])"
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = r.stdout.strip().splitlines()[-1]
    assert out in ("import-error blocked", "imported not-needed", "import-error absent"), out


def test_hook_dir_is_stable_and_chains():
    d1, d2 = cpu_compat.hook_dir(), cpu_compat.hook_dir()
    assert d1 == d2 and (d1 / "sitecustomize.py").is_file()
    assert "install_import_hook" in (d1 / "sitecustomize.py").read_text()


def test_server_command_and_env():
    cmd = server_command("/models/x", 8123, ["--served-model-name", "x", "--max-model-len", "2048"])
    assert cmd[:3] == [sys.executable, "-m", "vlm_gateway.engines.vllm_server"]
    assert cmd[cmd.index("--model") + 1] == "/models/x"
    assert cmd[cmd.index("--port") + 1] == "8123"
    assert cmd[cmd.index("--host") + 1] == "127.0.0.1"
    assert "--enable-scale-out" in cmd and "--enable-prompt-tokens-details" in cmd  # usage reports cache hits
    assert "--max-num-seqs" not in cmd  # vLLM's own default: a lower cap queued requests an idle engine could run
    assert cmd[-4:] == ["--served-model-name", "x", "--max-model-len", "2048"]  # extra args go last

    env = server_env({"VLLM_CPU_KVCACHE_SPACE": "3", "PATH": os.environ.get("PATH", "")})
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"  # kept when set
    assert server_env({})["VLLM_CPU_KVCACHE_SPACE"] == CPU_ENV["VLLM_CPU_KVCACHE_SPACE"] == "1"
    parts = env["PYTHONPATH"].split(os.pathsep)
    assert str(cpu_compat.hook_dir()) in parts and str(REPO) in parts


def test_offline_only_for_local_checkpoints(tmp_path):
    assert server_env({}, model_path=str(tmp_path))["HF_HUB_OFFLINE"] == "1"
    assert "HF_HUB_OFFLINE" not in server_env({}, model_path="Qwen/Qwen2.5-VL-3B-Instruct")


SPIN_CHECK = """
import time
import vlm_gateway.engines.cpu_compat as c
print(c.apply()["vllm-shm-spin"])
from vllm.distributed.device_communicators import shm_broadcast as m
calls = []
m.sched_yield = lambda: calls.append("yield")
time.sleep = lambda s: calls.append(("sleep", s))
class Poller:
    def poll(self, timeout):
        calls.append(("poll", timeout))
        return []
cond = object.__new__(m.SpinCondition)
cond.is_reader, cond.busy_loop_s, cond.poller = True, 1.0, Poller()
cond.read_cancel_socket = cond.local_notify_socket = object()
cond.last_read = time.monotonic()
cond.wait(timeout_ms=7)  # within the busy second
cond.last_read = time.monotonic() - 5
cond.wait(timeout_ms=7)  # idle: wait on the notification socket
print(calls)
"""


def test_shm_queue_reader_sleeps_instead_of_spinning():
    # A lazily fixed process (child_env, as vLLM's engine core and worker are) with the launcher's setting.
    env = cpu_compat.child_env({k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    r = run_py(SPIN_CHECK, env={**env, cpu_compat.SPIN_SLEEP_ENV: "100"})
    assert r.returncode == 0, r.stderr[-3000:]
    state, calls = r.stdout.strip().splitlines()[-2:]
    assert state == "patched"
    assert calls == "[('sleep', 0.0001), ('poll', 7)]"

    # Without the setting vLLM's own loop is left alone.
    r = run_py(SPIN_CHECK, env={k: v for k, v in env.items() if k != cpu_compat.SPIN_SLEEP_ENV})
    assert r.returncode == 0, r.stderr[-3000:]
    state, calls = r.stdout.strip().splitlines()[-2:]
    assert state == "not-needed"
    assert calls == "['yield', ('poll', 7)]"


def test_cpu_defaults_make_idle_engine_threads_sleep():
    if not CPU_ENV:
        return
    env = server_env({})
    assert env["OMP_WAIT_POLICY"] == "PASSIVE" and env[cpu_compat.SPIN_SLEEP_ENV] == "30"
    assert server_env({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"  # an operator's choice wins


AMX_PERMISSION = """
import ctypes, platform
import torch
import vlm_gateway.engines.cpu_compat as c
def tiles_granted():  # arch_prctl(ARCH_GET_XCOMP_PERM): bit 18 is AMX's tile data
    if platform.machine() != "x86_64":
        return False
    perm = ctypes.c_uint64(0)
    ctypes.CDLL(None, use_errno=True).syscall(158, 0x1022, ctypes.byref(perm))
    return bool(perm.value >> 18 & 1)
print(torch.cpu._is_amx_tile_supported(), tiles_granted(), c.apply()["amx"], tiles_granted())
"""


def test_a_process_is_granted_amx_where_torch_reports_it():
    """vLLM's AMX attention kernel kills a worker that never asked Linux for AMX (SIGILL on the first
    forward pass, on a Sapphire Rapids box); ``apply`` asks for it in every engine process."""
    r = run_py(AMX_PERMISSION)
    assert r.returncode == 0, r.stderr[-3000:]
    amx, before, outcome, after = r.stdout.split()
    if amx == "True":
        assert (before, outcome, after) == ("False", "requested", "True")
    else:
        assert outcome == "not-needed"
