"""Which server of an engine pool takes a request: the one that holds its caches, within a load bound;
a key seen first goes to the server that owns the fewest keys; no key: the least loaded.

``affinity_key`` names what a request's engine-side caches are keyed by: the client's own
``prompt_cache_key`` when it sends one (OpenAI's field for "requests that share a long prefix": a preset's
system prompt asked about many images), else its first image's content hash (vLLM's multimodal cache), else
the start of its prompt (vLLM's prefix cache: a conversation's turns share their first tokens). An owner
table (``vlm_gateway.routing.owners``: in memory, or in Redis so that every gateway replica agrees)
remembers which server a key went to. ``choose`` then routes:

- the key's owner, while its load stays within the bound ("affinity"): ``LOAD_BOUND`` times the pool's mean
  load, and at least ``LOAD_SLACK`` requests above it, since an engine batches a few more requests at
  almost no cost while a cache miss costs a whole prefill (consistent hashing with bounded loads, Mirrokni
  et al.). A hot key's owner over the bound: the least loaded takes the request, the key stays ("spilled").
- a key without an owner ("new"), or whose owner left the pool ("moved"): the server within the bound that
  owns the fewest keys, ties broken by rendezvous hashing (a hash of key and server, highest wins, so
  replicas that see a key at once mostly agree); it becomes the key's owner. Assigning by owned keys
  rather than by hash keeps a few dozen conversations evenly spread, where hashing alone leaves one server
  with 60 % of them one time in four.
- no key, a pool of one, or ``routing = "least_loaded"``: the fewest requests in flight.

Imports nothing of the gateway but ``metrics``: the engines layer uses it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from typing import Literal, TypeVar

from vlm_gateway import metrics

Routing = Literal["affinity", "least_loaded"]
Decision = Literal["affinity", "new", "moved", "spilled", "least_loaded"]
PREFIX_TOKENS = 64  # the prompt's start that names a conversation: system prompt and first user turn
LOAD_BOUND = 1.25
LOAD_SLACK = 4

T = TypeVar("T")


def affinity_key(image_hashes: Sequence[str], token_ids: Sequence[int], cache_key: str | None = None) -> str:
    """A hash of the client's ``cache_key``, else the first image's content hash, else a hash of the
    prompt's first ``PREFIX_TOKENS`` tokens."""
    if cache_key:
        return "key:" + hashlib.blake2b(cache_key.encode(), digest_size=12).hexdigest()
    if image_hashes:
        return "img:" + image_hashes[0]
    start = ",".join(map(str, token_ids[:PREFIX_TOKENS])).encode()
    return "txt:" + hashlib.blake2b(start, digest_size=12).hexdigest()


def _score(key: str, server: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{key}\0{server}".encode(), digest_size=8).digest(), "big")


def choose(servers: Sequence[T], key: str | None, load: Callable[[T], float], name: Callable[[T], str],
           routing: Routing = "affinity", *, owner: str | None = None, owned: Callable[[T], int] = lambda s: 0,
           bound: float = LOAD_BOUND, slack: int = LOAD_SLACK) -> tuple[T, Decision]:
    """The server for a request with affinity ``key`` whose owner is ``owner`` (a server's name, or None),
    and why (see the module's doc). ``servers`` is not empty; ``owned`` counts a server's keys."""
    least = min(servers, key=load)
    if routing == "least_loaded" or key is None or len(servers) == 1:
        return _decided(least, "least_loaded")
    mean = (sum(map(load, servers)) + 1) / len(servers)  # this request included
    cap = max(math.ceil(bound * mean), math.ceil(mean) + slack)
    fits = [s for s in servers if load(s) + 1 <= cap] or [least]
    current = next((s for s in servers if name(s) == owner), None)
    if current is not None:
        return _decided(current, "affinity") if current in fits else _decided(least, "spilled")
    chosen = min(fits, key=lambda s: (owned(s), -_score(key, name(s))))
    return _decided(chosen, "new" if owner is None else "moved")


def _decided(server: T, decision: Decision) -> tuple[T, Decision]:
    metrics.ROUTING.labels(decision).inc()
    return server, decision
