"""EventPublisher over TLS with a password, against a real mosquitto broker.

A throw-away CA and server certificate (for 127.0.0.1) are made with openssl, the
password file with mosquitto_passwd.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest

from livestream.telemetry.events import ServiceState, status_payload
from livestream.telemetry.metrics import ServiceMetrics
from livestream.telemetry.mqtt import EventPublisher, MqttSettings
from tests.livestream.conftest import MosquittoBroker, require_tool, running_broker

SESSION = "tls-session"


def make_certificates(folder: Path) -> None:
    openssl = require_tool("openssl")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    req = [openssl, "req", *ec]
    sign = [openssl, "x509", "-req", "-days", "2", "-CA", "ca.crt", "-CAkey", "ca.key"]
    commands = [
        [*req, "-x509", "-keyout", "ca.key", "-out", "ca.crt", "-subj", "/CN=test CA"],
        [*req, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        [*sign, "-in", "server.csr", "-out", "server.crt", "-extfile", "san.cnf"],
    ]
    (folder / "san.cnf").write_text("subjectAltName=IP:127.0.0.1\n")
    for command in commands:
        subprocess.run(command, cwd=folder, check=True, capture_output=True)
    (folder / "server.key").chmod(0o644)  # mosquitto may run as another user


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    folder = tmp_path / "tls"
    folder.mkdir()
    make_certificates(folder)
    passwd = require_tool("mosquitto_passwd", "/usr/bin/mosquitto_passwd")
    subprocess.run(
        [passwd, "-b", "-c", str(folder / "passwd"), "krios1", "s3cret"],
        check=True,
        capture_output=True,
    )
    (folder / "passwd").chmod(0o644)
    yield from running_broker(
        tmp_path,
        extra_config=[
            "allow_anonymous false",
            f"password_file {folder / 'passwd'}",
            f"cafile {folder / 'ca.crt'}",
            f"certfile {folder / 'server.crt'}",
            f"keyfile {folder / 'server.key'}",
        ],
    )


def tls_settings(broker: MosquittoBroker, password: str) -> MqttSettings:
    return MqttSettings(
        host=broker.host,
        port=broker.port,
        tls=True,
        ca_file=str(broker.folder.parent / "tls" / "ca.crt"),
        username="krios1",
        password=password,
        reconnect_min_s=0.05,
        reconnect_max_s=0.2,
    )


async def test_publishes_over_tls_with_credentials(tls_broker: MosquittoBroker) -> None:
    settings = tls_settings(tls_broker, "s3cret")
    async with EventPublisher(settings, SESSION) as publisher:
        await publisher.publish_status(status_payload(ServiceState.RUNNING))
        assert await publisher.flush(10.0)
    assert settings.ca_file is not None
    async with aiomqtt.Client(
        tls_broker.host,
        tls_broker.port,
        username="krios1",
        password="s3cret",
        tls_context=ssl.create_default_context(cafile=settings.ca_file),
    ) as client:
        await client.subscribe(f"livestream/{SESSION}/status", qos=1)
        async with asyncio.timeout(5):
            message = await anext(aiter(client.messages))
    assert isinstance(message.payload, bytes)
    assert json.loads(message.payload)["state"] == "stopped"
    assert message.retain


async def test_wrong_password_keeps_messages_and_counts_them_at_exit(
    tls_broker: MosquittoBroker,
) -> None:
    metrics = ServiceMetrics()
    settings = dataclasses.replace(
        tls_settings(tls_broker, "wrong"), drain_timeout_s=0.1
    )
    async with EventPublisher(settings, SESSION, metrics=metrics) as publisher:
        await publisher.publish_exposure("E1", {"particle_count": 1})
        assert not await publisher.flush(0.5)  # refused, retried, still queued
        assert not publisher.connected.is_set()
        assert publisher.outbox_depth == 1
    # E1 and the final status were never delivered: both are counted.
    get = metrics.registry.get_sample_value
    assert get("livestream_mqtt_dropped_messages_total") == 2


async def test_unreadable_ca_file_is_named() -> None:
    settings = MqttSettings(host="127.0.0.1", tls=True, ca_file="/nonexistent/ca.crt")
    with pytest.raises(ValueError, match=r"ca_file '/nonexistent/ca\.crt'"):
        async with EventPublisher(settings, SESSION):
            pass
