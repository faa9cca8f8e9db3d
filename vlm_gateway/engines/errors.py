"""What an engine raises when a request fails. The engines layer knows nothing of HTTP: the gateway
maps these by whose fault they are (``vlm_gateway.errors.from_engine_error``).

    EngineError            any failure of an engine request
    ├── EngineRejected     the engine refused the request itself (the caller's fault); ``kind`` says why
    ├── EngineDown         no engine is up, the connection failed, or it answered 503 (retry later)
    │   └── EngineUnreachable  the connection was refused: the server is not there (out of rotation at once)
    ├── EngineTimeout      the request ran past its time limit
    └── EngineCrashed      the engine's own failure (a 5xx, or an error inside the stream)
        └── EngineCacheMiss    it no longer holds an image input sent by key alone (the sender resends it)
"""

from __future__ import annotations

from typing import Literal

RejectKind = Literal["context_length_exceeded", "invalid_value"]


class EngineError(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class EngineRejected(EngineError):
    """``param``: the field the engine named, by the engine's name for it (vLLM's ``SamplingParams``
    fields, or fields of the request the gateway built); None when it named none."""

    def __init__(self, message: str, kind: RejectKind = "invalid_value", param: str | None = None) -> None:
        super().__init__(message)
        self.kind: RejectKind = kind
        self.param = param


class EngineDown(EngineError):
    def __init__(self, message: str, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EngineUnreachable(EngineDown):
    pass


class EngineTimeout(EngineError):
    pass


class EngineCrashed(EngineError):
    pass


class EngineCacheMiss(EngineCrashed):
    pass
