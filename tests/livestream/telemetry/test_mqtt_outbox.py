"""The outbox, the backoff and the event payloads, without a broker."""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from livestream.ledger.store import Ledger
from livestream.telemetry.events import (
    EventKind,
    ServiceState,
    decode_event,
    encode_event,
    exposure_payload,
    stamp_event,
    status_payload,
)
from livestream.telemetry.mqtt import MqttSettings, backoff_delay_s, topic_for
from livestream.telemetry.outbox import Outbox, OutgoingMessage


def message(i: int) -> OutgoingMessage:
    return OutgoingMessage(topic=f"t/{i}", payload=str(i).encode())


async def test_outbox_is_fifo_and_drops_the_oldest_when_full() -> None:
    box = Outbox(3)
    dropped = [box.put(message(i)) for i in range(5)]
    assert dropped == [0, 0, 0, 1, 1]
    assert len(box) == 3
    taken = []
    for _ in range(3):
        m = await box.take()
        box.acknowledge(m)
        taken.append(m.topic)
    assert taken == ["t/2", "t/3", "t/4"]
    assert len(box) == 0


async def test_message_in_flight_is_never_dropped_and_returns_to_the_front() -> None:
    box = Outbox(2)
    box.put(message(0))
    in_flight = await box.take()
    assert [box.put(message(i)) for i in (1, 2, 3)] == [0, 0, 1]  # 1 dropped, not 0
    assert len(box) == 3  # two queued plus the one in flight
    # The send failed: message 0 goes back first; over capacity, the oldest (0) goes.
    assert box.release(in_flight) == 1
    order = []
    while len(box):
        m = await box.take()
        box.acknowledge(m)
        order.append(m.topic)
    assert order == ["t/2", "t/3"]


async def test_take_waits_for_a_message_and_wait_empty_for_the_ack() -> None:
    box = Outbox(10)
    taker = asyncio.create_task(box.take())
    await asyncio.sleep(0.01)
    assert not taker.done()
    box.put(message(7))
    m = await asyncio.wait_for(taker, 1.0)
    assert m.topic == "t/7"
    waiter = asyncio.create_task(box.wait_empty())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # in flight, not yet acknowledged
    box.acknowledge(m)
    await asyncio.wait_for(waiter, 1.0)
    with pytest.raises(RuntimeError, match="not in flight"):
        box.acknowledge(m)
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        Outbox(0)


def durable(i: int) -> OutgoingMessage:
    return OutgoingMessage(topic=f"t/{i}", payload=str(i).encode(), durable=True)


def stored_topics(ledger: Ledger) -> list[str]:
    return [m.topic for m in ledger.stored_messages()]


async def test_durable_messages_stay_in_the_ledger_until_acknowledged(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    box = Outbox(3, store=ledger)
    box.put(message(0))  # not durable (a status): memory only
    assert [box.put(durable(i)) for i in (1, 2, 3)] == [0, 0, 1]  # 0 dropped
    assert stored_topics(ledger) == ["t/1", "t/2", "t/3"]
    first = await box.take()
    box.acknowledge(first)
    assert stored_topics(ledger) == ["t/2", "t/3"]
    in_flight = await box.take()
    assert [box.put(durable(i)) for i in (4, 5)] == [0, 0]
    assert box.put(durable(6)) == 1  # t/3 dropped: out of the ledger too
    assert stored_topics(ledger) == ["t/2", "t/4", "t/5", "t/6"]
    # a kill here: the ledger holds the in-flight message and the queue
    assert box.discard_all() == 0  # at a clean exit they are kept, not lost
    assert stored_topics(ledger) == ["t/2", "t/4", "t/5", "t/6"]
    del in_flight

    # the next run: oldest first, ahead of new messages, within the capacity
    box = Outbox(3, store=ledger)
    box.put(durable(7))
    assert box.restore() == 2  # t/2 and t/4 are over the bound
    assert stored_topics(ledger) == ["t/5", "t/6", "t/7"]
    order = []
    while len(box):
        m = await box.take()
        assert m.row_id is not None
        assert m.durable
        box.acknowledge(m)
        order.append((m.topic, m.payload))
    assert order == [(f"t/{i}", str(i).encode()) for i in (5, 6, 7)]
    assert stored_topics(ledger) == []
    ledger.close()


async def test_a_failing_store_keeps_the_message_in_memory(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    box = Outbox(3, store=ledger)
    ledger.close()  # every write now raises sqlite3.ProgrammingError
    assert box.put(durable(1)) == 0
    m = await box.take()
    assert (m.topic, m.row_id) == ("t/1", None)
    box.acknowledge(m)
    assert box.restore() == 0
    assert len(box) == 0


def test_backoff_grows_exponentially_is_jittered_and_capped() -> None:
    settings = MqttSettings(host="h", reconnect_min_s=0.5, reconnect_max_s=30.0)
    rng = random.Random(3)
    delays = [
        [backoff_delay_s(a, settings, rng) for _ in range(200)] for a in range(10)
    ]
    for attempt, values in enumerate(delays):
        ceiling = min(30.0, 0.5 * 2**attempt)
        assert all(0.25 <= v <= ceiling for v in values)
        assert max(values) > 0.8 * ceiling  # reaches near the ceiling
        assert len(set(values)) == len(values)  # jittered, no lockstep reconnects
    assert max(delays[-1]) <= 30.0


def test_backoff_after_thousands_of_attempts_stays_at_the_cap() -> None:
    # 2.0**1024 overflows a float: a week-long outage must not stop the sender
    settings = MqttSettings(host="h", reconnect_min_s=0.5, reconnect_max_s=30.0)
    rng = random.Random(5)
    for attempt in (60, 1023, 1024, 5000, 10**6):
        assert 0.25 <= backoff_delay_s(attempt, settings, rng) <= 30.0


def test_topics_are_built_and_wildcards_refused() -> None:
    assert topic_for("s1", EventKind.STATUS) == "livestream/s1/status"
    assert topic_for("s1", EventKind.EXPOSURE, "E_1") == "livestream/s1/exposure/E_1"
    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(ValueError, match="session name"):
            topic_for(bad, EventKind.CLASS2D)


def test_stamped_events_round_trip_with_utc_times_and_schema() -> None:
    acquired = datetime(2026, 11, 22, 4, 5, 6, tzinfo=timezone(timedelta(hours=2)))
    payload = exposure_payload(
        "E1",
        acquired_utc=acquired,
        processed_utc=datetime(2026, 11, 22, 2, 6, 0, tzinfo=UTC),
        movie_path=Path("/session/Data/E1.tiff"),
        motion={"total_motion_a": 8.25},
        ctf={"defocus_u_a": 12000.0, "fit_resolution_a": float("nan")},
        particle_count=42,
        thumbnail_path=Path("/project/E1.png"),
        stages={"motion": "done", "ctf": "done"},
    )
    event = decode_event(encode_event(stamp_event(EventKind.EXPOSURE, "s1", payload)))
    assert event["schema"] == "livestream.exposure/1"
    assert event["session"] == "s1"
    assert event["acquired_utc"] == "2026-11-22T02:05:06+00:00"  # converted to UTC
    assert event["movie_path"] == "/session/Data/E1.tiff"
    assert event["ctf"] == {"defocus_u_a": 12000.0, "fit_resolution_a": None}
    assert len(event["message_id"]) == 32
    assert datetime.fromisoformat(event["published_utc"]).utcoffset() == timedelta(0)
    other = stamp_event(EventKind.EXPOSURE, "s1", payload)
    assert other["message_id"] != event["message_id"]


def test_status_payload_and_bad_values() -> None:
    status = stamp_event(
        EventKind.STATUS,
        "s1",
        status_payload(
            ServiceState.RUNNING,
            summary="12 done\n1 failed",
            exposures={"motion": {"done": 12, "failed": 1}},
        ),
    )
    assert status["state"] == "running"
    assert status["summary"] == "12 done 1 failed"
    assert status["exposures"] == {"motion": {"done": 12, "failed": 1}}
    with pytest.raises(TypeError, match=r"field 'status\.x'"):
        stamp_event(EventKind.STATUS, "s1", {"x": object()})
    with pytest.raises(ValueError, match="no 'schema' field"):
        decode_event(b'{"state": "running"}')
    with pytest.raises(ValueError, match="not JSON"):
        decode_event(b"offline")
