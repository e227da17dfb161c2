"""What the Dask tests read back from a worker: its heartbeat interval."""

from __future__ import annotations

import asyncio
from typing import Any


def heartbeat_ms(dask_worker: Any) -> float:
    """How often the worker now heartbeats to the scheduler, in ms."""
    interval: float = dask_worker.periodic_callbacks["heartbeat"].callback_time
    return interval


async def settled_heartbeats(client: Any) -> dict[str, float]:
    """Each worker's heartbeat interval in ms, once it has taken the scheduler's:
    a worker starts at 1 s (Worker's own default) and takes the scheduler's
    interval from the reply to its first heartbeat."""
    async with asyncio.timeout(30):
        while set((await client.run(heartbeat_ms)).values()) == {1000}:
            await asyncio.sleep(0.2)
    intervals: dict[str, float] = await client.run(heartbeat_ms)
    return intervals
