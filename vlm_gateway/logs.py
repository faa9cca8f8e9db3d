"""The serving process's logging: one format for every logger (the gateway's, uvicorn's, the embedded
vLLM's relayed lines), at the configured ``log_level``.

The CLI (and each worker of ``serve --workers N``) configures the root logger once; uvicorn is run with
``log_config=None`` so its loggers write through it, and ``create_app`` gives Litestar no logging config
of its own (its default one reset the root logger to INFO) and sets the ``vlm_gateway`` loggers' level.
"""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# uvicorn's level names; its ``trace`` (5) is finer than DEBUG
LEVELS = {"critical": logging.CRITICAL, "error": logging.ERROR, "warning": logging.WARNING, "info": logging.INFO,
          "debug": logging.DEBUG, "trace": 5}


def level(name: str) -> int:
    """``log_level`` as a ``logging`` level (a name the CLI has checked; anything else: INFO)."""
    return LEVELS.get(name.lower(), logging.INFO)


def configure(log_level: str) -> None:
    """Every logger of the process in one format, at ``log_level``."""
    logging.basicConfig(level=level(log_level), format=FORMAT)
