"""vlm-gateway: an OpenAI-compatible gateway for open vision-language models.

Public names are imported on first use, so ``import vlm_gateway.<module>`` stays cheap (engine
processes import ``vlm_gateway.engines.cpu_compat`` at start-up).
"""

from typing import Any

__all__ = ["Settings", "load_settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name in ("Settings", "load_settings"):
        from vlm_gateway import settings

        return getattr(settings, name)
    if name == "create_app":
        from vlm_gateway.app import create_app

        return create_app
    raise AttributeError(name)
