"""Fixtures for the live service: a real mosquitto broker on a free loopback port.

``mosquitto_broker`` starts ``mosquitto`` (PATH or /usr/sbin) with a generated config
(``listener <port> 127.0.0.1``, anonymous, no persistence unless asked) and stops it at
the end; ``broker.stop()`` / ``broker.start()`` restart it on the same port mid-test.
Missing mosquitto skips the test with the reason outside CI and fails it in CI.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_tool(name: str, *fallbacks: str) -> str:
    """Path of a tool; skip (outside CI) or fail (in CI) with the reason if missing."""
    found = shutil.which(name)
    for candidate in fallbacks:
        if found is None and os.access(candidate, os.X_OK):
            found = candidate
    if found is None:
        message = f"{name} is not installed (apt-get install it; .ci/run does)"
        if in_ci():
            pytest.fail(f"{message}; CI must have it")
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class MosquittoBroker:
    """A mosquitto process bound to ``host:port``; restartable on the same port."""

    def __init__(
        self,
        executable: str,
        folder: Path,
        *,
        persistence: bool,
        extra_config: Sequence[str] = (),
    ) -> None:
        self.executable = executable
        self.folder = folder
        self.host = "127.0.0.1"
        self.port = free_port()
        self.log_path = folder / "mosquitto.log"
        self.config_path = folder / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            *(extra_config or ["allow_anonymous true"]),
            f"persistence {'true' if persistence else 'false'}",
            f"persistence_location {folder}/",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            lines.append(f"user {getpass.getuser()}")  # do not drop to 'mosquitto'
        self.config_path.write_text("\n".join(lines) + "\n")
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout_s: float = 10.0) -> None:
        if self.running:
            raise RuntimeError("mosquitto is already running")
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.executable, "-c", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode}: "
                    f"{self.log_path.read_text()[-2000:]}"
                )
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"mosquitto did not listen on {self.port} in {timeout_s} s")

    def stop(self) -> None:
        """SIGTERM and wait (mosquitto writes its persistence file, if any)."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        self.stop()
        self.start()


def running_broker(
    tmp_path: Path, *, persistence: bool = False, extra_config: Sequence[str] = ()
) -> Iterator[MosquittoBroker]:
    """Start a broker in ``tmp_path/mosquitto``; ``extra_config`` replaces the
    anonymous access line (listener options such as TLS and passwords)."""
    executable = require_tool("mosquitto", "/usr/sbin/mosquitto")
    folder = tmp_path / "mosquitto"
    folder.mkdir()
    broker = MosquittoBroker(
        executable, folder, persistence=persistence, extra_config=extra_config
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """A running broker without persistence: ``.host``, ``.port``, ``.stop()``, ``.start()``."""
    yield from running_broker(tmp_path)


@pytest.fixture
def persistent_mosquitto_broker(tmp_path: Path) -> Iterator[MosquittoBroker]:
    """Like ``mosquitto_broker`` but keeps sessions (queued QoS 1) across restarts."""
    yield from running_broker(tmp_path, persistence=True)
