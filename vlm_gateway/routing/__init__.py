"""Which server of an engine pool takes a request: the one that already holds its caches, within a load
bound, else the least loaded.

``affinity_key`` names what a request's engine-side caches are keyed by: its first image's content hash
(vLLM's multimodal cache), else the start of its prompt (vLLM's prefix cache: a conversation's turns share
their first tokens). ``choose`` ranks the pool's servers for the key by rendezvous hashing (each server's
score is a hash of key and server; the highest wins, so a key keeps its server while the pool stays, and
only the keys of a server that leaves move) and takes the first whose load stays within the bound (consistent
hashing with bounded loads, Mirrokni et al.): ``LOAD_BOUND`` times the pool's mean load, and at least
``LOAD_SLACK`` requests above it, since an engine batches a few more requests at almost no cost while a
cache miss costs a whole prefill. So a hot key spills instead of piling onto one server. No key, or
``least_loaded`` routing: fewest in flight.

Imports nothing of the gateway but ``metrics``: the engines layer uses it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from vlm_gateway import metrics

Routing = Literal["affinity", "least_loaded"]
PREFIX_TOKENS = 64  # the prompt's start that names a conversation: system prompt and first user turn
LOAD_BOUND = 1.25
LOAD_SLACK = 4

T = TypeVar("T")


def affinity_key(image_hashes: Sequence[str], token_ids: Sequence[int]) -> str:
    """The first image's content hash, else a hash of the prompt's first ``PREFIX_TOKENS`` tokens."""
    if image_hashes:
        return "img:" + image_hashes[0]
    start = ",".join(map(str, token_ids[:PREFIX_TOKENS])).encode()
    return "txt:" + hashlib.blake2b(start, digest_size=12).hexdigest()


def _score(key: str, server: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{server}".encode(), digest_size=8).digest(), "big")


def choose(servers: Sequence[T], key: str | None, load: Callable[[T], int], name: Callable[[T], str],
           routing: Routing = "affinity", bound: float = LOAD_BOUND, slack: int = LOAD_SLACK) -> T:
    """The server for a request with affinity ``key`` (see the module's doc). ``servers`` is not empty."""
    least = min(servers, key=load)
    if routing == "least_loaded" or key is None or len(servers) == 1:
        metrics.ROUTING.labels("least_loaded").inc()
        return least
    mean = (sum(map(load, servers)) + 1) / len(servers)  # this request included
    cap = max(math.ceil(bound * mean), math.ceil(mean) + slack)
    ranked = sorted(servers, key=lambda s: _score(key, name(s)), reverse=True)
    for rank, server in enumerate(ranked):
        if load(server) + 1 <= cap:
            metrics.ROUTING.labels("affinity" if rank == 0 else "spilled").inc()
            return server
    metrics.ROUTING.labels("spilled").inc()
    return least
