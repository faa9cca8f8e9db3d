"""Settings of the Files API (``[files]`` in the config file, ``VLM_GATEWAY_FILES__*`` in the environment).

    [files]
    backend = "auto"            # auto: Redis when redis_url is set, else the disk under `dir`
    dir = "/var/lib/vlm-gateway/files"
    max_bytes = 20971520        # one file
    quota_bytes = 1073741824    # everything stored (identical files counted once); 0: no quota
    key_quota_bytes = 0         # one API key's files (each counted); 0: no quota

e.g. ``VLM_GATEWAY_FILES__QUOTA_BYTES=0``. Files of purpose ``vision`` are images: they are also held to
``images.max_image_bytes`` and ``images.max_pixels``, as every image is.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import msgspec


def default_dir() -> Path:
    """``$XDG_DATA_HOME/vlm-gateway/files``, else ``~/.local/share/vlm-gateway/files``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "vlm-gateway" / "files"


class FileSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Where uploaded files live and how much they may take. The disk backend is for one gateway process;
    replicas share files through Redis (``redis_url``)."""

    backend: Literal["auto", "redis", "disk"] = "auto"
    dir: str = ""  # the disk backend's directory; empty: default_dir()
    max_bytes: int = 20 * 1024 * 1024
    quota_bytes: int = 1024 * 1024 * 1024
    key_quota_bytes: int = 0
    key_prefix: str = "vlm-gateway:{files}:"  # Redis: the hash tag keeps every key in one Cluster slot

    def __post_init__(self) -> None:
        if self.max_bytes <= 0:
            raise ValueError("files.max_bytes must be positive")
        if self.quota_bytes < 0 or self.key_quota_bytes < 0:
            raise ValueError("files.quota_bytes and files.key_quota_bytes must be 0 (no quota) or positive")

    @property
    def path(self) -> Path:
        return Path(self.dir).expanduser() if self.dir else default_dir()
