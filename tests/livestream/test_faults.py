"""Faults of the environment (issue #11, part 2): a full project disk, a killed
daemon's workers and attempts, a missing MQTT password file."""

from __future__ import annotations

import logging
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from livestream.config import ConfigError, load_config
from livestream.telemetry.mqtt import EventPublisher, MqttSettings
from tests.livestream.conftest import free_port
from tests.livestream.service_fixtures import (
    count_states,
    service_config,
    start_service,
    wait_for,
    write_config_file,
    write_session,
)

PROC = Path("/proc")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 = state)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def session_members(session_id: int) -> dict[int, str]:
    """Processes of the session ``session_id`` -> their start time (pid reuse)."""
    members = {}
    for entry in PROC.iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            # state ppid pgrp session ... starttime is field 22 (index 19 here)
            if fields is not None and int(fields[3]) == session_id:
                members[int(entry.name)] = fields[19]
    return members


def survivors(members: dict[int, str]) -> list[int]:
    alive = []
    for pid, started in members.items():
        fields = _stat_fields(pid)
        if fields is not None and fields[19] == started and fields[0] != "Z":
            alive.append(pid)
    return alive


@pytest.fixture
def service_processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Daemons started by a test; whatever is left of them is killed at the end."""
    processes: list[subprocess.Popen[bytes]] = []
    yield processes
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        for pid in survivors(session_members(process.pid)):
            os.kill(pid, signal.SIGKILL)


# -- MQTT credentials --------------------------------------------------------------
def test_missing_password_file_is_a_config_error_naming_key_and_file(
    tmp_path: Path,
) -> None:
    missing = tmp_path / "no-such-password"
    path = tmp_path / "live.toml"
    path.write_text(f'[mqtt]\nhost = "broker"\npassword_file = "{missing}"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "'mqtt.password_file'" in message
    assert str(missing) in message
    assert str(path) in message


def test_readable_password_file_is_accepted(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text("s3cret\n")
    config = load_config(None, {"mqtt": {"host": "b", "password_file": secret}})
    assert config.mqtt.password_file == secret


async def test_password_without_tls_warns_once_naming_the_broker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = free_port()  # nothing listens: the message stays queued
    settings = MqttSettings(
        host="127.0.0.1",
        port=port,
        username="krios1",
        password="s3cret",
        reconnect_min_s=0.05,
        reconnect_max_s=0.1,
        drain_timeout_s=0.05,
    )
    with caplog.at_level(logging.WARNING, logger="livestream.telemetry.mqtt"):
        async with EventPublisher(settings, "session"):
            pass
    warnings = [
        r.getMessage() for r in caplog.records if "unencrypted" in r.getMessage()
    ]
    assert len(warnings) == 1, warnings
    assert f"127.0.0.1:{port}" in warnings[0]
    assert "s3cret" not in warnings[0]


async def test_password_over_tls_or_no_password_does_not_warn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = MqttSettings(
        host="127.0.0.1", port=free_port(), username="krios1", drain_timeout_s=0.05
    )
    with caplog.at_level(logging.WARNING, logger="livestream.telemetry.mqtt"):
        async with EventPublisher(settings, "session"):
            pass
    assert not [r for r in caplog.records if "unencrypted" in r.getMessage()]


# -- workers die with the daemon -------------------------------------------------
@pytest.mark.slow
@pytest.mark.skipif(not PROC.is_dir(), reason="needs /proc to list processes")
def test_sigkilled_daemon_leaves_no_worker_behind(
    tmp_path: Path, service_processes: list[subprocess.Popen[bytes]]
) -> None:
    session, movies, microscope = write_session(tmp_path, 4)
    microscope.close()
    project = tmp_path / "project"
    config = service_config(
        session,
        movies,
        project,
        workers={"n_processes": 2, "max_in_flight": 2},
        stages={
            "chain": ["first"],
            "first": {"kind": "noop", "sleep_s": 30.0},
        },
    )
    process = start_service(
        write_config_file(tmp_path / "live.toml", config), tmp_path / "service.log"
    )
    service_processes.append(process)
    wait_for(
        lambda: count_states(project).get("running", 0) == 2, 60, "two running stages"
    )
    members = session_members(process.pid)
    children = {pid: t for pid, t in members.items() if pid != process.pid}
    assert len(children) >= 2, f"expected the pool's workers, found {members}"
    os.kill(process.pid, signal.SIGKILL)  # the daemon alone, as outside systemd
    process.wait()
    deadline = time.monotonic() + 5.0
    while survivors(children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert survivors(children) == [], (
        f"left running after the daemon was killed: {survivors(children)}"
    )


# -- interruptions are not failures ----------------------------------------------
def _attempts(project: Path) -> list[tuple[int, str | None]]:
    path = project / "livestream.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(path, timeout=5) as db:
            rows = db.execute(
                "SELECT attempt, outcome FROM attempts WHERE stage='first' ORDER BY id"
            )
            return [(int(a), o) for a, o in rows]
    except sqlite3.OperationalError:
        return []


@pytest.mark.slow
def test_two_kills_and_one_failure_do_not_use_up_three_attempts(
    tmp_path: Path, service_processes: list[subprocess.Popen[bytes]]
) -> None:
    session, movies, microscope = write_session(tmp_path, 1)
    microscope.close()
    project = tmp_path / "project"
    config = service_config(
        session,
        movies,
        project,
        workers={"max_attempts": 3, "retry_backoff_s": 2.0},
        stages={"chain": ["first"], "first": {"kind": "noop", "sleep_s": 1.0}},
    )
    config_file = write_config_file(tmp_path / "live.toml", config)
    log = tmp_path / "service.log"

    def start() -> subprocess.Popen[bytes]:
        process = start_service(config_file, log)
        service_processes.append(process)
        return process

    def state() -> str | None:
        with sqlite3.connect(project / "livestream.sqlite", timeout=5) as db:
            row = db.execute("SELECT state FROM stages WHERE stage='first'").fetchone()
        return None if row is None else str(row[0])

    for n_started in (1, 2):  # killed while the stage runs
        process = start()
        wait_for(
            lambda n=n_started: len(_attempts(project)) == n,  # type: ignore[misc]
            60,
            f"attempt {n_started} running",
        )
        if n_started == 1:  # from now on the stage cannot write its output
            ((eid,),) = sqlite3.connect(project / "livestream.sqlite").execute(
                "SELECT exposure_id FROM exposures"
            )
            blocker = project / "Noop" / "first" / f"{eid}.json"
            blocker.mkdir(parents=True)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    process = start()
    wait_for(lambda: state() in ("failed", "quarantined"), 60, "a failed attempt")
    blocker.rmdir()  # the transient cause is gone before the retry
    wait_for(lambda: state() in ("done", "quarantined"), 60, "a final state")
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    with sqlite3.connect(project / "livestream.sqlite") as db:
        final = db.execute(
            "SELECT state, attempts, error FROM stages WHERE stage='first'"
        ).fetchone()
    assert final == ("done", 2, None), log.read_text()[-3000:]
    assert _attempts(project) == [
        (1, "interrupted"),
        (1, "interrupted"),
        (1, "failed"),
        (2, "done"),
    ]
