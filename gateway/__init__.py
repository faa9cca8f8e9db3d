"""vlm-gateway: an OpenAI-compatible gateway for open vision-language models."""

from gateway.settings import Settings, load_settings

__all__ = ["Settings", "load_settings", "create_app"]


def __getattr__(name: str):  # create_app pulls in litestar; import it only when asked for
    if name == "create_app":
        from gateway.app import create_app

        return create_app
    raise AttributeError(name)
