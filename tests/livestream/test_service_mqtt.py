"""The whole service against a real mosquitto broker, stopped mid-session.

Exposures keep arriving while the broker is down; the service keeps processing,
its outbox holds the events, and after the broker comes back a subscriber has every
exposure exactly once (after dropping QoS 1 resends by ``message_id``) and the
retained status says ``stopped`` after a clean exit.  A daemon SIGKILLed while the
broker is down delivers the events it held after its restart (the outbox is durable).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
from pathlib import Path

import pytest

from livestream.daemon import run_service
from livestream.telemetry.reporting import EventType, ServiceEvent
from tests.livestream.conftest import MosquittoBroker
from tests.livestream.service_fixtures import (
    count_states,
    ledger_rows,
    service_config,
    start_service,
    write_config_file,
    write_session,
)
from tests.livestream.telemetry.test_mqtt import (
    Received,
    exposure_ids,
    stop,
    subscribe,
    wait_for,
)


async def test_events_survive_a_broker_outage_during_a_live_session(
    tmp_path: Path, persistent_mosquitto_broker: MosquittoBroker
) -> None:
    broker = persistent_mosquitto_broker
    session, movies, microscope = write_session(tmp_path, 3)
    project = tmp_path / "project"
    config = service_config(
        session, movies, project, mqtt={"host": broker.host, "port": broker.port}
    )
    topic_session = session.name
    sink: Received = []
    ready = asyncio.Event()
    subscriber = asyncio.create_task(
        subscribe(
            broker, f"livestream/{topic_session}/#", sink, ready, identifier="ops"
        )
    )
    await asyncio.wait_for(ready.wait(), 10)

    finished: set[str] = set()

    def listen(event: ServiceEvent) -> None:
        if event.type is EventType.EXPOSURE_DONE:
            finished.add(event.exposure_id)

    stop_service = asyncio.Event()
    service = asyncio.create_task(
        run_service(
            config,
            stop=stop_service,
            listeners=(listen,),
            install_signal_handlers=False,
        )
    )
    try:
        await wait_for(lambda: len(set(exposure_ids(sink))) == 3, 30)
        broker.stop()
        for index in range(3, 6):  # the microscope goes on while the broker is down
            microscope.acquire(index)
        await wait_for(lambda: len(finished) == 6, 30)
        assert len(set(exposure_ids(sink))) == 3  # nothing could be delivered
        broker.start()
        await wait_for(lambda: len(set(exposure_ids(sink))) == 6, 40)
    finally:
        stop_service.set()
        assert await service == 0

    ids = exposure_ids(sink)
    assert sorted(ids) == sorted(finished)
    assert len(ids) == len(set(ids)) == 6  # each exposure exactly once
    processed = {
        e
        for (e, stage), (state, _, _) in ledger_rows(project).items()
        if stage == "second" and state == "done"
    }
    assert processed == finished

    await wait_for(
        lambda: any(
            topic.endswith("/status") and payload.get("state") == "stopped"
            for topic, payload, _ in sink
        ),
        10,
    )
    await stop(subscriber)


@pytest.mark.slow
async def test_events_held_during_an_outage_survive_a_sigkill_of_the_daemon(
    tmp_path: Path, persistent_mosquitto_broker: MosquittoBroker
) -> None:
    broker = persistent_mosquitto_broker
    session, movies, microscope = write_session(tmp_path, 3)
    project = tmp_path / "project"
    config = service_config(
        session, movies, project, mqtt={"host": broker.host, "port": broker.port}
    )
    config_file = write_config_file(tmp_path / "live.toml", config)
    log = tmp_path / "service.log"
    # a persistent session on a persistent broker: the count measures the service
    sink: Received = []
    ready = asyncio.Event()
    subscriber = asyncio.create_task(
        subscribe(broker, f"livestream/{session.name}/#", sink, ready, identifier="ops")
    )
    await asyncio.wait_for(ready.wait(), 10)
    n_rows = 1 + len(config.stages.chain)  # import + the chain, per exposure

    def n_done() -> int:
        return count_states(project).get("done", 0)

    process = start_service(config_file, log)
    try:
        await wait_for(lambda: len(set(exposure_ids(sink))) == 3, 60)
        broker.stop()
        for index in range(3, 6):  # finished while the broker is down ...
            microscope.acquire(index)
        await wait_for(lambda: n_done() == 6 * n_rows, 60)
        await asyncio.sleep(0.5)  # past the ledger's commit, into the outbox
        os.killpg(process.pid, signal.SIGKILL)  # ... and held only by the daemon
        process.wait()
        assert len(set(exposure_ids(sink))) == 3
        process = start_service(config_file, log)
        broker.start()
        await wait_for(lambda: len(set(exposure_ids(sink))) == 6, 60)
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        microscope.close()
        await stop(subscriber)
    ids = exposure_ids(sink)  # resends (same message_id) dropped
    assert len(ids) == len(set(ids)) == 6  # each exposure once, after a dedup
    with sqlite3.connect(project / "livestream.sqlite") as db:
        left = db.execute("SELECT count(*) FROM outbox").fetchone()
    db.close()
    assert left == (0,)  # every stored event was acknowledged, then deleted
