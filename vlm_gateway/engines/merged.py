"""Several engine streams as one: a completions request with several prompts sends one engine request
per prompt and answers with their choices numbered on."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from vlm_gateway.engines import EngineDelta


async def merged(streams: list[AsyncIterator[EngineDelta]], n: int) -> AsyncIterator[EngineDelta]:
    """Several engine streams as one, as they come: choice ``i`` of stream ``k`` becomes ``k * n + i``.
    The first failure ends them all; closing this closes (and so aborts) every one."""
    if len(streams) == 1:
        async for delta in streams[0]:
            yield delta
        return
    queue: asyncio.Queue[EngineDelta | BaseException | None] = asyncio.Queue()

    async def pump(k: int, stream: AsyncIterator[EngineDelta]) -> None:
        try:
            async for delta in stream:
                if delta.prompt_tokens is None:  # usage deltas belong to no choice
                    delta.index += k * n
                await queue.put(delta)
            await queue.put(None)
        except Exception as exc:  # noqa: BLE001 - handed to the reader, who raises it
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(k, s)) for k, s in enumerate(streams)]
    try:
        running = len(tasks)
        while running:
            item = await queue.get()
            if item is None:
                running -= 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]
