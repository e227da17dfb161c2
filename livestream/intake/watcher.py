"""Watch the session folder and the movie folders; report files once settled.

Native events (watchdog's inotify observer) make the service react at once; a
periodic full rescan catches what events miss.  On SMB/NFS/sshfs mounts inotify
never sees what the microscope PC writes, so there the watcher polls
(``session.polling = "auto"`` decides per folder from ``/proc/mounts``).  Every
path seen goes to the :class:`~livestream.intake.settle.SettleTracker`; a timer wakes the
settle loop when the next file is due.  The watcher only reads: it never writes,
renames, touches or deletes anything under the watched folders.
"""

from __future__ import annotations

import asyncio
import logging
import os
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from livestream.config import Polling, SessionConfig
from livestream.intake.settle import (
    FileKind,
    FileSignature,
    SettleTracker,
    classify_path,
)

__all__ = ["NETWORK_FS_TYPES", "SessionWatcher", "is_network_mount", "scan_files"]

log = logging.getLogger(__name__)

NETWORK_FS_TYPES = frozenset(
    {
        "cifs", "smb3", "smbfs", "nfs", "nfs4", "fuse.sshfs", "sshfs", "9p",
        "fuse.gvfsd-fuse", "afs", "ceph", "fuse.cephfs", "glusterfs", "fuse.glusterfs",
        "lustre", "gpfs", "beegfs", "fuse.rclone", "davfs", "fuse.davfs2",
    }
)  # fmt: skip

SettledCallback = Callable[[Path, FileKind, FileSignature], None]
UnreadableCallback = Callable[[Path, str], None]


def _mount_types(mounts_text: str) -> list[tuple[str, str]]:
    mounts = []
    for line in mounts_text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mount_point = parts[1].replace("\\040", " ")
            mounts.append((mount_point, parts[2]))
    return mounts


def is_network_mount(path: Path, mounts_text: str | None = None) -> bool:
    """True when ``path`` lies on a network file system (longest mount prefix)."""
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text()
        except OSError:
            return False
    target = str(path.resolve())
    best, fs_type = "", ""
    for mount_point, kind in _mount_types(mounts_text):
        inside = target == mount_point or target.startswith(
            mount_point.rstrip("/") + "/"
        )
        if inside and len(mount_point) >= len(best):
            best, fs_type = mount_point, kind
    return fs_type in NETWORK_FS_TYPES


def scan_files(roots: Iterable[Path]) -> list[Path]:
    """Every regular file below ``roots`` (a full rescan; read-only).

    An entry that cannot even be stat'ed (a symbolic link loop) is listed too:
    the intake reports it instead of the rescan dying on it.
    """
    found: list[Path] = []
    stack = [str(r) for r in roots]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file():
                            found.append(Path(entry.path))
                    except OSError:
                        found.append(Path(entry.path))
        except OSError as exc:
            log.debug("rescan skipped %s: %s", folder, exc)
    return found


class SessionWatcher:
    """Feeds settled, classified files of a session to ``on_settled``."""

    def __init__(
        self,
        config: SessionConfig,
        on_settled: SettledCallback,
        *,
        on_rescan: Callable[[], object] | None = None,
        on_unreadable: UnreadableCallback | None = None,
    ) -> None:
        self.roots = tuple(dict.fromkeys([config.path, *config.movie_roots]))
        self._config = config
        self._on_settled = on_settled
        self._on_rescan = on_rescan
        # told (once, until it can be read again) about a file that raised OSError
        self._on_unreadable = on_unreadable
        self._unreadable: set[Path] = set()
        self.tracker = SettleTracker(config.settle_time_s)
        self._expected: set[Path] = set()
        self._wake = asyncio.Event()

    def uses_polling(self, root: Path) -> bool:
        if self._config.polling is Polling.TRUE:
            return True
        if self._config.polling is Polling.FALSE:
            return False
        return is_network_mount(root)

    def classify(self, path: Path) -> FileKind | None:
        return classify_path(path, self._config.software, self._expected)

    def observe(self, paths: Iterable[Path]) -> None:
        """Paths that may have changed (from events or a rescan)."""
        for path in paths:
            try:
                if self.classify(path) is not None:
                    self.tracker.observe(path)
            except OSError as exc:  # one file never stops the loop
                self._report_unreadable(path, exc)
            else:
                self._unreadable.discard(path)
        self._wake.set()

    def _report_unreadable(self, path: Path, exc: OSError) -> None:
        if path in self._unreadable:
            return
        self._unreadable.add(path)
        reason = f"{path}: cannot be read: {exc}"
        log.warning("%s", reason)
        if self._on_unreadable is not None:
            self._on_unreadable(path, reason)

    def expect_movie(self, path: Path) -> None:
        """A SerialEM movie named by an mdoc, possibly outside the session folder."""
        if path not in self._expected:
            self._expected.add(path)
            self.observe([path])

    async def run(self) -> None:
        """Watch until cancelled."""
        loop = asyncio.get_running_loop()
        observers = [self._start_observer(root, loop) for root in self.roots]
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._rescan_forever(), name="watcher-rescan")
                group.create_task(self._settle_forever(), name="watcher-settle")
        finally:
            for observer in observers:
                if observer is not None:
                    observer.stop()
            for observer in observers:
                if observer is not None:
                    await asyncio.to_thread(observer.join, 5.0)

    def _start_observer(self, root: Path, loop: asyncio.AbstractEventLoop) -> Any:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        watcher = self

        class _Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory:
                    return
                names = [event.src_path, getattr(event, "dest_path", "")]
                paths = [Path(os.fsdecode(n)) for n in names if n]
                loop.call_soon_threadsafe(watcher.observe, paths)

        if not root.is_dir():
            log.warning(
                "watched folder %s does not exist (yet); rescans will look", root
            )
            return None
        polling = self.uses_polling(root)
        # watchdog >= 6 warns when its recursive inotify watch registers a newly
        # created folder a second time; the callback it overwrites is the same one,
        # and the periodic rescan catches anything an event misses.
        warnings.filterwarnings(
            "ignore",
            message="Callback with id .* already exists",
            category=RuntimeWarning,
            module="watchdog.observers.inotify",
        )
        observer = (
            PollingObserver(timeout=self._config.polling_interval_s)
            if polling
            else Observer()
        )
        observer.schedule(_Handler(), str(root), recursive=True)
        observer.daemon = True
        observer.start()
        log.info("watching %s (%s)", root, "polling" if polling else "native events")
        return observer

    async def rescan(self) -> int:
        files = await asyncio.to_thread(scan_files, self.roots)
        self.observe(files)
        return len(files)

    async def _rescan_forever(self) -> None:
        while True:
            await self.rescan()
            if self._on_rescan is not None:
                self._on_rescan()
            await asyncio.sleep(self._config.rescan_interval_s)

    async def _settle_forever(self) -> None:
        while True:
            try:
                settled = self.tracker.pop_settled()
            except OSError as exc:  # one file never stops the loop
                if exc.filename:
                    self._report_unreadable(Path(os.fsdecode(exc.filename)), exc)
                else:
                    log.warning("settle check failed: %s", exc)
                settled = []
            for path, signature in settled:
                try:
                    kind = self.classify(path)
                except OSError as exc:
                    self._report_unreadable(path, exc)
                    continue
                if kind is not None:
                    self._on_settled(path, kind, signature)
            self._wake.clear()
            delay = self.tracker.next_due_s()
            if delay is None:
                await self._wake.wait()
            else:
                try:
                    async with asyncio.timeout(delay):
                        await self._wake.wait()
                except TimeoutError:
                    pass
