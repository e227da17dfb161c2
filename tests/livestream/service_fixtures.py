"""Helpers for the service tests: configs, a session writer, an in-process runner.

Import them explicitly (``from tests.livestream.service_fixtures import ...``);
``conftest.py`` belongs to the observability tests.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from livestream.config import ServiceConfig, load_config
from livestream.daemon import run_service
from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from livestream.telemetry.reporting import EventType, ServiceEvent
from mdcatch.records import Software

NOOP_CHAIN: dict[str, Any] = {
    "chain": ["first", "second"],
    "first": {"kind": "noop"},
    "second": {"kind": "noop"},
}


def service_config(
    session_path: Path, movies: Path, project: Path, **sections: dict[str, Any]
) -> ServiceConfig:
    """A fast test config: short settle time, one worker, noop stages."""
    overrides: dict[str, Any] = {
        "session": {
            "path": session_path,
            "movie_roots": [movies] if movies != session_path else [],
            "settle_time_s": 0.2,
            "rescan_interval_s": 0.5,
            "orphan_timeout_s": 1.5,
        },
        "project": {"path": project},
        "workers": {
            "n_processes": 1,
            "max_in_flight": 2,
            "retry_backoff_s": 0.05,
            "drain_timeout_s": 10.0,
        },
        "metrics": {"enabled": False},
        "dashboard": {"enabled": False},
        "stages": NOOP_CHAIN,
    }
    for name, values in sections.items():
        overrides[name] = {**overrides.get(name, {}), **values}
    return load_config(None, overrides)


def write_session(
    root: Path,
    n: int,
    *,
    software: Software = Software.EPU,
    seed: int = 7,
    size_px: int = 64,
) -> tuple[Path, Path, SimulatedMicroscope]:
    """A session of ``n`` tiny noise exposures; returns (session, movies, microscope)."""
    session = root / "session"
    movies = root / "movies" if software is Software.EPU else session
    microscope = SimulatedMicroscope(
        session,
        movies,
        MicroscopeSettings(
            software=software,
            size_px=size_px,
            n_frames=4,
            noise_only=True,
            write_chunks=1,
        ),
        np.random.default_rng(seed),
    )
    for index in range(n):
        microscope.acquire(index)
    return session, movies, microscope


async def run_until_settled(
    config: ServiceConfig,
    n_final: int,
    *,
    timeout_s: float = 30.0,
    during: Callable[[], object] | None = None,
    expect_timeout: bool = False,
) -> list[ServiceEvent]:
    """Run the service in-process until ``n_final`` exposures reached a final state
    (or, with ``expect_timeout``, for ``timeout_s``)."""
    events: list[ServiceEvent] = []
    stop = asyncio.Event()
    finals: set[str] = set()

    def listen(event: ServiceEvent) -> None:
        events.append(event)
        if event.type in (EventType.EXPOSURE_DONE, EventType.IMPORT_QUARANTINED):
            finals.add(event.exposure_id)
            if len(finals) >= n_final:
                stop.set()

    service = asyncio.create_task(
        run_service(
            config, stop=stop, listeners=(listen,), install_signal_handlers=False
        )
    )
    try:
        async with asyncio.timeout(timeout_s):
            if during is not None:
                during()
            await stop.wait()
    except TimeoutError:
        if not expect_timeout:
            raise
    finally:
        stop.set()
        code = await service
    assert code == 0
    return events


def ledger_rows(project: Path) -> dict[tuple[str, str], tuple[str, int, str | None]]:
    """(exposure_id, stage) -> (state, attempts, error), read with plain SQL."""
    with sqlite3.connect(project / "livestream.sqlite") as db:
        rows = db.execute(
            "SELECT exposure_id, stage, state, attempts, error FROM stages"
        )
        return {(e, s): (st, a, err) for e, s, st, a, err in rows}


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


def write_config_file(path: Path, config: ServiceConfig) -> Path:
    """Write ``config`` as TOML (what ``livestream run --config`` reads)."""
    data = config.model_dump(mode="json")
    stages = data.pop("stages")
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines += [
            f"{k} = {_toml_value(v)}"
            for k, v in values.items()
            if v is not None and v != {}
        ]
    lines += ["[stages]", f"chain = {_toml_value(stages.pop('chain'))}"]
    for name, table in stages.items():
        lines.append(f"[stages.{name}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def start_service(config_file: Path, log_file: Path) -> subprocess.Popen[bytes]:
    """``livestream run --config FILE`` in its own process group."""
    with open(log_file, "ab") as log:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "livestream.cli.main",
                "run",
                "--config",
                str(config_file),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def count_states(project: Path) -> dict[str, int]:
    path = project / "livestream.sqlite"
    if not path.exists():
        return {}
    try:
        with sqlite3.connect(path, timeout=5) as db:
            rows = db.execute("SELECT state, count(*) FROM stages GROUP BY state")
            return {state: int(n) for state, n in rows}
    except sqlite3.OperationalError:
        return {}


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)
