"""``SlotMonitor``: an independent reader of one key's concurrency slots in Redis.

A thread reads the live leases of a slot key (members whose lease expiry, scored in µs, is after
Redis' own ``TIME``) every ``every_s`` and keeps the largest number ever seen: what a concurrency
limit is judged by, from outside the gateway.
"""

from __future__ import annotations

import threading
import time

import redis


class SlotMonitor(threading.Thread):
    def __init__(self, key: str, url: str, every_s: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.key, self.every_s = key, every_s
        self.client = redis.Redis.from_url(url)
        self.samples = 0
        self.max_seen = 0
        self.holders: set[str] = set()
        self._stop_event = threading.Event()

    def live(self) -> set[str]:
        seconds, micros = self.client.time()
        return {h.decode() for h in self.client.zrangebyscore(self.key, f"({seconds * 1_000_000 + micros}", "+inf")}

    def run(self) -> None:
        while not self._stop_event.is_set():
            live = self.live()
            self.samples += 1
            self.max_seen = max(self.max_seen, len(live))
            self.holders |= live
            time.sleep(self.every_s)

    def finish(self) -> None:
        self._stop_event.set()
        self.join()
