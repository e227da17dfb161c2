"""Hostile input against the real daemon process (issue #11): a symlink loop, files
and mdoc paths outside the session, a header claiming 2 GB in a 5 KB file, junk
named like movies, and a copy that stalls longer than the settle time.

One service process runs through all of them (module fixture); each test checks
one item.  Before the fixes the loop alone killed the daemon within seconds.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
import struct
import threading
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from watchdog.events import (
    FileClosedNoWriteEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers.inotify import InotifyObserver

from mdcatch.records import Software
from tests.livestream.service_fixtures import (
    ledger_rows,
    service_config,
    start_service,
    wait_for,
    write_config_file,
    write_session,
)

pytestmark = pytest.mark.slow

JUNK_STEMS = {
    "empty": "FoilHole_9_Data_9_1_20200320_090201",
    "random_mrc": "FoilHole_9_Data_9_2_20200320_090202",
    "random_tiff": "FoilHole_9_Data_9_3_20200320_090203",
    "random_eer": "FoilHole_9_Data_9_4_20200320_090204",
}


class _OpenRecorder(FileSystemEventHandler):
    def __init__(self) -> None:
        self.opened: list[str] = []
        self.seen = threading.Event()

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, FileOpenedEvent | FileClosedNoWriteEvent):
            self.opened.append(str(event.src_path))
            self.seen.set()


@dataclass
class HostileRun:
    stems: list[str]
    movies: list[Path]
    outside: Path
    rows: dict[tuple[str, str], tuple[str, int, str | None]]
    opened_outside: list[str]
    vm_hwm_kb: int
    reexamined: float
    exit_code: int
    mdoc_stems: dict[str, str] = field(default_factory=dict)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _vm_hwm_kb(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", text, re.MULTILINE)
    assert match is not None
    return int(match.group(1))


def _hostile_mrc(template: Path, path: Path) -> None:
    """A 5 KB MRC whose header claims a 2**31-byte extended header."""
    data = bytearray(template.read_bytes()[:1024])
    struct.pack_into("<i", data, 92, 2**31 - 1)
    path.write_bytes(bytes(data) + bytes(4000))


def _hostile_mdocs(tmp_path: Path, session: Path, outside: Path) -> dict[str, str]:
    """Two mdocs whose SubFramePath points outside: absolute, and climbing."""
    serialem, _, _ = write_session(tmp_path / "se", 1, software=Software.SERIALEM)
    (template,) = serialem.glob("*.mdoc")
    text = template.read_text()
    values = {
        "absolute_out": str(outside / "secret.mrc"),
        "climbing_out": "../../outside/secret.mrc",
    }
    for stem, value in values.items():
        new = re.sub(r"SubFramePath = .*", f"SubFramePath = {value}", text)
        (session / "serialem").mkdir(exist_ok=True)
        (session / "serialem" / f"{stem}.mrc.mdoc").write_text(new)
    return values


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory) -> HostileRun:
    tmp_path = tmp_path_factory.mktemp("hostile")
    session, movies, _ = write_session(tmp_path, 6)
    project, outside = tmp_path / "project", tmp_path / "outside"
    outside.mkdir()
    movie_files = sorted(movies.rglob("*_Fractions.mrc"))
    stems = [m.name.removesuffix("_Fractions.mrc") for m in movie_files]
    shutil.copy(movie_files[1], outside / "secret.mrc")
    (outside / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    # 0: a symlink loop; 1: a link out of the session; 2: a link to a "passwd"
    movie_files[0].unlink()
    movie_files[0].symlink_to(movie_files[0].name)
    movie_files[1].unlink()
    movie_files[1].symlink_to(outside / "secret.mrc")
    movie_files[2].unlink()
    movie_files[2].symlink_to(outside / "passwd")
    # 3: a 5 KB header that claims 2 GB; 4: a copy that stalls (0-byte placeholder)
    _hostile_mrc(movie_files[5], movie_files[3])
    stalled = movie_files[4].read_bytes()
    movie_files[4].write_bytes(b"")
    mdoc_values = _hostile_mdocs(tmp_path, session, outside)
    junk = movies / "junk"
    junk.mkdir()
    rng = np.random.default_rng(11)
    (junk / f"{JUNK_STEMS['empty']}_Fractions.mrc").write_bytes(b"")
    (junk / f"{JUNK_STEMS['random_mrc']}_Fractions.mrc").write_bytes(rng.bytes(5000))
    (junk / f"{JUNK_STEMS['random_tiff']}_Fractions.tiff").write_bytes(rng.bytes(5000))
    (junk / f"{JUNK_STEMS['random_eer']}_EER.eer").write_bytes(rng.bytes(5000))

    recorder = _OpenRecorder()
    observer = InotifyObserver()
    observer.schedule(recorder, str(outside), recursive=False)
    observer.start()
    port = _free_port()
    config = service_config(
        session, movies, project, metrics={"enabled": True, "port": port}
    )
    process = start_service(
        write_config_file(tmp_path / "live.toml", config), tmp_path / "service.log"
    )
    try:

        def state(stem: str, stage: str = "import") -> str | None:
            try:
                return ledger_rows(project).get((stem, stage), (None,))[0]
            except Exception:  # noqa: BLE001 - the ledger may not exist yet
                return None

        wait_for(lambda: state(stems[4]) == "quarantined", 30, "the stalled copy")
        movie_files[4].write_bytes(stalled)  # the copy finishes
        wait_for(
            lambda: (
                state(stems[4], "second") == "done"
                and state(stems[5], "second") == "done"
                and all(state(s) == "quarantined" for s in JUNK_STEMS.values())
                and all(state(s) == "quarantined" for s in mdoc_values)
            ),
            30,
            "the good exposures done, the hostile ones quarantined",
        )
        assert process.poll() is None, "the service died"
        vm_hwm_kb = _vm_hwm_kb(process.pid)
        with urllib.request.urlopen(
            f"http://127.0.0.1:{port}/metrics", timeout=5
        ) as reply:
            metrics = reply.read().decode()
        reexamined = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("livestream_intake_reexamined_total")
        )
        process.send_signal(signal.SIGTERM)
        exit_code = process.wait(timeout=30)
        opened = list(recorder.opened)
        # the recorder does see opens: open the file ourselves once
        (outside / "secret.mrc").read_bytes()
        assert recorder.seen.wait(5), "inotify saw no open at all"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        observer.stop()
        observer.join(5)
    return HostileRun(
        stems=stems,
        movies=movie_files,
        outside=outside,
        rows=ledger_rows(project),
        opened_outside=opened,
        vm_hwm_kb=vm_hwm_kb,
        reexamined=reexamined,
        exit_code=exit_code,
        mdoc_stems=mdoc_values,
    )


def _import(run: HostileRun, stem: str) -> tuple[str, str]:
    state, _, error = run.rows[(stem, "import")]
    return state, error or ""


def test_a_symlink_loop_is_quarantined_and_the_service_goes_on(
    hostile_run: HostileRun,
) -> None:
    state, error = _import(hostile_run, hostile_run.stems[0])
    assert state == "quarantined"
    assert str(hostile_run.movies[0]) in error
    assert "symbolic link loop" in error
    assert hostile_run.rows[(hostile_run.stems[5], "second")][0] == "done"
    assert hostile_run.exit_code == 0


def test_nothing_outside_the_session_is_opened(hostile_run: HostileRun) -> None:
    for index, target in ((1, "secret.mrc"), (2, "passwd")):
        state, error = _import(hostile_run, hostile_run.stems[index])
        assert state == "quarantined"
        assert "'movie_path'" in error
        assert str(hostile_run.movies[index]) in error
        assert str(hostile_run.outside.resolve() / target) in error
        assert "outside the session" in error
    for stem, value in hostile_run.mdoc_stems.items():
        state, error = _import(hostile_run, stem)
        assert state == "quarantined"
        assert "'SubFramePath'" in error
        assert repr(value) in error
        assert f"{stem}.mrc.mdoc" in error
    assert hostile_run.opened_outside == []


def test_a_header_claiming_2_gb_allocates_nothing(hostile_run: HostileRun) -> None:
    state, error = _import(hostile_run, hostile_run.stems[3])
    assert state == "quarantined"
    assert "'nsymbt'" in error
    assert str(2**31 - 1) in error
    assert hostile_run.vm_hwm_kb < 600 * 1024  # the daemon's peak RSS


def test_a_stalled_copy_is_examined_again_once_it_changes(
    hostile_run: HostileRun,
) -> None:
    assert _import(hostile_run, hostile_run.stems[4]) == ("done", "")
    assert hostile_run.rows[(hostile_run.stems[4], "second")][0] == "done"
    assert hostile_run.reexamined >= 1


@pytest.mark.parametrize(
    ("junk", "field", "reason"),
    [
        ("empty", "file size", "empty file"),
        ("random_mrc", "MAP", "not an MRC file"),
        ("random_tiff", "magic", "not a TIFF or EER file"),
        ("random_eer", "magic", "not a TIFF or EER file"),
    ],
)
def test_junk_movies_say_what_is_wrong(
    hostile_run: HostileRun, junk: str, field: str, reason: str
) -> None:
    state, error = _import(hostile_run, JUNK_STEMS[junk])
    assert state == "quarantined"
    assert JUNK_STEMS[junk] in error
    assert f"field {field!r}" in error
    assert reason in error
    assert "header promises more frames" not in error
