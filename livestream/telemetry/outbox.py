"""A bounded outbox of MQTT messages that waits out broker outages and daemon kills.

Messages enter at the back; the sender takes the oldest, and only removes it for good
(:meth:`Outbox.acknowledge`) once the broker has acknowledged it. A failed send puts it
back at the front (:meth:`Outbox.release`). When the outbox is full the oldest queued
message is dropped and counted; the count is returned to the caller so it reaches the
metrics — a message is never lost without a number going up.

With a ``store`` (the project's ledger, :mod:`livestream.ledger.outbox`), a
``durable`` message is written there before the sender can take it and deleted when it
is acknowledged or dropped; :meth:`Outbox.restore` queues what a killed (or stopped)
daemon left, oldest first. The store's writes are single small SQLite statements
made in the event loop, as the scheduler's ledger writes are. If one fails (a full
disk), the message is still sent from memory and a warning says so.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from livestream.ledger.outbox import StoredMessage

__all__ = ["MessageStore", "Outbox", "OutgoingMessage"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutgoingMessage:
    """One message to publish with QoS 1.

    ``durable``: keep it in the outbox's store until acknowledged; ``row_id``: its row
    there once stored.
    """

    topic: str
    payload: bytes
    retain: bool = False
    durable: bool = False
    row_id: int | None = None


class MessageStore(Protocol):
    """Where durable messages wait (:class:`livestream.ledger.store.Ledger`)."""

    def store_message(self, topic: str, payload: bytes, *, retain: bool) -> int: ...

    def delete_messages(self, row_ids: Iterable[int]) -> None: ...

    def stored_messages(self) -> list[StoredMessage]: ...


class Outbox:
    """Bounded FIFO of :class:`OutgoingMessage` with one message in flight at most.

    ``capacity`` bounds the queued messages; the one in flight is held apart so an
    overflow never drops a message the broker may be acknowledging right now.
    """

    def __init__(self, capacity: int, *, store: MessageStore | None = None) -> None:
        if capacity < 1:
            raise ValueError(f"outbox capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._store = store
        self._queue: collections.deque[OutgoingMessage] = collections.deque()
        self._in_flight: OutgoingMessage | None = None
        self._nonempty = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        """Messages not yet acknowledged, the one in flight included."""
        return len(self._queue) + (self._in_flight is not None)

    @property
    def n_stored(self) -> int:
        """Messages held that are also in the store."""
        return sum(m.row_id is not None for m in self._held())

    def put(self, message: OutgoingMessage) -> int:
        """Queue ``message`` (stored first if durable); return how many old
        messages were dropped (0 or 1)."""
        if message.durable and self._store is not None and message.row_id is None:
            message = _stored(self._store, message)
        self._queue.append(message)
        dropped = self._trim()
        self._update_events()
        return dropped

    def restore(self) -> int:
        """Queue the store's messages (left by an earlier run), oldest first, ahead
        of any new ones; return how many were dropped to keep within capacity."""
        if self._store is None:
            return 0
        try:
            stored = self._store.stored_messages()
        except sqlite3.Error as exc:
            log.warning("MQTT: stored outbox unreadable, nothing restored: %s", exc)
            return 0
        held = {m.row_id for m in self._held()}
        self._queue.extendleft(
            OutgoingMessage(
                topic=m.topic,
                payload=m.payload,
                retain=m.retain,
                durable=True,
                row_id=m.row_id,
            )
            for m in reversed(stored)
            if m.row_id not in held
        )
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
        """The broker has the in-flight message: forget it (and its stored row)."""
        if self._in_flight is not message:
            raise RuntimeError("outbox: acknowledged a message that is not in flight")
        self._in_flight = None
        self._forget([message])
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
        """Forget everything still waiting (at shutdown); return how many messages
        are lost: the stored ones stay in the store for the next start."""
        lost = len(self) - self.n_stored
        self._queue.clear()
        self._in_flight = None
        self._update_events()
        return lost

    async def wait_empty(self) -> None:
        """Return once every message has been acknowledged."""
        await self._empty.wait()

    def _held(self) -> list[OutgoingMessage]:
        in_flight = [] if self._in_flight is None else [self._in_flight]
        return [*in_flight, *self._queue]

    def _forget(self, messages: Iterable[OutgoingMessage]) -> None:
        row_ids = [m.row_id for m in messages if m.row_id is not None]
        if not row_ids or self._store is None:
            return
        try:
            self._store.delete_messages(row_ids)
        except sqlite3.Error as exc:  # the next start sends them again: at least once
            log.warning("MQTT: stored message(s) %s not deleted: %s", row_ids, exc)

    def _trim(self) -> int:
        dropped = []
        while len(self._queue) > self.capacity:
            dropped.append(self._queue.popleft())
        self._forget(dropped)
        return len(dropped)

    def _update_events(self) -> None:
        if self._queue:
            self._nonempty.set()
        else:
            self._nonempty.clear()
        if len(self) == 0:
            self._empty.set()
        else:
            self._empty.clear()


def _stored(store: MessageStore, message: OutgoingMessage) -> OutgoingMessage:
    """``message`` with the row id ``store`` gave it (unchanged if the write failed)."""
    try:
        row_id = store.store_message(
            message.topic, message.payload, retain=message.retain
        )
    except sqlite3.Error as exc:
        log.warning(
            "MQTT: message to %s kept in memory only (ledger write failed: %s)",
            message.topic,
            exc,
        )
        return message
    return dataclasses.replace(message, row_id=row_id)
