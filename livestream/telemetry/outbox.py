"""A bounded in-memory outbox of MQTT messages that waits out broker outages.

Messages enter at the back; the sender takes the oldest, and only removes it for good
(:meth:`Outbox.acknowledge`) once the broker has acknowledged it. A failed send puts it
back at the front (:meth:`Outbox.release`). When the outbox is full the oldest queued
message is dropped and counted; the count is returned to the caller so it reaches the
metrics — a message is never lost without a number going up.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass

__all__ = ["Outbox", "OutgoingMessage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingMessage:
    """One message to publish with QoS 1."""

    topic: str
    payload: bytes
    retain: bool = False


class Outbox:
    """Bounded FIFO of :class:`OutgoingMessage` with one message in flight at most.

    ``capacity`` bounds the queued messages; the one in flight is held apart so an
    overflow never drops a message the broker may be acknowledging right now.
    """

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"outbox capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._queue: collections.deque[OutgoingMessage] = collections.deque()
        self._in_flight: OutgoingMessage | None = None
        self._nonempty = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        """Messages not yet acknowledged, the one in flight included."""
        return len(self._queue) + (self._in_flight is not None)

    def put(self, message: OutgoingMessage) -> int:
        """Queue ``message``; return how many old messages were dropped (0 or 1)."""
        self._queue.append(message)
        dropped = self._trim()
        self._update_events()
        return dropped

    async def take(self) -> OutgoingMessage:
        """Wait for a message and mark the oldest as in flight."""
        if self._in_flight is not None:
            raise RuntimeError("outbox: a message is already in flight")
        while not self._queue:
            self._nonempty.clear()
            await self._nonempty.wait()
        self._in_flight = self._queue.popleft()
        return self._in_flight

    def acknowledge(self, message: OutgoingMessage) -> None:
        """The broker has the in-flight message: forget it."""
        if self._in_flight is not message:
            raise RuntimeError("outbox: acknowledged a message that is not in flight")
        self._in_flight = None
        self._update_events()

    def release(self, message: OutgoingMessage) -> int:
        """Sending failed: the in-flight message goes back to the front.

        Returns the number of messages dropped because the outbox is over capacity
        (then the released message itself, being the oldest, is the one dropped).
        """
        if self._in_flight is not message:
            raise RuntimeError("outbox: released a message that is not in flight")
        self._in_flight = None
        self._queue.appendleft(message)
        dropped = self._trim()
        self._update_events()
        return dropped

    def discard_all(self) -> int:
        """Forget everything still waiting (at shutdown); return how many."""
        count = len(self)
        self._queue.clear()
        self._in_flight = None
        self._update_events()
        return count

    async def wait_empty(self) -> None:
        """Return once every message has been acknowledged."""
        await self._empty.wait()

    def _trim(self) -> int:
        dropped = 0
        while len(self._queue) > self.capacity:
            self._queue.popleft()
            dropped += 1
        return dropped

    def _update_events(self) -> None:
        if self._queue:
            self._nonempty.set()
        else:
            self._nonempty.clear()
        if len(self) == 0:
            self._empty.set()
        else:
            self._empty.clear()
