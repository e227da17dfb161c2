"""Workers exit when the daemon dies (the portable fallback of exit_with_parent)."""

from __future__ import annotations

import subprocess
import sys

from livestream.scheduling.executors import EXIT_ORPHANED


def test_parent_watch_exits_the_worker_when_the_daemon_is_gone() -> None:
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    watch = (
        "import os\n"
        "from livestream.scheduling.executors import _watch_parent\n"
        f"_watch_parent(os.getppid(), {daemon.pid}, 0.05)\n"
    )
    worker = subprocess.Popen([sys.executable, "-c", watch])
    try:
        assert worker.poll() is None
        daemon.kill()
        daemon.wait()
        assert worker.wait(timeout=10) == EXIT_ORPHANED
    finally:
        daemon.kill()
        worker.kill()
        daemon.wait()
        worker.wait()
