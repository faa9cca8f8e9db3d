"""Every start-up mistake of ``vlm-gateway serve`` is one line naming the problem and its fix, exit code 2,
no traceback. The CLI runs in a subprocess (offline: ``HF_HUB_OFFLINE=1`` and an empty Hugging Face cache);
no engine is started: each case fails before uvicorn does."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
REMOTE = "http://127.0.0.1:9"  # nothing listens there; a remote engine only probes it in the background


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLM_GATEWAY_")}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), VLM_GATEWAY_CACHE_DIR=str(tmp_path / "cache"))
    env.update(extra)
    return env


def _serve(tmp_path: Path, *args: str, env: dict[str, str] | None = None, code: str | None = None) -> str:
    """Run ``vlm-gateway serve ARGS``; assert the start-up-mistake contract; return the one stderr line."""
    cmd = ([sys.executable, "-c", code, "serve", *args] if code
           else [sys.executable, "-m", "vlm_gateway.cli", "serve", *args])
    proc = subprocess.run(cmd, cwd=ROOT, env=env or _env(tmp_path), capture_output=True, text=True, timeout=120)
    assert "Traceback" not in proc.stderr, proc.stderr
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and proc.stderr.endswith("\n"), proc.stderr
    assert lines[0].startswith("vlm-gateway: ") and len(lines[0]) > len("vlm-gateway: "), lines[0]
    assert "Fix: " in lines[0], lines[0]
    return lines[0]


def test_unknown_family_of_an_unreachable_hub_id(tmp_path) -> None:
    line = _serve(tmp_path, "--model", "llava-hf/llava-1.5-7b-hf", "--engine-url", REMOTE, "--port", "0")
    assert "cannot detect the family of 'llava-hf/llava-1.5-7b-hf'" in line
    assert "Fix: pass --family (one of: " in line and "llava_1_5" in line and "set `family`" in line


def test_unknown_family_of_a_config_entry_names_the_entry_field(tmp_path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[[models]]\nid = "m"\ncheckpoint = "llava-hf/llava-1.5-7b-hf"\n'
                   f'engine = {{ kind = "remote", urls = ["{REMOTE}"] }}\n')
    line = _serve(tmp_path, "--config", str(cfg), "--port", "0")
    assert line.startswith("vlm-gateway: model 'm': cannot detect the family")
    assert "Fix: set `family` in the model entry (one of: " in line and "--family" not in line


def test_family_flag_is_checked(tmp_path, tiny_checkpoint: Path) -> None:
    line = _serve(tmp_path, "--model", str(tiny_checkpoint), "--family", "nope", "--engine-url", REMOTE,
                  "--port", "0")
    assert "unknown family 'nope'" in line and "Fix: pass --family one of: " in line and "llava_1_5" in line
    line = _serve(tmp_path, "--family", "llava_1_5", "--port", "0")
    assert "--family applies to the --model checkpoints" in line


def test_family_flag_applies_to_the_command_line_models() -> None:
    from vlm_gateway.cli import _with_cli_models
    from vlm_gateway.settings import ModelSettings, Settings

    base = Settings(models=[ModelSettings(id="cfg", checkpoint="/c")])
    out = _with_cli_models(base, ["/a", "/b"], [], "llava_1_5")
    assert [(m.id, m.family) for m in out.models] == [("cfg", None), ("/a", "llava_1_5"), ("/b", "llava_1_5")]


def test_a_family_vllm_cannot_serve_is_refused_an_embedded_engine(tmp_path, tiny_checkpoint: Path) -> None:
    """A family whose data says the installed vLLM cannot serve it (``no_embedded_engine``; none does today, it
    is how a family vLLM drops is kept servable elsewhere) is refused an embedded engine, not another kind."""
    templates = tmp_path / "templates"
    shutil.copytree(ROOT / "vlm_gateway" / "templates", templates)
    families = templates / "families.toml"
    reason = 'this vLLM cannot serve LLaVA-1.5. Fix: give the model engine = { kind = \\"openai\\" }'
    families.write_text(
        families.read_text().replace("[llava_1_5]\n", f'[llava_1_5]\nno_embedded_engine = "{reason}"\n', 1))
    config = tmp_path / "gateway.toml"
    config.write_text(f'templates_dir = "{templates}"\n\n[[models]]\nid = "m"\ncheckpoint = "{tiny_checkpoint}"\n')
    line = _serve(tmp_path, "--config", str(config), "--port", "0")
    assert 'model \'m\': this vLLM cannot serve LLaVA-1.5. Fix: give the model engine = { kind = "openai" }' in line
    # behind an OpenAI engine the same checkpoint passes the start-up checks
    from vlm_gateway.cli import _check_models
    from vlm_gateway.settings import EngineSettings, ModelSettings, Settings

    engine = EngineSettings(kind="openai", urls=[REMOTE + "/v1"])
    _check_models(Settings(templates_dir=str(templates),
                           models=[ModelSettings(id="m", checkpoint=str(tiny_checkpoint), engine=engine)]), set())


def test_checkpoint_without_tokenizer(tmp_path, tiny_checkpoint: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(tiny_checkpoint / "config.json", ckpt / "config.json")
    line = _serve(tmp_path, "--model", str(ckpt), "--engine-url", REMOTE, "--port", "0")
    assert f"cannot read its checkpoint '{ckpt}'" in line and "tokenizer.json" in line
    assert "Fix: point --model at a directory holding config.json and tokenizer.json" in line


def test_checkpoint_without_config(tmp_path, tiny_checkpoint: Path) -> None:
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    shutil.copy(tiny_checkpoint / "tokenizer.json", ckpt / "tokenizer.json")
    line = _serve(tmp_path, "--model", str(ckpt), "--port", "0")
    assert f"cannot read its checkpoint '{ckpt}' (config.json:" in line


def test_checkpoint_that_does_not_exist(tmp_path) -> None:
    missing = tmp_path / "no" / "such" / "checkpoint"
    line = _serve(tmp_path, "--model", str(missing), "--engine-url", REMOTE, "--port", "0")
    assert f"cannot read its checkpoint '{missing}'" in line and "Fix: point --model at" in line


def test_config_entry_with_unreadable_tokenizer(tmp_path, tiny_checkpoint: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[[models]]\nid = "m"\ncheckpoint = "{tiny_checkpoint}"\ntokenizer = "{tmp_path}"\n'
                   f'engine = {{ kind = "remote", urls = ["{REMOTE}"] }}\n')
    line = _serve(tmp_path, "--config", str(cfg), "--port", "0")
    assert f"model 'm': cannot read its tokenizer '{tmp_path}'" in line and "Fix: point `tokenizer` at" in line


@pytest.mark.parametrize(("toml", "env", "expected"), [
    ('port = "abc"', {}, ["`port` must be of type int", "config file"]),
    ("[limits]\nfoo = 1", {}, ["unknown field `limits.foo`", "config file", "window_s"]),
    ("[limits]\nwindow_s = 0", {}, ["limits.window_s must be positive", "config file"]),
    ("", {"VLM_GATEWAY_PORT": "abc"}, ["`port` must be of type int", "environment variable VLM_GATEWAY_PORT"]),
    ("", {"VLM_GATEWAY_NOPE": "1"}, ["unknown field `nope`", "environment variable VLM_GATEWAY_NOPE"]),
    ("", {"VLM_GATEWAY_LIMITS__FOO": "1"}, ["unknown field `limits.foo`", "VLM_GATEWAY_LIMITS__FOO"]),
    ("[[models]]\nid = 'm'", {}, ["`models[0]` lacks its required field `checkpoint`"]),
    ("[[models]]\nid = 'm'\ncheckpoint = 'x'\nengine = { kind = 'nope' }", {},
     ["`models[0].engine.kind`", "one of: embedded, openai, remote"]),
    ("port = [", {}, ["cannot read config", "not valid TOML"]),
    ("log_level = 'loud'", {}, ["log_level 'loud'", "one of: critical"]),
])
def test_bad_config_field(tmp_path, toml: str, env: dict[str, str], expected: list[str]) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(toml + "\n")
    line = _serve(tmp_path, "--config", str(cfg), env=_env(tmp_path, **env))
    for text in expected:
        assert text in line, line
    if "config file" in expected:
        assert str(cfg) in line


def test_missing_config_file(tmp_path) -> None:
    line = _serve(tmp_path, "--config", str(tmp_path / "missing.toml"))
    assert f"cannot read config {tmp_path / 'missing.toml'}" in line


def test_port_in_use(tmp_path, tiny_checkpoint: Path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[[models]]\nid = "tiny"\ncheckpoint = "{tiny_checkpoint}"\n'
                   f'engine = {{ kind = "remote", urls = ["{REMOTE}"] }}\n')
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        line = _serve(tmp_path, "--config", str(cfg), "--host", "127.0.0.1", "--port", str(port))
    assert line == (f"vlm-gateway: port {port} on 127.0.0.1 is already in use. Fix: stop the other process or "
                    "pass --port (or set port in the config)")


def test_port_out_of_range(tmp_path) -> None:
    assert "port 70000 is out of range" in _serve(tmp_path, "--port", "70000")


def test_offline_default_without_the_tiny_extra(tmp_path) -> None:
    # torch cannot be imported (None in sys.modules), and the cache holds no tiny checkpoint
    code = "import sys; sys.modules['torch'] = None; from vlm_gateway.cli import main; sys.exit(main())"
    line = _serve(tmp_path, "--port", "0", code=code)
    assert "the offline default needs the tiny extra" in line and "torch" in line
    assert "pip install 'vlm-gateway[tiny]'" in line and "configure a model" in line


def test_workers_need_redis(tmp_path, tiny_checkpoint: Path) -> None:
    line = _serve(tmp_path, "--model", str(tiny_checkpoint), "--engine-url", REMOTE, "--port", "0", "--workers", "2")
    assert line.startswith("vlm-gateway: workers = 2 needs redis_url"), line
    assert "Fix: set redis_url (or VLM_GATEWAY_REDIS_URL), or serve with workers = 1" in line


def test_workers_must_be_positive(tmp_path, tiny_checkpoint: Path) -> None:
    env = _env(tmp_path, VLM_GATEWAY_WORKERS="0")
    line = _serve(tmp_path, "--model", str(tiny_checkpoint), "--engine-url", REMOTE, "--port", "0", env=env)
    assert line == "vlm-gateway: invalid configuration: workers = 0. Fix: set workers to 1 or more"


def test_an_engine_url_without_its_scheme(tmp_path) -> None:
    line = _serve(tmp_path, "--model", "/x", "--engine-url", "127.0.0.1:8000", "--port", "0")
    assert line.startswith("vlm-gateway: --engine-url: '127.0.0.1:8000' is not an http(s) URL with a host"), line
    cfg = tmp_path / "g.toml"
    cfg.write_text('[[models]]\nid = "m"\ncheckpoint = "/x"\nengine = { kind = "remote", urls = ["x"] }\n')
    line = _serve(tmp_path, "--config", str(cfg), "--port", "0")
    assert "urls: 'x' is not an http(s) URL with a host" in line and "`models[0].engine`" in line, line


def test_an_unset_api_key_variable_of_an_openai_engine(tmp_path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text('[[models]]\nid = "m"\ncheckpoint = "/x"\n'
                   f'engine = {{ kind = "openai", urls = ["{REMOTE}/v1"], api_key_env = "VLM_TEST_UNSET_KEY" }}\n')
    env = {k: v for k, v in _env(tmp_path).items() if k != "VLM_TEST_UNSET_KEY"}
    line = _serve(tmp_path, "--config", str(cfg), "--port", "0", env=env)
    assert line == ("vlm-gateway: model 'm': its engine's api_key_env names VLM_TEST_UNSET_KEY, which is not set (or "
                    "empty). Fix: export VLM_TEST_UNSET_KEY=<the upstream's API key>, or remove api_key_env for an "
                    "upstream that needs no key")


@pytest.mark.parametrize(("family", "out", "expected"), [
    ("nope", "{tmp}/t", "vlm-gateway: unknown tiny family 'nope'. Fix: pass --family one of: llava_1_5, "),
    ("llava_1_5", "/proc/nope", "vlm-gateway: cannot write the tiny checkpoint to /proc/nope: "),
])
def test_build_tiny_mistakes_are_one_line(tmp_path, family: str, out: str, expected: str) -> None:
    cmd = [sys.executable, "-m", "vlm_gateway.cli", "build-tiny", "--family", family, "--out",
           out.format(tmp=tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, (proc.returncode, proc.stderr)
    assert len(proc.stderr.splitlines()) == 1 and proc.stderr.startswith(expected), proc.stderr
    assert "Fix: " in proc.stderr
