"""Soak: a live SerialEM session with hostile files, daemon kills and a broker outage.

    .venv/bin/python benchmarks/soak_hostile.py [--exposures 300] [--kills 8]
                                                 [--outage-s 20] [--out DIR]

A simulated microscope writes ``--exposures`` good exposures (tiny noise movies
and their mdocs) into a session folder while the real daemon (``python -m
livestream run``) processes them with a two-stage noop chain on two worker
processes.  Between them it writes the hostile files of issue #11: a movie that
is a symlink to itself, a symlink to a movie outside the session, mdocs whose
``SubFramePath`` is absolute or climbs out with ``../..``, a ``.mrc`` link to a
non-movie outside file, a 5 KB MRC header claiming a 2 GB extended header,
random bytes named ``.mrc``/``.tif``/``.eer``, an empty movie, and a stalled copy
(a 0-byte placeholder completed 10 s later, after the settle time).  The daemon
is SIGKILLed (the daemon alone, so that its workers must notice) ``--kills``
times and restarted; the MQTT broker (mosquitto, when installed) is stopped for
``--outage-s`` seconds in the middle.

Prints: exposures done, lost, done twice, hostile files quarantined and
processed, files opened outside the session (inotify), peak RSS of the daemon
and of a worker, workers left behind by a killed daemon, and exposure events
received over MQTT.  Exit status 1 when anything is lost, done twice, opened
outside, processed although hostile, or left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import getpass
import json
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from watchdog.events import FileOpenedEvent, FileSystemEvent, FileSystemEventHandler
from watchdog.observers.inotify import InotifyObserver

from livestream.demo.microscope import MicroscopeSettings, SimulatedMicroscope
from mdcatch.records import Exposure, Software

CHAIN = ("first", "second")
STALL_S = 10.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(path: Path, root: Path, mqtt_port: int | None) -> Path:
    mqtt = f'[mqtt]\nhost = "127.0.0.1"\nport = {mqtt_port}\n' if mqtt_port else ""
    stages = "".join(
        f'[stages.{name}]\nkind = "noop"\nsleep_s = 0.05\npayload_bytes = 2000\n'
        for name in CHAIN
    )
    path.write_text(
        f"""[session]
path = "{root / "session"}"
software = "serialem"
settle_time_s = 1.0
rescan_interval_s = 2.0
orphan_timeout_s = 5.0
[project]
path = "{root / "project"}"
[workers]
n_processes = 2
max_in_flight = 4
retry_backoff_s = 0.2
drain_timeout_s = 20.0
[metrics]
enabled = false
[dashboard]
enabled = false
[class2d]
enabled = false
{mqtt}[stages]
chain = {json.dumps(list(CHAIN))}
{stages}"""
    )
    return path


class OpenWatch(FileSystemEventHandler):
    """Counts opens of files in the outside folder (inotify IN_OPEN)."""

    def __init__(self) -> None:
        self.opened: list[str] = []

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent):
            self.opened.append(str(event.src_path))


class Subscriber:
    """Exposure events over MQTT, reconnecting through the outage.

    A persistent session (fixed client id, no clean session) on a broker with
    persistence: the broker keeps the subscription and queues QoS 1 messages while
    the subscriber reconnects, so the count measures the service, not the subscriber.
    """

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt  # deferred: only with a broker
        from paho.mqtt.enums import CallbackAPIVersion

        self.ids: set[str] = set()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, "soak-subscriber", clean_session=False
        )
        self.client.on_connect = lambda c, *_: c.subscribe("livestream/#", qos=1)
        self.client.on_message = self._message
        self.client.reconnect_delay_set(1, 2)
        self.client.connect_async("127.0.0.1", port)
        self.client.loop_start()

    def _message(self, _client: object, _data: object, message: object) -> None:
        topic = str(getattr(message, "topic", ""))
        if "/exposure/" in topic:
            self.ids.add(topic.rsplit("/", 1)[1])

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def start_broker(port: int, folder: Path) -> subprocess.Popen[bytes] | None:
    """mosquitto on ``port`` with persistence in ``folder`` (sessions and their
    queued messages survive the outage's restart)."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not Path(binary).exists():
        return None
    folder.mkdir(exist_ok=True)
    lines = [
        f"listener {port} 127.0.0.1",
        "allow_anonymous true",
        "persistence true",
        f"persistence_location {folder}/",
    ]
    if os.geteuid() == 0:
        lines.append(f"user {getpass.getuser()}")  # do not drop to 'mosquitto'
    config = folder / "mosquitto.conf"
    config.write_text("\n".join(lines) + "\n")
    broker = subprocess.Popen(
        [binary, "-c", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):  # listening before the subscriber and the daemon connect
        with (
            contextlib.suppress(OSError),
            socket.create_connection(("127.0.0.1", port)),
        ):
            break
        time.sleep(0.05)
    return broker


def start_daemon(config: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as handle:
        return subprocess.Popen(
            [sys.executable, "-m", "livestream", "run", "--config", str(config)],
            stdout=handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def children_of(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {pid}
    while frontier:
        frontier = {child for child, parent in parents.items() if parent in frontier}
        found |= frontier
    return found


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def mdoc_for(template: Path, target: Path, sub_frame_path: str) -> None:
    """An mdoc like ``template`` whose ``SubFramePath`` is ``sub_frame_path``."""
    lines = [
        f"SubFramePath = {sub_frame_path}" if line.startswith("SubFramePath") else line
        for line in template.read_text().splitlines()
    ]
    target.write_text("\n".join(lines) + "\n")


def hostile_mrc_header() -> bytes:
    header = bytearray(1024)
    struct.pack_into("<3i", header, 0, 64, 64, 4)  # nx, ny, nz
    struct.pack_into("<i", header, 12, 0)  # mode 0: int8
    struct.pack_into("<i", header, 92, 2**31 - 1)  # nsymbt: extended header bytes
    header[208:212] = b"MAP "
    header[212:216] = b"\x44\x44\x00\x00"
    return bytes(header) + bytes(4096)


def write_hostile(
    index: int, session: Path, outside: Path, template: Path, movie: Path
) -> dict[str, str]:
    """The hostile files of round ``index``; returns exposure id -> kind."""
    rng = np.random.default_rng(index)
    made: dict[str, str] = {}

    def with_mdoc(name: str, kind: str, sub_frame: str | None = None) -> None:
        mdoc_for(template, session / f"{name}.mdoc", sub_frame or name)
        made[Path(name).stem] = kind

    loop = session / f"loop_{index:03d}.mrc"
    loop.symlink_to(loop.name)
    with_mdoc(loop.name, "symlink loop")
    link = session / f"outlink_{index:03d}.mrc"
    link.symlink_to(outside / "outside_movie.mrc")
    with_mdoc(link.name, "symlink out of the session")
    with_mdoc(
        f"abs_{index:03d}.mrc", "absolute SubFramePath", str(outside / "abs_movie.mrc")
    )
    with_mdoc(f"climb_{index:03d}.mrc", "climbing SubFramePath", "../outside/climb.mrc")
    secret = session / f"passwd_{index:03d}.mrc"
    secret.symlink_to(outside / "secret.txt")
    with_mdoc(secret.name, "link to a non-movie outside")
    (session / f"hostile_{index:03d}.mrc").write_bytes(hostile_mrc_header())
    with_mdoc(f"hostile_{index:03d}.mrc", "2 GB extended header")
    for suffix in (".mrc", ".tif", ".eer"):
        name = f"random{suffix[1:]}_{index:03d}{suffix}"
        (session / name).write_bytes(rng.bytes(20_000))
        with_mdoc(name, f"random bytes {suffix}")
    (session / f"empty_{index:03d}.mrc").write_bytes(b"")
    with_mdoc(f"empty_{index:03d}.mrc", "empty movie")
    stalled = session / f"stalled_{index:03d}.mrc"
    stalled.write_bytes(b"")
    with_mdoc(stalled.name, "stalled copy")
    timer = threading.Timer(STALL_S, lambda: shutil.copyfile(movie, stalled))
    timer.daemon = True
    timer.start()
    return made


def ledger(project: Path, query: str) -> list[tuple[object, ...]]:
    path = project / "livestream.sqlite"
    if not path.exists():
        return []
    try:
        with sqlite3.connect(path, timeout=10) as db:
            return list(db.execute(query))
    except sqlite3.OperationalError:
        return []


def wait_until(predicate: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.5)
    return predicate()


@dataclass
class Soak:
    """The running soak: folders, the microscope, the daemon, the broker."""

    args: argparse.Namespace
    root: Path
    microscope: SimulatedMicroscope
    first: Exposure
    config: Path
    log: Path
    port: int
    broker: subprocess.Popen[bytes] | None
    good: set[str] = field(default_factory=set)
    hostile: dict[str, str] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=lambda: {"daemon": 0, "worker": 0})
    left_behind: list[int] = field(default_factory=list)
    outage_done: bool = False

    @property
    def project(self) -> Path:
        return self.root / "project"

    def acquire(self) -> None:
        """The microscope: good exposures, and hostile files every so often."""
        assert self.first.movie_path is not None
        for index in range(1, self.args.exposures):
            self.good.add(self.microscope.acquire(index).exposure_id)
            if index % self.args.hostile_every == 0:
                self.hostile.update(
                    write_hostile(
                        index,
                        self.root / "session",
                        self.root / "outside",
                        self.first.metadata_path,
                        self.first.movie_path,
                    )
                )
            time.sleep(self.args.interval_s)

    def sample(self, daemon: subprocess.Popen[bytes]) -> None:
        """Peak memory of the daemon and its workers."""
        self.peak["daemon"] = max(self.peak["daemon"], rss_bytes(daemon.pid))
        for pid in children_of(daemon.pid):
            self.peak["worker"] = max(self.peak["worker"], rss_bytes(pid))

    def broker_outage(self, elapsed_s: float) -> None:
        """Stop the broker for ``--outage-s`` once, half way through."""
        outage_at = 5.0 + self.args.exposures * self.args.interval_s / 2
        if self.outage_done or self.broker is None or elapsed_s < outage_at:
            return
        self.broker.terminate()
        self.broker.wait()
        time.sleep(self.args.outage_s)
        self.broker = start_broker(self.port, self.root / "mosquitto")
        self.outage_done = True

    def kill(self, daemon: subprocess.Popen[bytes]) -> None:
        """SIGKILL the daemon alone; note its workers that outlive it."""
        workers = children_of(daemon.pid)
        os.kill(daemon.pid, signal.SIGKILL)
        daemon.wait()
        time.sleep(5.0)
        survivors = [pid for pid in workers if Path(f"/proc/{pid}").exists()]
        self.left_behind += survivors
        for pid in survivors:  # do not let them pile up across kills
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def run_daemon_with_kills(self) -> subprocess.Popen[bytes]:
        """Start the daemon, kill it ``--kills`` times at random moments and
        restart it; return the last daemon (still running)."""
        started = time.monotonic()
        daemon = start_daemon(self.config, self.log)
        kill_times = sorted(
            np.random.default_rng(2).uniform(
                5.0, 5.0 + self.args.exposures * 0.25, self.args.kills
            )
        )
        for kill_at in kill_times:
            while time.monotonic() - started < kill_at:
                self.sample(daemon)
                if daemon.poll() is not None:  # died by itself: a finding
                    print(f"daemon exited by itself with {daemon.returncode}")
                    daemon = start_daemon(self.config, self.log)
                self.broker_outage(time.monotonic() - started)
                time.sleep(0.25)
            self.kill(daemon)
            daemon = start_daemon(self.config, self.log)
        self.broker_outage(float("inf"))
        return daemon

    def n_finished(self) -> int:
        rows = ledger(
            self.project,
            "SELECT count(*) FROM (SELECT exposure_id FROM stages "
            "WHERE stage != 'import' AND state = 'done' GROUP BY exposure_id "
            f"HAVING count(*) = {len(CHAIN)})",
        )
        return int(str(rows[0][0])) if rows else 0


def set_up(args: argparse.Namespace) -> Soak:
    root = args.out or Path(tempfile.mkdtemp(prefix="livestream-soak-"))
    session, outside = root / "session", root / "outside"
    session.mkdir(parents=True)
    outside.mkdir()
    microscope = SimulatedMicroscope(
        session,
        session,
        MicroscopeSettings(
            software=Software.SERIALEM, size_px=64, n_frames=4, noise_only=True
        ),
        np.random.default_rng(1),
    )
    first = microscope.acquire(0)
    assert first.movie_path is not None
    for name in ("outside_movie.mrc", "abs_movie.mrc", "climb.mrc"):
        shutil.copyfile(first.movie_path, outside / name)
    (outside / "secret.txt").write_text("root:x:0:0:root:/root:/bin/bash\n")
    port = free_port()
    broker = start_broker(port, root / "mosquitto")
    return Soak(
        args=args,
        root=root,
        microscope=microscope,
        first=first,
        config=write_config(root / "live.toml", root, port if broker else None),
        log=root / "service.log",
        port=port,
        broker=broker,
        good={first.exposure_id},
    )


def report(
    soak: Soak, opened: list[str], events: set[str], seconds: float
) -> dict[str, Any]:
    states = {
        (str(e), str(s)): str(st)
        for e, s, st in ledger(
            soak.project, "SELECT exposure_id, stage, state FROM stages"
        )
    }
    done_counts: Counter[tuple[str, str]] = Counter(
        (str(e), str(s))
        for e, s in ledger(
            soak.project,
            "SELECT exposure_id, stage FROM attempts WHERE outcome = 'done'",
        )
    )
    stalled = {e for e, kind in soak.hostile.items() if kind == "stalled copy"}
    should_finish = soak.good | stalled
    done = {
        e for e in should_finish if all(states.get((e, s)) == "done" for s in CHAIN)
    }
    processed = sorted(
        e
        for e, kind in soak.hostile.items()
        if kind != "stalled copy" and any(states.get((e, s)) == "done" for s in CHAIN)
    )
    return {
        "exposures": len(should_finish),
        "done": len(done),
        "lost": len(should_finish - done),
        "done_twice": sum(
            1 for (_, s), n in done_counts.items() if n > 1 and s != "import"
        ),
        "hostile_files": len(soak.hostile) - len(stalled),
        "hostile_quarantined": sum(
            1 for e in soak.hostile if states.get((e, "import")) == "quarantined"
        ),
        "hostile_processed": processed,
        "outside_files_opened": len(opened),
        "daemon_peak_rss_mb": round(soak.peak["daemon"] / 2**20, 1),
        "worker_peak_rss_mb": round(soak.peak["worker"] / 2**20, 1),
        "kills": soak.args.kills,
        "workers_left_behind": len(soak.left_behind),
        "mqtt_exposure_events": len(events & should_finish)
        if soak.broker is not None
        else None,
        "seconds": round(seconds, 1),
        "folder": str(soak.root),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--exposures", type=int, default=300)
    parser.add_argument("--kills", type=int, default=8)
    parser.add_argument("--outage-s", type=float, default=20.0)
    parser.add_argument("--hostile-every", type=int, default=60)
    parser.add_argument("--interval-s", type=float, default=0.1)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    soak = set_up(args)
    watch = OpenWatch()
    observer = InotifyObserver()
    observer.schedule(watch, str(soak.root / "outside"))
    observer.start()
    subscriber = Subscriber(soak.port) if soak.broker else None
    writer = threading.Thread(target=soak.acquire)
    started = time.monotonic()
    writer.start()
    daemon: subprocess.Popen[bytes] | None = None
    try:
        daemon = soak.run_daemon_with_kills()
        writer.join()
        n_stalled = sum(1 for k in soak.hostile.values() if k == "stalled copy")
        expected = len(soak.good) + n_stalled
        wait_until(lambda: soak.n_finished() >= expected, 300.0)
        time.sleep(3.0)  # let the last events out
        daemon.send_signal(signal.SIGTERM)
        daemon.wait(timeout=60)
    finally:
        writer.join()
        if daemon is not None and daemon.poll() is None:
            os.killpg(daemon.pid, signal.SIGKILL)
        observer.stop()
        observer.join()
        if subscriber is not None:
            subscriber.close()
        if soak.broker is not None:
            soak.broker.terminate()
        soak.microscope.close()
    summary = report(
        soak,
        watch.opened,
        subscriber.ids if subscriber else set(),
        time.monotonic() - started,
    )
    print(json.dumps(summary, indent=1))
    bad = (
        summary["lost"]
        or summary["done_twice"]
        or summary["outside_files_opened"]
        or summary["hostile_processed"]
        or summary["workers_left_behind"]
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
