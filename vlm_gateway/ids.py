"""Unique ids for requests, cheaply: a random part drawn once per process, then a counter.

``uuid.uuid4()`` reads the kernel's random source and builds a UUID object for every request; ids only
need to be unique, not unpredictable (they are never a secret), and 64 random bits per process (drawn
again in a forked child) plus a 64-bit counter keep them unique across replicas and workers.
"""

from __future__ import annotations

import itertools
import os
import secrets

_process = secrets.token_hex(8)
_counter = itertools.count()


def _reseed() -> None:
    global _process, _counter
    _process, _counter = secrets.token_hex(8), itertools.count()


os.register_at_fork(after_in_child=_reseed)


def new_id() -> str:
    """32 hex digits, unique across processes (as ``uuid.uuid4().hex`` is used for)."""
    return f"{_process}{next(_counter):016x}"
