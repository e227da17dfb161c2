"""MQTT event throughput and latency through EventPublisher, against a real broker.

    .venv/bin/python benchmarks/bench_events.py [--small]

Starts mosquitto on a free loopback port, subscribes to the session's exposure
topic, publishes N exposure events through :class:`livestream.telemetry.mqtt.EventPublisher`
(stamp + JSON + outbox + QoS 1 with PUBACK) and reports messages per second and the
latency from ``publish_exposure`` to the subscriber. The lower bound, measured in
the same run: a bare aiomqtt client publishing the same pre-encoded payloads with
QoS 1, one PUBACK at a time, as the publisher's sender does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import aiomqtt

from livestream.telemetry.events import (
    EventKind,
    encode_event,
    exposure_payload,
    stamp_event,
)
from livestream.telemetry.metrics import ServiceMetrics
from livestream.telemetry.mqtt import EventPublisher, MqttSettings

SESSION = "bench"


def start_broker(folder: Path) -> tuple[subprocess.Popen[bytes], int]:
    executable = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.access(executable, os.X_OK):
        sys.exit("bench_events: mosquitto is not installed")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = folder / "mosquitto.conf"
    lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false"]
    if os.geteuid() == 0:
        lines.append("user root")
    config.write_text("\n".join(lines) + "\n")
    process = subprocess.Popen(
        [executable, "-c", str(config)], stderr=subprocess.DEVNULL
    )
    for _ in range(500):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process, port
        except OSError:
            time.sleep(0.01)
    process.kill()
    sys.exit("bench_events: mosquitto did not start")


def payload(i: int) -> dict[str, object]:
    return exposure_payload(
        f"FoilHole_{i}_Data_1",
        acquired_utc=datetime.now(UTC),
        processed_utc=datetime.now(UTC),
        motion={"total_motion_a": 12.5, "early_motion_a": 8.0},
        ctf={"defocus_u_a": 15000.0, "defocus_v_a": 14000.0, "fit_resolution_a": 3.4},
        particle_count=300,
        thumbnail_path=f"/project/Thumbnails/FoilHole_{i}_Data_1.png",
    )


async def receive(
    port: int, n: int, arrivals: dict[str, float], ready: asyncio.Event
) -> None:
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"livestream/{SESSION}/exposure/#", qos=1)
        ready.set()
        async for message in client.messages:
            assert isinstance(message.payload, bytes)
            arrivals.setdefault(
                json.loads(message.payload)["exposure_id"], time.perf_counter()
            )
            if len(arrivals) == n:
                return


async def through_publisher(port: int, n: int) -> tuple[float, list[float]]:
    arrivals: dict[str, float] = {}
    sent: dict[str, float] = {}
    ready = asyncio.Event()
    receiver = asyncio.create_task(receive(port, n, arrivals, ready))
    await ready.wait()
    settings = MqttSettings(host="127.0.0.1", port=port, outbox_size=n + 10)
    async with EventPublisher(settings, SESSION, metrics=ServiceMetrics()) as publisher:
        await publisher.connected.wait()
        start = time.perf_counter()
        for i in range(n):
            exposure_id = f"FoilHole_{i}_Data_1"
            sent[exposure_id] = time.perf_counter()
            await publisher.publish_exposure(exposure_id, payload(i))
            if i % 50 == 49:
                await asyncio.sleep(0)  # a live service publishes between other work
        await receiver
        elapsed = time.perf_counter() - start
    latencies = [arrivals[k] - sent[k] for k in sent]
    return elapsed, latencies


async def paced_latency(port: int, n: int) -> list[float]:
    """One message at a time: latency of publish_exposure -> subscriber, no queue."""
    arrived: asyncio.Queue[float] = asyncio.Queue()
    ready = asyncio.Event()

    async def listen() -> None:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe(f"livestream/{SESSION}/exposure/#", qos=1)
            ready.set()
            async for _ in client.messages:
                arrived.put_nowait(time.perf_counter())

    listener = asyncio.create_task(listen())
    await ready.wait()
    latencies = []
    settings = MqttSettings(host="127.0.0.1", port=port)
    async with EventPublisher(settings, SESSION) as publisher:
        await publisher.connected.wait()
        for i in range(n):
            start = time.perf_counter()
            await publisher.publish_exposure(f"FoilHole_{i}_Data_1", payload(i))
            latencies.append(await arrived.get() - start)
    listener.cancel()
    await asyncio.wait([listener])
    return latencies


async def bare_client(port: int, n: int) -> float:
    data = [
        encode_event(stamp_event(EventKind.EXPOSURE, SESSION, payload(i)))
        for i in range(n)
    ]
    arrivals: dict[str, float] = {}
    ready = asyncio.Event()
    receiver = asyncio.create_task(receive(port, n, arrivals, ready))
    await ready.wait()
    async with aiomqtt.Client("127.0.0.1", port) as client:
        start = time.perf_counter()
        for i, body in enumerate(data):
            await client.publish(
                f"livestream/{SESSION}/exposure/FoilHole_{i}_Data_1", body, qos=1
            )
        await receiver
        return time.perf_counter() - start


async def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        broker, port = start_broker(Path(tmp))
        try:
            bound_s = await bare_client(port, n)
            elapsed_s, latencies = await through_publisher(port, n)
            paced = await paced_latency(port, 200)
        finally:
            broker.terminate()
            broker.wait()
    quantiles = statistics.quantiles(latencies, n=100)
    print(f"events: {n} exposure messages, QoS 1, loopback mosquitto")
    print(f"  EventPublisher : {n / elapsed_s:9.0f} messages/s ({elapsed_s:.2f} s)")
    print(
        f"  bare aiomqtt   : {n / bound_s:9.0f} messages/s ({bound_s:.2f} s, lower bound)"
    )
    print(f"  ratio          : {elapsed_s / bound_s:.2f}x the lower bound's time")
    print(
        f"  latency, all queued at once: median {quantiles[49] * 1e3:.1f} ms,"
        f" p99 {quantiles[98] * 1e3:.1f} ms (mostly waiting in the outbox)"
    )
    paced_q = statistics.quantiles(paced, n=100)
    print(
        f"  latency, one at a time (200): median {paced_q[49] * 1e3:.2f} ms,"
        f" p99 {paced_q[98] * 1e3:.2f} ms (publish_exposure -> subscriber)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--small", action="store_true", help="500 messages instead of 5000"
    )
    args = parser.parse_args()
    asyncio.run(main(500 if args.small else 5000))
