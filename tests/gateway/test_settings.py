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
