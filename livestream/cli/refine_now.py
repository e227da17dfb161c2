"""Ask the running service for a gold-standard refinement of its current 3D map.

Example:
    livestream refine-now /data/projects/session1 --json

Writes PROJECT/refine3d_request.json (a new request id) and sends SIGUSR1 to the
service whose process id is in PROJECT/livestream.pid (the daemon writes it while
it runs on this machine).  The service refines the 2D selection against its
newest initial model (`livestream refine3d` in a child process, the map low-passed
to [class3d] refine_lowpass_a) into Refine3D/job009, publishes a refine3d event
and lists the job in default_pipeline.star; `livestream status PROJECT` shows the
result.  A request made before the first 3D map waits for it; one made while no
service runs (or on another machine) is served when the service next starts or
receives SIGUSR1 (`systemctl kill -s USR1 livestream@NAME`).  A request is served
once, also across restarts.

With --json prints one object: request_id, request_path, signalled_pid (null when
no service was found).  Exit status 2, with one line naming it, when PROJECT is
not a folder the service writes (no ledger livestream.sqlite in it).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from livestream.class3d.refinement import PID_NAME, REQUEST_NAME, write_request
from livestream.cli.console import print_json, require_file, require_folder

PROG = "livestream refine-now"


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", type=Path, metavar="PROJECT")
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def _service_pid(project: Path) -> int | None:
    """The daemon's process id from ``livestream.pid``, when that process runs."""
    try:
        pid = int((project / PID_NAME).read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None  # a stale file (a killed daemon)
    except PermissionError:
        return pid  # it runs, as another user: the signal says so
    return pid


def main(args: argparse.Namespace) -> int:
    project: Path = args.project
    require_folder(project, "project folder")
    require_file(project / "livestream.sqlite", "ledger")  # a service's project
    request = write_request(project)
    pid = _service_pid(project)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGUSR1)
        except OSError as error:
            print(f"{PROG}: cannot signal process {pid}: {error}", file=sys.stderr)
            pid = None
    summary = {
        "request_id": request["request_id"],
        "request_path": str(project / REQUEST_NAME),
        "signalled_pid": pid,
    }
    if args.json:
        print_json(summary, sort_keys=True)
    elif pid is None:
        print(
            f"request {request['request_id']} written to {project / REQUEST_NAME}; "
            "no running service found: it is served at the next start or SIGUSR1"
        )
    else:
        print(f"request {request['request_id']} sent to the service (pid {pid})")
    return 0
