"""The child processes of the live map's jobs (the refinement, the rebalance):
one offline command each, run so that the service's drain keeps its deadline.

:meth:`ChildJobs.run` starts ``python -m livestream.cli.<command>`` (one
command's module: it starts faster than the whole ``livestream``) with the
project as working folder, stdout in ``run.out`` and stderr in ``run.err`` of its
working folder, and ``LIVESTREAM_DAEMON_PID`` set, so that it dies with the
daemon (even a SIGKILLed one).  It waits outside the event loop's work (an
``asyncio`` subprocess) until the child ends or the drain deadline, which
:meth:`ChildJobs.set_deadline` may set while the child runs; at the deadline
the child is killed.  A run works in ``<type>/.jobNNN.running`` beside its job
folder (:func:`work_folder`); :meth:`ChildJobs.finish` moves a finished run's
files into the job folder (the previous run's, its marker first, are removed;
RELION's bookkeeping files stay) and writes the marker last.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from livestream.project.pipeline import EXIT_SUCCESS
from livestream.scheduling.executors import DAEMON_PID_ENV
from pipelines.io.outputs import write_text_atomic

__all__ = ["ChildJobs", "Outcome", "work_folder"]

# the pipeline's files in a job folder (livestream.project.pipeline)
_BOOKKEEPING = ("job.star", "job_pipeline.star", "note.txt", EXIT_SUCCESS)

# a child's JSON summary, the error it ended with, or None: killed at the deadline
Outcome = dict[str, Any] | str | None


def work_folder(job_folder: Path) -> Path:
    """Where a run of ``job_folder`` works: ``<type>/.jobNNN.running`` (beside it,
    so that the pipeline lists no job before a run finished)."""
    return job_folder.with_name(f".{job_folder.name}.running")


class ChildJobs:
    """Runs the children of one service in ``project`` (module docstring)."""

    def __init__(self, project: Path) -> None:
        self.project = project
        self.n_runs = 0  # children started
        self.deadline: float | None = None  # event-loop time; None: none
        self._deadline_set = asyncio.Event()

    def set_deadline(self, deadline: float) -> None:
        """From now on, a child still running at ``deadline`` is killed."""
        self.deadline = deadline
        self._deadline_set.set()

    async def run(self, args: list[str], work: Path) -> Outcome:
        """Run ``python -m <args>`` in ``work`` (see the module docstring)."""
        self.n_runs += 1
        with (
            open(work / "run.out", "wb") as out,
            open(work / "run.err", "wb") as err,
        ):
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                *args,
                cwd=self.project,
                env={**os.environ, DAEMON_PID_ENV: str(os.getpid())},
                stdout=out,
                stderr=err,
                stdin=asyncio.subprocess.DEVNULL,
            )
        try:
            finished = await self._wait(proc)
        finally:
            if proc.returncode is None:  # cancelled: never leave it running
                proc.kill()
                await proc.wait()
        if not finished:
            return None
        if proc.returncode != 0:
            lines = (work / "run.err").read_text(errors="replace").strip().splitlines()
            return f"exit status {proc.returncode}: {lines[-1] if lines else ''}"
        try:
            summary = json.loads((work / "run.out").read_text())
        except ValueError as error:
            return f"no JSON summary in {work / 'run.out'}: {error}"
        return summary if isinstance(summary, dict) else "summary is not an object"

    async def _wait(self, proc: asyncio.subprocess.Process) -> bool:
        """Wait for ``proc`` until the deadline (one may be set while it runs);
        at the deadline kill it and return ``False``."""
        loop = asyncio.get_running_loop()
        exited = asyncio.ensure_future(proc.wait())
        try:
            while True:
                timeout = None if self.deadline is None else self.deadline - loop.time()
                if timeout is not None and timeout <= 0:
                    break
                changed = asyncio.ensure_future(self._deadline_set.wait())
                done, _ = await asyncio.wait(
                    [exited, changed],
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                changed.cancel()
                if exited in done:
                    return True
                self._deadline_set.clear()
            proc.kill()
            await exited
            return False
        finally:
            exited.cancel()

    @staticmethod
    def finish(work: Path, folder: Path, marker: str, payload: dict[str, Any]) -> None:
        """Replace the previous run's files in ``folder`` (its marker first) by
        ``work``'s, then write the marker (last: a crash before it leaves the run
        undone)."""
        folder.mkdir(parents=True, exist_ok=True)
        (folder / marker).unlink(missing_ok=True)
        for old in folder.iterdir():  # the previous run's, not RELION's bookkeeping
            if old.is_file() and old.name not in _BOOKKEEPING:
                old.unlink()
        for new in work.iterdir():
            new.replace(folder / new.name)
        work.rmdir()
        write_text_atomic(folder / marker, json.dumps(payload))
