"""EventPublisher against a real mosquitto broker (see conftest.py).

QoS 1 is at-least-once: a subscriber may see a message twice after a reconnect, so
"exactly once" here means: every exposure arrives, and after dropping repeated
``message_id`` values each exposure id occurs once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt
import pytest

from livestream.ledger.store import Ledger
from livestream.telemetry.events import (
    ServiceState,
    decode_event,
    exposure_payload,
    status_payload,
)
from livestream.telemetry.metrics import ServiceMetrics
from livestream.telemetry.mqtt import EventPublisher, MqttSettings
from tests.livestream.conftest import MosquittoBroker, free_port

REPO = Path(__file__).resolve().parents[3]
SESSION = "krios1-grid3"
# Short reconnect delays and PUBACK wait keep the tests fast.
FAST = MqttSettings(reconnect_min_s=0.05, reconnect_max_s=0.4, publish_timeout_s=2.0)

Received = list[tuple[str, dict[str, object], bool]]


def settings_for(broker: MosquittoBroker) -> MqttSettings:
    return dataclasses.replace(FAST, host=broker.host, port=broker.port)


def exposure(i: int) -> dict[str, object]:
    return exposure_payload(
        f"FoilHole_{i}_Data_1",
        acquired_utc=datetime(2026, 11, 22, 3, 0, i % 60, tzinfo=UTC),
        processed_utc=datetime.now(UTC),
        motion={"total_motion_a": 12.5},
        ctf={"defocus_u_a": 15000.0, "defocus_v_a": 14000.0, "fit_resolution_a": 3.4},
        particle_count=100 + i,
        thumbnail_path=f"/project/Thumbnails/FoilHole_{i}_Data_1.png",
    )


async def subscribe(
    broker: MosquittoBroker,
    topic: str,
    sink: Received,
    ready: asyncio.Event,
    *,
    identifier: str | None = None,
) -> None:
    """Collect messages; with an identifier, keep a persistent session and reconnect."""
    while True:
        try:
            async with aiomqtt.Client(
                broker.host,
                broker.port,
                identifier=identifier,
                clean_session=identifier is None,
            ) as client:
                await client.subscribe(topic, qos=1)
                ready.set()
                async for message in client.messages:
                    assert isinstance(message.payload, bytes)
                    sink.append(
                        (
                            str(message.topic),
                            json.loads(message.payload),
                            message.retain,
                        )
                    )
        except aiomqtt.MqttError:
            if identifier is None:
                raise
            await asyncio.sleep(0.05)


async def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.02)


async def stop(task: asyncio.Task[None]) -> None:
    """Cancel a subscriber and wait until its client has closed its socket."""
    task.cancel()
    await asyncio.wait([task])


def exposure_ids(sink: Received) -> list[str]:
    """Exposure ids in arrival order, repeated message ids (QoS 1 resends) removed."""
    seen: set[str] = set()
    ids = []
    for topic, payload, _ in sink:
        if "/exposure/" in topic and payload["message_id"] not in seen:
            seen.add(str(payload["message_id"]))
            ids.append(str(payload["exposure_id"]))
    return ids


async def test_subscriber_sees_every_exposure_once_and_the_retained_status(
    mosquitto_broker: MosquittoBroker,
) -> None:
    sink: Received = []
    ready = asyncio.Event()
    n = 40
    async with asyncio.TaskGroup() as tg:
        sub = tg.create_task(
            subscribe(mosquitto_broker, f"livestream/{SESSION}/#", sink, ready)
        )
        await ready.wait()
        async with EventPublisher(settings_for(mosquitto_broker), SESSION) as publisher:
            await publisher.publish_status(
                status_payload(ServiceState.RUNNING, summary="0 done")
            )
            for i in range(n):
                await publisher.publish_exposure(f"FoilHole_{i}_Data_1", exposure(i))
            assert await publisher.flush(5.0)
            assert publisher.outbox_depth == 0
        await wait_for(lambda: len(exposure_ids(sink)) == n and len(sink) >= n + 2)
        await stop(sub)

    ids = exposure_ids(sink)
    assert ids == [f"FoilHole_{i}_Data_1" for i in range(n)]  # all, in order, once
    first = next(p for t, p, _ in sink if "/exposure/" in t)
    assert first["schema"] == "livestream.exposure/1"
    assert first["session"] == SESSION
    assert first["particle_count"] == 100
    assert first["ctf"] == {
        "defocus_u_a": 15000.0,
        "defocus_v_a": 14000.0,
        "fit_resolution_a": 3.4,
    }
    assert datetime.fromisoformat(str(first["acquired_utc"])).utcoffset() is not None
    states = [p["state"] for t, p, _ in sink if t.endswith("/status")]
    assert states == ["running", "stopped"]

    # A late subscriber gets the retained status: the clean exit left "stopped".
    late: Received = []
    late_ready = asyncio.Event()
    task = asyncio.create_task(
        subscribe(mosquitto_broker, f"livestream/{SESSION}/status", late, late_ready)
    )
    await wait_for(lambda: len(late) == 1, 5.0)
    await stop(task)
    _topic, payload, retained = late[0]
    assert retained
    assert payload["state"] == "stopped"
    assert payload["schema"] == "livestream.status/1"


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from livestream.telemetry.events import ServiceState, status_payload
    from livestream.telemetry.mqtt import EventPublisher, MqttSettings

    async def main() -> None:
        settings = MqttSettings(host=sys.argv[1], port=int(sys.argv[2]), keepalive_s=60)
        async with EventPublisher(settings, sys.argv[3]) as publisher:
            await publisher.publish_status(status_payload(ServiceState.RUNNING))
            assert await publisher.flush(10.0)
            print("published", flush=True)
            await asyncio.Event().wait()

    asyncio.run(main())
    """
)


async def test_last_will_marks_a_killed_publisher_offline(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    script = tmp_path / "publisher.py"
    script.write_text(CHILD)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen(
        [
            sys.executable,
            str(script),
            mosquitto_broker.host,
            str(mosquitto_broker.port),
            SESSION,
        ],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert child.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 20)
        assert line.strip() == b"published"
        sink: Received = []
        ready = asyncio.Event()
        topic = f"livestream/{SESSION}/status"
        task = asyncio.create_task(subscribe(mosquitto_broker, topic, sink, ready))
        await wait_for(lambda: len(sink) == 1, 5.0)
        assert sink[0][1]["state"] == "running"
        assert sink[0][2]
        child.send_signal(signal.SIGKILL)  # no DISCONNECT: the broker sends the will
        await wait_for(lambda: len(sink) == 2, 5.0)
        await stop(task)
        assert sink[1][1]["state"] == "offline"
        assert sink[1][1]["schema"] == "livestream.status/1"
        assert sink[1][1]["session"] == SESSION
    finally:
        child.kill()
        child.wait()
        if child.stdout is not None:
            child.stdout.close()

    late: Received = []
    task = asyncio.create_task(
        subscribe(mosquitto_broker, topic, late, asyncio.Event())
    )
    await wait_for(lambda: len(late) == 1, 5.0)
    await stop(task)
    assert late[0][1]["state"] == "offline"
    assert late[0][2]


async def test_broker_restart_loses_nothing(
    persistent_mosquitto_broker: MosquittoBroker,
) -> None:
    broker = persistent_mosquitto_broker
    sink: Received = []
    ready = asyncio.Event()
    metrics = ServiceMetrics()
    sub = asyncio.create_task(
        subscribe(
            broker, f"livestream/{SESSION}/exposure/#", sink, ready, identifier="sub-1"
        )
    )
    await ready.wait()
    async with EventPublisher(
        settings_for(broker), SESSION, metrics=metrics
    ) as publisher:
        for i in range(10):
            await publisher.publish_exposure(f"FoilHole_{i}_Data_1", exposure(i))
        assert await publisher.flush(5.0)
        await wait_for(lambda: len(exposure_ids(sink)) == 10)

        broker.stop()
        for i in range(10, 30):  # queued in the outbox while the broker is down
            await publisher.publish_exposure(f"FoilHole_{i}_Data_1", exposure(i))
        await asyncio.sleep(0.5)
        assert publisher.outbox_depth == 20
        assert (
            metrics.registry.get_sample_value("livestream_mqtt_outbox_messages") == 20
        )

        broker.start()
        assert await publisher.flush(10.0), "outbox not drained after the restart"
        for i in range(30, 40):
            await publisher.publish_exposure(f"FoilHole_{i}_Data_1", exposure(i))
        assert await publisher.flush(5.0)
        await wait_for(lambda: len(set(exposure_ids(sink))) == 40)
    await stop(sub)

    ids = exposure_ids(sink)
    expected = [f"FoilHole_{i}_Data_1" for i in range(40)]
    assert sorted(ids, key=lambda s: int(s.split("_")[1])) == expected
    assert len(ids) == len(set(ids)), "an exposure arrived twice under two message ids"
    assert (
        metrics.registry.get_sample_value("livestream_mqtt_dropped_messages_total") == 0
    )


async def test_outbox_overflow_is_counted_never_silent() -> None:
    metrics = ServiceMetrics()
    # Nothing listens on the port: the broker stays unreachable.
    settings = dataclasses.replace(
        FAST, host="127.0.0.1", port=free_port(), outbox_size=5, drain_timeout_s=0.2
    )
    async with EventPublisher(settings, SESSION, metrics=metrics) as publisher:
        for i in range(12):
            await publisher.publish_exposure(f"FoilHole_{i}_Data_1", exposure(i))
        assert publisher.outbox_depth == 5
        dropped = metrics.registry.get_sample_value(
            "livestream_mqtt_dropped_messages_total"
        )
        assert dropped == 7
    # Nothing ever reached a broker: at exit the 5 queued + the "stopped" status are
    # undelivered (the status overflowed one more), and every one of them is counted.
    dropped = metrics.registry.get_sample_value(
        "livestream_mqtt_dropped_messages_total"
    )
    assert dropped == 13
    assert metrics.registry.get_sample_value("livestream_mqtt_outbox_messages") == 0


async def test_a_new_publisher_sends_what_a_killed_one_left_in_the_ledger(
    tmp_path: Path, mosquitto_broker: MosquittoBroker
) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    # the first run never reaches a broker (nothing listens on its port)
    unreachable = dataclasses.replace(
        FAST, host="127.0.0.1", port=free_port(), drain_timeout_s=0.2
    )
    async with EventPublisher(unreachable, SESSION, store=ledger) as publisher:
        for i in range(5):
            await publisher.publish_exposure(f"FoilHole_{i}_Data_1", exposure(i))
        await publisher.publish_class2d({"iteration": 3})
        await publisher.publish_status(status_payload(ServiceState.RUNNING))
        assert publisher.outbox_depth == 7
    left = [(m.topic, decode_event(m.payload)) for m in ledger.stored_messages()]
    exposure_topic = f"livestream/{SESSION}/exposure/FoilHole_%d_Data_1"
    assert [topic for topic, _ in left] == [
        *(exposure_topic % i for i in range(5)),
        f"livestream/{SESSION}/class2d",
    ]  # the statuses are not kept: a new run publishes its own

    sink: Received = []
    ready = asyncio.Event()
    sub = asyncio.create_task(
        subscribe(mosquitto_broker, f"livestream/{SESSION}/#", sink, ready)
    )
    await ready.wait()
    metrics = ServiceMetrics()
    bounded = dataclasses.replace(settings_for(mosquitto_broker), outbox_size=4)
    async with EventPublisher(
        bounded, SESSION, metrics=metrics, store=ledger
    ) as publisher:
        assert await publisher.flush(5.0)
        assert ledger.stored_messages() == []  # deleted on the PUBACK
        await wait_for(lambda: len(exposure_ids(sink)) == 3)
    await stop(sub)
    # the two oldest were over the bound: dropped and counted, as at run time
    assert (
        metrics.registry.get_sample_value("livestream_mqtt_dropped_messages_total") == 2
    )
    received = {
        str(payload["message_id"]): topic
        for topic, payload, _ in sink
        if not topic.endswith("/status")
    }
    assert received == {
        str(payload["message_id"]): topic for topic, payload in left[2:]
    }
    ledger.close()


async def test_disabled_publisher_accepts_calls_and_still_checks_payloads(
    tmp_path: Path,
) -> None:
    ledger = Ledger(tmp_path / "livestream.sqlite")
    async with EventPublisher(MqttSettings(), SESSION, store=ledger) as publisher:
        assert not publisher.enabled
        await publisher.publish_status(status_payload(ServiceState.RUNNING))
        await publisher.publish_exposure("E1", exposure(1))
        await publisher.publish_class2d({"n_classes": 50, "n_particles": 1000})
        assert publisher.outbox_depth == 0
        assert await publisher.flush(0.1)
        with pytest.raises(ValueError, match="naive datetime"):
            await publisher.publish_exposure(
                "E2", {"processed_utc": datetime(2026, 1, 1)}
            )
        with pytest.raises(ValueError, match="exposure id 'a/b'"):
            await publisher.publish_exposure("a/b", exposure(1))
    assert ledger.stored_messages() == []  # without a broker nothing is stored
    ledger.close()


async def retained_status(broker: MosquittoBroker) -> dict[str, object]:
    sink: Received = []
    task = asyncio.create_task(
        subscribe(broker, f"livestream/{SESSION}/status", sink, asyncio.Event())
    )
    await wait_for(lambda: len(sink) == 1, 5.0)
    await stop(task)
    assert sink[0][2]  # retained
    return sink[0][1]


async def test_final_status_with_counts_is_kept_and_a_crash_leaves_offline(
    mosquitto_broker: MosquittoBroker,
) -> None:
    settings = settings_for(mosquitto_broker)
    async with EventPublisher(settings, SESSION) as publisher:
        final = status_payload(ServiceState.STOPPED, exposures={"ctf": {"done": 5}})
        await publisher.publish_status(final)
    status = await retained_status(mosquitto_broker)
    assert status["state"] == "stopped"
    assert status["exposures"] == {"ctf": {"done": 5}}  # not overwritten at exit

    with pytest.raises(KeyError, match="boom"):  # noqa: PT012 (unwrapped)
        async with EventPublisher(settings, SESSION) as publisher:
            await publisher.publish_status(status_payload(ServiceState.RUNNING))
            raise KeyError("boom")
    status = await retained_status(mosquitto_broker)
    assert status["state"] == "offline"
    assert status["summary"] == "service ended by KeyError"


async def test_cancellation_is_reraised_and_leaves_offline(
    mosquitto_broker: MosquittoBroker,
) -> None:
    started = asyncio.Event()

    async def service() -> None:
        async with EventPublisher(settings_for(mosquitto_broker), SESSION) as publisher:
            await publisher.publish_status(status_payload(ServiceState.RUNNING))
            assert await publisher.flush(5.0)
            started.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(service())
    await started.wait()
    await stop(task)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 3.0)
    status = await retained_status(mosquitto_broker)
    assert status["state"] == "offline"
    assert status["summary"] == "service ended by CancelledError"
