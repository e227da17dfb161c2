"""The ledger's ``outbox`` table: MQTT messages kept until the broker acknowledged them.

:class:`livestream.telemetry.outbox.Outbox` writes an event here before it is handed to
the broker and deletes it on the PUBACK, so the events a killed daemon held are
published after its restart (:meth:`OutboxRows.stored_messages`, oldest first).  The
payload is stored as sent: its ``message_id`` survives the restart.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["OutboxRows", "StoredMessage"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredMessage:
    """One row of the ``outbox`` table."""

    row_id: int
    topic: str
    payload: bytes
    retain: bool
    created_unix_s: float


class OutboxRows:
    """The ledger's outbox methods; the connection is the subclass's (one statement
    each, committed at once: small writes, fit for the event loop)."""

    _db: sqlite3.Connection

    def store_message(self, topic: str, payload: bytes, *, retain: bool) -> int:
        """Keep a message to publish; return its row id."""
        cursor = self._db.execute(
            "INSERT INTO outbox (topic, payload, retain, created_unix_s)"
            " VALUES (?, ?, ?, ?)",
            (topic, payload, int(retain), time.time()),
        )
        row_id = cursor.lastrowid
        if row_id is None:
            raise sqlite3.DatabaseError(f"outbox: no row id for a message to {topic!r}")
        return row_id

    def delete_messages(self, row_ids: Iterable[int]) -> None:
        """Forget messages (acknowledged by the broker, or dropped)."""
        self._db.executemany("DELETE FROM outbox WHERE id=?", [(i,) for i in row_ids])

    def stored_messages(self) -> list[StoredMessage]:
        """Every kept message, oldest first."""
        cursor = self._db.execute(
            "SELECT id, topic, payload, retain, created_unix_s FROM outbox ORDER BY id"
        )
        return [
            StoredMessage(
                row_id=int(row_id),
                topic=str(topic),
                payload=bytes(payload),
                retain=bool(retain),
                created_unix_s=float(created),
            )
            for row_id, topic, payload, retain, created in cursor
        ]
