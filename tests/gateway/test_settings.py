import pytest

from vlm_gateway.settings import SettingsError, load_settings


def test_defaults_without_file_or_env() -> None:
    s = load_settings(None, environ={})
    assert (s.host, s.port, s.redis_url, s.models) == ("127.0.0.1", 8000, "", [])
    assert s.images.max_images_per_request == 30 and s.images.max_image_bytes == 5 * 1024 * 1024
    assert s.max_request_bytes == 10 * 1024 * 1024


def test_file_then_environment(tmp_path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text('port = 9000\n[images]\nmax_pixels = 100\n[[models]]\nid = "m"\ncheckpoint = "/x"\n'
                   'aliases = ["a"]\nengine = { kind = "remote", urls = ["http://h:1"] }\n')
    s = load_settings(cfg, environ={"VLM_GATEWAY_PORT": "9100", "VLM_GATEWAY_REDIS_URL": "redis://r:6379/0",
                                    "VLM_GATEWAY_IMAGES__ALLOW_LOOPBACK": "true", "OTHER_PORT": "1"})
    assert s.port == 9100  # environment wins over the file
    assert s.redis_url == "redis://r:6379/0"
    assert s.images.max_pixels == 100 and s.images.allow_loopback is True
    assert s.models[0].engine.kind == "remote" and s.models[0].engine.urls == ["http://h:1"]


def test_config_path_from_environment(tmp_path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text("port = 9200\n")
    assert load_settings(None, environ={"VLM_GATEWAY_CONFIG": str(cfg)}).port == 9200


@pytest.mark.parametrize("text", ["port = 'x'", "nonsense = 1", "[[models]]\nid = 'm'", "port = ["])
def test_invalid_configuration_is_refused(tmp_path, text: str) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(text)
    with pytest.raises(SettingsError):
        load_settings(cfg, environ={})


def test_invalid_environment_value_is_refused() -> None:
    with pytest.raises(SettingsError):
        load_settings(None, environ={"VLM_GATEWAY_PORT": "eighty"})


@pytest.mark.parametrize("raw", ["12345678901234567890", "true", "2024-01-01", "0x1f", "inf", "[1]"])
def test_a_text_field_keeps_its_environment_value_as_text(raw: str) -> None:
    s = load_settings(None, environ={"VLM_GATEWAY_JOBS__WEBHOOK__SECRET": raw, "VLM_GATEWAY_LIMITS__REDIS_PREFIX": raw,
                                     "VLM_GATEWAY_PORT": "0x2328", "VLM_GATEWAY_CORS_ORIGINS": '["*"]'})
    assert s.jobs.webhook.secret == raw and s.limits.redis_prefix == raw
    assert s.port == 9000 and s.cors_origins == ["*"]  # numbers and arrays are still TOML


def test_an_environment_variable_cannot_set_one_field_of_a_list_entry(tmp_path) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text('[[models]]\nid = "a"\ncheckpoint = "/x"\n')
    for name in ("VLM_GATEWAY_MODELS__0__CHECKPOINT", "VLM_GATEWAY_MODELS__ID"):
        with pytest.raises(SettingsError) as info:
            load_settings(cfg, environ={name: "/y"})
        assert str(info.value) == (
            f"invalid configuration: environment variable {name} sets a field inside `models`, a list whose entries "
            "cannot be set one field at a time. Fix: set the whole list in the config file, or as VLM_GATEWAY_MODELS "
            "(a TOML array of tables)")
    s = load_settings(cfg, environ={"VLM_GATEWAY_MODELS": '[{id = "b", checkpoint = "/y"}]'})
    assert [(m.id, m.checkpoint) for m in s.models] == [("b", "/y")]


@pytest.mark.parametrize("url", ["127.0.0.1:8000", "x", "localhost:8000", "ftp://h:1", "http://", "http://h:port"])
def test_an_engine_url_needs_its_scheme_and_host(tmp_path, url: str) -> None:
    cfg = tmp_path / "g.toml"
    cfg.write_text(f'[[models]]\nid = "a"\ncheckpoint = "/x"\nengine = {{ kind = "remote", urls = ["{url}"] }}\n'
                   f'engines = [{{ kind = "openai", urls = ["http://h:1/v1"] }}]\n')
    with pytest.raises(SettingsError) as info:
        load_settings(cfg, environ={})
    assert f"urls: {url!r} is not an http(s) URL with a host" in str(info.value)
    assert "`models[0].engine`" in str(info.value) and str(cfg) in str(info.value)
