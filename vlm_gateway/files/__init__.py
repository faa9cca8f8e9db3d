"""Uploaded files (OpenAI's Files API): a store with a disk and a Redis backend, per-key ownership.

Wiring, in the app's lifespan, with the optional Redis client::

    app.state.files = build_file_store(settings, redis)     # Redis when there is one, else the disk
    ...
    await app.state.files.close()

Routes reach it with ``vlm_gateway.api.files.file_store(request)``. A file id becomes a loaded image with
``await store.image_source(caller, file_id, detail=..., param=...)`` then ``ImageLoader.load``; its bytes
with ``await store.open(caller, file_id, param=...)`` (``NotFound`` naming ``param`` for an unknown or
another key's id).
"""

from __future__ import annotations

import importlib
from typing import Any

# Names are imported on first use: ``vlm_gateway.settings`` imports ``vlm_gateway.files.settings``, and the
# store imports the settings (and Pillow): importing them here would be circular and slow.
_WHERE = {
    "FileSettings": "settings", "FileStore": "store", "build_file_store": "store", "check_backend": "store",
    "FileBackend": "types", "FileContent": "types", "FileRecord": "types", "PURPOSES": "types",
    "Purpose": "types", "DiskFiles": "disk", "RedisFiles": "redis",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
