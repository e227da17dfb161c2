"""Faults of the environment (issue #11, part 2): a full project disk, a killed
daemon's workers and attempts, a missing MQTT password file."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from livestream.config import ConfigError, ProjectConfig, SoftwareChoice, load_config
from livestream.intake.pairing import Intake
from livestream.intake.settle import classify_path, read_signature
from livestream.intake.watcher import scan_files
from livestream.ledger.store import Ledger, StageState
from livestream.scheduling.pause import PauseGate, PauseReason
from livestream.telemetry.broadcast import Broadcaster
from livestream.telemetry.mqtt import EventPublisher, MqttSettings
from livestream.telemetry.reporting import Reporter
from mdcatch.records import Exposure
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
MiB = 2**20


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


def sleeping_in_stage(session_id: int) -> list[int]:
    """Processes of the session whose main thread sleeps (the noop stage's
    ``time.sleep``): workers that are set up and run a stage."""
    sleeping = []
    for pid in session_members(session_id):
        try:
            wchan = (PROC / str(pid) / "wchan").read_text()
        except OSError:
            continue
        if "nanosleep" in wchan:
            sleeping.append(pid)
    return sleeping


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
    wait_for(lambda: len(sleeping_in_stage(process.pid)) == 2, 60, "stages running")
    members = session_members(process.pid)
    children = {pid: t for pid, t in members.items() if pid != process.pid}
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


# -- a full project disk ----------------------------------------------------------
@pytest.fixture
def tmpfs_project(tmp_path: Path) -> Iterator[Path]:
    """A 20 MB tmpfs as the project folder (needs the right to mount)."""
    project = tmp_path / "project"
    project.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(project)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield project
    finally:
        subprocess.run(["umount", "--lazy", str(project)], check=True)


def scrape_paused(port: int) -> float | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith('livestream_paused{reason="disk_full"}'):
            return float(line.split()[-1])
    return None


def fill_disk(path: Path) -> None:
    """Write ``path`` until the file system holds no more."""
    with path.open("wb", buffering=0) as fh:
        for chunk in (MiB, 4096, 1):
            with pytest.raises(OSError, match="No space left") as info:  # noqa: PT012
                while True:
                    fh.write(b"\0" * chunk)
            assert info.value.errno == errno.ENOSPC


def read_ledger(project: Path, sql: str) -> list[tuple[object, ...]]:
    uri = f"file:{project / 'livestream.sqlite'}?mode=ro"
    with sqlite3.connect(uri, uri=True, timeout=5) as db:
        return db.execute(sql).fetchall()


@pytest.mark.slow
def test_full_disk_pauses_and_resumes_without_losing_or_repeating_work(
    tmp_path: Path,
    tmpfs_project: Path,
    service_processes: list[subprocess.Popen[bytes]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = tmpfs_project
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # as systemd listens
    notify.bind(str(tmp_path / "notify.sock"))
    notify.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    statuses: list[str] = []

    def status_says(text: str) -> bool:
        with contextlib.suppress(BlockingIOError):
            while True:
                statuses.append(notify.recv(4096).decode())
        return any(text in status for status in statuses)

    session, movies, microscope = write_session(tmp_path, 2)
    port = free_port()
    config = service_config(
        session,
        movies,
        project,
        workers={"n_processes": 2, "max_in_flight": 2},
        metrics={"enabled": True, "port": port},
        stages={
            "chain": ["first", "second"],
            "first": {"kind": "noop", "sleep_s": 1.0, "payload_bytes": 300_000},
            "second": {"kind": "noop", "payload_bytes": 300_000},
        },
    )
    config = config.model_copy(
        update={
            "project": ProjectConfig(
                path=project, min_free_bytes=4 * MiB, disk_check_interval_s=0.5
            )
        }
    )
    log = tmp_path / "service.log"
    process = start_service(write_config_file(tmp_path / "live.toml", config), log)
    service_processes.append(process)
    try:
        wait_for(lambda: scrape_paused(port) == 0.0, 60, "the service to serve")
        wait_for(lambda: count_states(project).get("running", 0) >= 1, 60, "a stage")
        filler = project / "filler"
        fill_disk(filler)  # while a stage runs: its output hits ENOSPC
        for index in (2, 3):  # acquired while the disk is full
            microscope.acquire(index)
        wait_for(lambda: scrape_paused(port) == 1.0, 30, "the pause")
        wait_for(
            lambda: "No space left on device" in log.read_text(),
            30,
            "the running stage to hit the full disk",
        )
        time.sleep(1.0)  # the new exposures settled meanwhile: intake holds them
        assert process.poll() is None, log.read_text()[-3000:]
        assert scrape_paused(port) == 1.0
        ((n_exposures,),) = read_ledger(project, "SELECT count(*) FROM exposures")
        assert n_exposures == 2  # intake registers nothing while paused
        states = count_states(project)
        assert not {"failed", "quarantined"} & set(states), states
        wait_for(lambda: status_says(", paused: disk_full"), 15, "a STATUS line")
        filler.unlink()
        wait_for(
            lambda: count_states(project).get("done", 0) == 4 * 3,
            60,
            "every stage of every exposure done",
        )
        assert scrape_paused(port) == 0.0
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, log.read_text()[-3000:]
    finally:
        microscope.close()
        notify.close()
    assert "paused (disk_full)" in log.read_text()
    attempts = read_ledger(
        project,
        "SELECT exposure_id, stage, attempt, outcome FROM attempts ORDER BY id",
    )
    done = [(e, s) for e, s, _, o in attempts if o == "done"]
    assert len(done) == len(set(done)) == 4 * 2  # every stage exactly once
    assert {o for *_, o in attempts} <= {"done", "interrupted"}
    assert any(o == "interrupted" for *_, o in attempts), "no stage hit the full disk"
    rows = read_ledger(project, "SELECT attempts FROM stages WHERE stage != 'import'")
    assert {a for (a,) in rows} == {1}  # the interrupted attempts were given back
    assert read_ledger(project, "PRAGMA integrity_check") == [("ok",)]
    assert len(list((project / "Noop").rglob("*.json"))) == 4 * 2


class FullDiskLedger(Ledger):
    """A ledger whose ``failing`` method hits a full disk while ``full`` is set."""

    full = False
    failing = ""

    def record_discovered(self, exposure_id: str, **paths: Any) -> bool:
        self._maybe_full("record_discovered")
        return super().record_discovered(exposure_id, **paths)

    def mark_ready(self, exposure_id: str, **values: Any) -> None:
        self._maybe_full("mark_ready")
        super().mark_ready(exposure_id, **values)

    def quarantine_import(self, exposure_id: str, error: str, **values: Any) -> None:
        self._maybe_full("quarantine_import")
        super().quarantine_import(exposure_id, error, **values)

    def _maybe_full(self, method: str) -> None:
        if self.full and method == self.failing:
            raise sqlite3.OperationalError("database or disk is full")


@pytest.mark.parametrize("failing", ["record_discovered", "mark_ready"])
def test_intake_holds_files_while_the_disk_is_full_and_takes_them_after(
    tmp_path: Path, failing: str
) -> None:
    session, movies, microscope = write_session(tmp_path, 1)
    microscope.close()
    files = sorted(
        (path, kind)
        for path in scan_files([session, movies])
        if (kind := classify_path(path, SoftwareChoice.AUTO)) is not None
    )
    metadata, movie = sorted(files, key=lambda f: f[1].value != "epu_xml")
    ledger = FullDiskLedger(tmp_path / "project" / "livestream.sqlite")
    ledger.failing = failing
    gate = PauseGate()
    offered: list[Exposure] = []
    intake = Intake(
        ledger,
        chain=("first",),
        offer=offered.append,
        reporter=Reporter(Broadcaster()),
        orphan_timeout_s=0.0,
        gate=gate,
    )

    def settle(path: Path, kind: Any) -> None:
        signature = read_signature(path)
        assert signature is not None
        intake.on_settled(path, kind, signature)

    settle(*metadata)  # half a pair, written while there was space
    ledger.full = True
    settle(*movie)  # completes the pair: the ledger write hits the full disk
    assert gate.paused
    assert PauseReason.DISK_FULL in gate.reasons
    assert intake.quarantine_orphans() == 0  # nothing is an orphan while paused
    assert offered == []
    ledger.full = False
    gate.resume(PauseReason.DISK_FULL)
    assert len(offered) == 1
    assert ledger.count_exposures() == 1
    import_row, first_row = ledger.rows_of(offered[0].exposure_id)
    assert import_row.state is StageState.DONE
    assert first_row.state is StageState.PENDING
    assert len(intake) == 0


class BrokenThenFullLedger(FullDiskLedger):
    """An unexpected error, and then the quarantine hits a full disk."""

    def record_discovered(self, exposure_id: str, **paths: Any) -> bool:
        if self.full:
            raise RuntimeError("unexpected")
        return super().record_discovered(exposure_id, **paths)


def test_intake_defers_a_file_whose_quarantine_hits_the_full_disk(
    tmp_path: Path,
) -> None:
    session, _, microscope = write_session(tmp_path, 1)
    microscope.close()
    (metadata,) = session.rglob("*.xml")
    ledger = BrokenThenFullLedger(tmp_path / "project" / "livestream.sqlite")
    gate = PauseGate()
    intake = Intake(
        ledger,
        chain=("first",),
        offer=lambda exposure: None,
        reporter=Reporter(Broadcaster()),
        orphan_timeout_s=300.0,
        gate=gate,
    )
    ledger.failing = "quarantine_import"
    ledger.full = True
    kind = classify_path(metadata, SoftwareChoice.AUTO)
    signature = read_signature(metadata)
    assert kind is not None
    assert signature is not None
    intake.on_settled(metadata, kind, signature)  # must not raise
    assert gate.paused
    ledger.full = False
    gate.resume(PauseReason.DISK_FULL)  # taken again: registered, waits for its movie
    assert ledger.count_exposures() == 1
    assert len(intake) == 1
