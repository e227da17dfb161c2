"""Shutdown of a real service process: drain, checkpoint, exit 0; a second signal
forces the exit."""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from livestream.daemon import EXIT_FORCED
from tests.livestream.service_fixtures import (
    count_states,
    service_config,
    start_service,
    wait_for,
    write_config_file,
    write_session,
)

pytestmark = pytest.mark.slow


def _start(
    tmp_path: Path, sleep_s: float, drain_s: float
) -> tuple[Path, subprocess.Popen[bytes]]:
    session, movies, _ = write_session(tmp_path, 3)
    project = tmp_path / "project"
    config = service_config(
        session,
        movies,
        project,
        workers={"drain_timeout_s": drain_s, "max_in_flight": 1},
        stages={"chain": ["slow"], "slow": {"kind": "noop", "sleep_s": sleep_s}},
    )
    process = start_service(
        write_config_file(tmp_path / "live.toml", config), tmp_path / "log"
    )
    wait_for(
        lambda: count_states(project).get("running", 0) == 1, 30, "a running stage"
    )
    return project, process


def test_sigterm_lets_the_running_stage_finish_and_exits_0(tmp_path: Path) -> None:
    project, process = _start(tmp_path, sleep_s=1.0, drain_s=20.0)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) == 0
    states = count_states(project)
    assert states.get("running", 0) == 0
    assert states.get("done", 0) == 3 + 1  # 3 imports and the stage that was running
    with sqlite3.connect(project / "livestream.sqlite") as db:
        outcomes = db.execute("SELECT outcome FROM attempts").fetchall()
    assert outcomes == [("done",)]


def test_sigterm_past_the_drain_limit_checkpoints_the_stage_as_pending(
    tmp_path: Path,
) -> None:
    project, process = _start(tmp_path, sleep_s=30.0, drain_s=0.3)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=20) == 0
    states = count_states(project)
    assert states.get("running", 0) == 0
    assert states.get("pending", 0) == 3


def test_a_second_signal_forces_the_exit(tmp_path: Path) -> None:
    _, process = _start(tmp_path, sleep_s=30.0, drain_s=60.0)
    process.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    process.send_signal(signal.SIGINT)
    try:
        assert process.wait(timeout=10) == EXIT_FORCED
    finally:  # a forced exit leaves the sleeping worker behind: end it
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
