"""Settings of the Responses API (``[responses]`` in the config file, ``VLM_GATEWAY_RESPONSES__*`` in the
environment).

    [responses]
    ttl_s = 2592000        # how long a stored response (store: true) can be read or continued: 30 days
    cancel_poll_s = 0.5    # how often a running background response looks for a cancellation
    stream_poll_s = 0.5    # how often GET /v1/responses/{id}?stream=true looks whether a background one is done

Stored responses live in the state backend: Redis when ``redis_url`` is set (every replica sees them),
else this process's memory. A stored response holds its whole conversation, images included (as the
data URIs the client sent): size ``ttl_s`` for that.
"""

from __future__ import annotations

import msgspec


class ResponsesSettings(msgspec.Struct, forbid_unknown_fields=True):
    ttl_s: float = 30 * 86400.0  # OpenAI keeps responses 30 days
    cancel_poll_s: float = 0.5
    stream_poll_s: float = 0.5

    def __post_init__(self) -> None:
        if self.ttl_s <= 0 or self.cancel_poll_s <= 0 or self.stream_poll_s <= 0:
            raise ValueError("responses.ttl_s, responses.cancel_poll_s and responses.stream_poll_s must be positive")
