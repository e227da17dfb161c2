"""The systemd notify protocol (``sd_notify``), spoken directly on ``NOTIFY_SOCKET``.

systemd passes the path of a datagram socket in ``NOTIFY_SOCKET`` (an ``@`` prefix
means a Linux abstract socket) to services with ``Type=notify``; each datagram is a
set of ``KEY=value`` lines. This module sends ``READY=1``, ``STATUS=...``,
``WATCHDOG=1``, ``STOPPING=1`` and ``EXTEND_TIMEOUT_USEC=...``. Outside systemd
(no ``NOTIFY_SOCKET``) every call is a no-op, so the daemon calls it unconditionally.
No dependency on python-systemd.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

__all__ = ["Notifier"]

log = logging.getLogger(__name__)


class Notifier:
    """Send notifications to the service manager at ``address`` (None: off).

    ``watchdog_usec`` is systemd's ``WATCHDOG_USEC`` for this process, or None.
    """

    def __init__(
        self, address: str | None, *, watchdog_usec: int | None = None
    ) -> None:
        if address is not None and not (address.startswith(("/", "@"))):
            raise ValueError(
                f"NOTIFY_SOCKET {address!r}: expected an absolute path or @abstract name"
            )
        self.address = address
        self._watchdog_usec = watchdog_usec

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """Read ``NOTIFY_SOCKET``, ``WATCHDOG_USEC`` and ``WATCHDOG_PID``.

        The watchdog applies only if ``WATCHDOG_PID`` is unset or names this process
        (a worker that inherited the environment must not ping).
        """
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        raw_usec = env.get("WATCHDOG_USEC", "")
        raw_pid = env.get("WATCHDOG_PID", "")
        if raw_usec:
            try:
                usec = int(raw_usec)
                pid_matches = not raw_pid or int(raw_pid) == os.getpid()
            except ValueError:
                log.warning(
                    "ignoring WATCHDOG_USEC=%r WATCHDOG_PID=%r: not integers",
                    raw_usec,
                    raw_pid,
                )
                usec = None
            else:
                if not pid_matches or usec <= 0:
                    usec = None
        return cls(address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def watchdog_interval_s(self) -> float | None:
        """systemd's watchdog timeout (``WatchdogSec``) in seconds, or None if off.

        Ping at least twice per interval: :meth:`watchdog_ping_period_s`.
        """
        if self._watchdog_usec is None:
            return None
        return self._watchdog_usec / 1e6

    def watchdog_ping_period_s(self) -> float | None:
        """Half the watchdog interval: how often to call :meth:`watchdog`."""
        interval = self.watchdog_interval_s()
        return None if interval is None else interval / 2

    def ready(self) -> bool:
        """Start-up is complete (``Type=notify`` waits for this)."""
        return self.send("READY=1")

    def status(self, text: str) -> bool:
        """A one-line progress summary shown by ``systemctl status``."""
        return self.send("STATUS=" + " ".join(text.split()))

    def watchdog(self) -> bool:
        """The main loop is alive (``WatchdogSec``)."""
        return self.send("WATCHDOG=1")

    def stopping(self) -> bool:
        """Shutdown has begun."""
        return self.send("STOPPING=1")

    def extend_timeout(self, seconds: float) -> bool:
        """Ask for ``seconds`` more before a start/stop timeout (a long drain)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={round(seconds * 1e6)}")

    def send(self, message: str) -> bool:
        """Send one datagram; False if off or if the manager could not be reached.

        A failure is logged, not raised: losing a notification must not stop the
        processing (systemd's own ``sd_notify`` behaves the same way).
        """
        if self.address is None:
            return False
        target = self.address
        if target.startswith("@"):
            target = "\0" + target[1:]
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(message.encode(), target)
        except OSError as exc:
            log.warning("sd_notify to %s failed (%s): %r", self.address, exc, message)
            return False
        return True
