"""The sd_notify protocol against a real AF_UNIX datagram socket."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from livestream.telemetry.systemd_notify import Notifier


@pytest.fixture
def manager_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket standing in for systemd's notify socket."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(2.0)
        yield sock, str(path)


def receive(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_messages_are_the_exact_protocol_datagrams(
    manager_socket: tuple[socket.socket, str],
) -> None:
    sock, path = manager_socket
    notifier = Notifier.from_env({"NOTIFY_SOCKET": path})
    assert notifier.enabled
    assert notifier.ready()
    assert receive(sock) == b"READY=1"
    assert notifier.status("motion 12 done,\n ctf 11 done  (3.2 Å)")
    assert receive(sock) == "STATUS=motion 12 done, ctf 11 done (3.2 Å)".encode()
    assert notifier.watchdog()
    assert receive(sock) == b"WATCHDOG=1"
    assert notifier.extend_timeout(90.5)
    assert receive(sock) == b"EXTEND_TIMEOUT_USEC=90500000"
    assert notifier.stopping()
    assert receive(sock) == b"STOPPING=1"


def test_abstract_socket_names_are_supported() -> None:
    name = f"livestream-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2.0)
        notifier = Notifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert receive(sock) == b"WATCHDOG=1"


def test_no_socket_means_no_op_and_a_gone_socket_is_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    off = Notifier.from_env({})
    assert not off.enabled
    assert off.ready() is False
    assert off.watchdog_interval_s() is None
    gone = Notifier.from_env({"NOTIFY_SOCKET": str(tmp_path / "missing.sock")})
    assert gone.ready() is False
    assert "sd_notify to" in caplog.text
    assert "missing.sock" in caplog.text
    with pytest.raises(ValueError, match="relative"):
        Notifier("relative")


def test_watchdog_interval_applies_only_to_the_named_process() -> None:
    mine = {"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "60000000"}
    assert Notifier.from_env(mine).watchdog_interval_s() == 60.0
    assert Notifier.from_env(mine).watchdog_ping_period_s() == 30.0
    pid_ok = {**mine, "WATCHDOG_PID": str(os.getpid())}
    assert Notifier.from_env(pid_ok).watchdog_interval_s() == 60.0
    other = {**mine, "WATCHDOG_PID": str(os.getpid() + 1)}
    assert Notifier.from_env(other).watchdog_interval_s() is None
    garbage = {**mine, "WATCHDOG_USEC": "soon"}
    assert Notifier.from_env(garbage).watchdog_interval_s() is None
