"""Pausing the service while the project's disk is full, and resuming by itself.

A full project file system is no failure of a stage or of an exposure: the work
waits until space returns.  :class:`PauseGate` says whether the service may take
new work; while it is paused the scheduler dispatches nothing and intake registers
nothing (both hold what they got and go on when it opens again).  It closes for two
reasons:

- :class:`DiskWatch` finds, every ``project.disk_check_interval_s``, less than
  ``project.min_free_bytes`` free (or no free inode) on the project's file system;
- a write fails with ``ENOSPC`` / ``EDQUOT`` or SQLite's "database or disk is full"
  (:func:`is_disk_full`), caught where it happens (intake, ledger writes, stage
  outputs); the attempt that hit it is given back, not counted as a failure.

Only the watch opens it again: once free space is back over the threshold, at the
earliest one check interval after the last disk-full error.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from livestream.config import ProjectConfig
    from livestream.telemetry.metrics import ServiceMetrics

__all__ = [
    "DiskSpace",
    "DiskWatch",
    "PauseGate",
    "PauseReason",
    "is_disk_full",
    "read_disk_space",
    "watch_project_disk",
]

log = logging.getLogger(__name__)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# how the errors read once they crossed a process boundary without their errno
_FULL_MESSAGES = (os.strerror(errno.ENOSPC), "database or disk is full")


class PauseReason(enum.Enum):
    DISK_FULL = "disk_full"


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` (or an exception it was raised from) says the disk is full."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_ERRNOS:
            return True
        described = isinstance(
            current, sqlite3.Error | OSError | RuntimeError | ValueError
        )
        if described and any(text in str(current) for text in _FULL_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


class PauseGate:
    """Whether the service may take new work, and why not (see the module doc)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._reasons: dict[PauseReason, tuple[str, float]] = {}
        self._listeners: list[Callable[[], None]] = []

    @property
    def paused(self) -> bool:
        return bool(self._reasons)

    @property
    def reasons(self) -> Mapping[PauseReason, str]:
        return {reason: detail for reason, (detail, _) in self._reasons.items()}

    def add_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` whenever the gate closes or opens."""
        self._listeners.append(listener)

    def seconds_since(self, reason: PauseReason) -> float | None:
        """Seconds since ``reason`` last paused the service (``None``: it did not)."""
        entry = self._reasons.get(reason)
        return None if entry is None else self._clock() - entry[1]

    def pause(self, reason: PauseReason, detail: str) -> None:
        """Stop taking work because of ``reason`` (again: the time is renewed)."""
        first = reason not in self._reasons
        self._reasons[reason] = (detail, self._clock())
        if first:
            log.warning("paused (%s): %s", reason.value, detail)
            self._notify()

    def resume(self, reason: PauseReason) -> None:
        if self._reasons.pop(reason, None) is not None:
            log.warning("resumed (%s was resolved)", reason.value)
            self._notify()

    def describe(self) -> str:
        """``""`` when running, else ``"paused: disk_full"`` (for STATUS lines)."""
        if not self._reasons:
            return ""
        return "paused: " + ", ".join(r.value for r in self._reasons)

    def _notify(self) -> None:
        for listener in self._listeners:
            listener()


@dataclass(frozen=True, slots=True, kw_only=True)
class DiskSpace:
    free_bytes: int  # for unprivileged users, like ``df``
    total_bytes: int
    free_inodes: int | None  # None: the file system does not count inodes


def read_disk_space(path: Path) -> DiskSpace:
    stat = os.statvfs(path)
    return DiskSpace(
        free_bytes=stat.f_bavail * stat.f_frsize,
        total_bytes=stat.f_blocks * stat.f_frsize,
        free_inodes=stat.f_favail if stat.f_files else None,
    )


class DiskWatch:
    """Pause ``gate`` while ``path``'s file system is (nearly) full; resume after."""

    def __init__(
        self,
        gate: PauseGate,
        path: Path,
        *,
        min_free_bytes: int,
        interval_s: float,
        read: Callable[[Path], DiskSpace] = read_disk_space,
    ) -> None:
        self.gate = gate
        self.path = path
        self.min_free_bytes = min_free_bytes
        self.interval_s = interval_s
        self._read = read

    def check(self) -> DiskSpace | None:
        """Look once; pause or resume the gate; return what was found."""
        space = self._read_logged()
        if space is not None:
            self.judge(space)
        return space

    def judge(self, space: DiskSpace) -> None:
        """Pause the gate when ``space`` is short, resume it when space is back."""
        if space.free_bytes < self.min_free_bytes or space.free_inodes == 0:
            self.gate.pause(
                PauseReason.DISK_FULL,
                f"{self.path}: {space.free_bytes} bytes and "
                f"{space.free_inodes} inodes free, under project.min_free_bytes = "
                f"{self.min_free_bytes}",
            )
            return
        since = self.gate.seconds_since(PauseReason.DISK_FULL)
        if since is not None and since >= self.interval_s:
            self.gate.resume(PauseReason.DISK_FULL)

    async def run(self) -> None:
        """Check every ``interval_s`` until cancelled."""
        while True:
            # statvfs may block on a network mount: never on the event loop
            space = await asyncio.to_thread(self._read_logged)
            if space is not None:
                self.judge(space)
            await asyncio.sleep(self.interval_s)

    def _read_logged(self) -> DiskSpace | None:
        try:
            return self._read(self.path)
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.path, exc)
            return None


def watch_project_disk(
    gate: PauseGate, project: ProjectConfig, metrics: ServiceMetrics | None
) -> DiskWatch:
    """The service's watch of its project folder; ``livestream_paused`` follows
    ``gate``."""
    if metrics is not None:

        def publish() -> None:
            for reason in PauseReason:
                metrics.set_paused(reason.value, reason in gate.reasons)

        gate.add_listener(publish)
    return DiskWatch(
        gate,
        project.path,
        min_free_bytes=project.min_free_bytes,
        interval_s=project.disk_check_interval_s,
    )
