"""What every ``livestream`` command shows on the terminal besides its results.

- :class:`InputError` and :func:`require_file` / :func:`require_folder`: an input that
  is missing or cannot be read becomes one line naming the file and exit status 2
  (:func:`livestream.cli.main.main` prints it), checked before any work starts.
- :class:`Progress`: a progress bar on stderr, shown only when stderr is a terminal
  and the command was not asked for ``--json``.  Its :meth:`Progress.update` is the
  ``on_progress(done, total)`` callback the long ``pipelines`` loops accept.
- :func:`print_json`: the one JSON object a command prints with ``--json``.
- :func:`run_alone`: one command run as ``python -m livestream.cli.<name>``, without
  importing the others (the service's refinement starts its children so).
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from tqdm import tqdm

__all__ = [
    "INPUT_ERROR_STATUS",
    "InputError",
    "Progress",
    "print_batch_json",
    "print_json",
    "require_file",
    "require_files",
    "require_folder",
    "run_alone",
]

# exit status of a command whose input is missing or unreadable (argparse uses 2 for
# a bad command line too)
INPUT_ERROR_STATUS = 2


class InputError(Exception):
    """An input file or folder that is missing or cannot be read."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


def _stat(path: Path, what: str) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise InputError(
                path, f"{what} is a broken link (to {os.readlink(path)})"
            ) from None
        raise InputError(path, f"{what} does not exist") from None
    except OSError as exc:
        raise InputError(path, f"{what} cannot be read: {exc.strerror}") from None


def require_file(path: Path, what: str = "input file") -> Path:
    """``path`` if it is a readable regular file, else :class:`InputError`.

    A folder, FIFO, socket or device is refused before anything opens it (reading a
    FIFO would wait for a writer forever)."""
    mode = _stat(path, what).st_mode
    if stat.S_ISDIR(mode):
        raise InputError(path, f"{what} is a folder, not a file")
    if not stat.S_ISREG(mode):
        raise InputError(path, f"{what} is not a regular file (FIFO, socket or device)")
    try:
        with path.open("rb"):
            pass
    except OSError as exc:
        raise InputError(path, f"{what} cannot be read: {exc.strerror}") from None
    return path


def require_files(paths: Iterable[Path], what: str = "input file") -> None:
    """:func:`require_file` on each of ``paths``; the first bad one is the error."""
    for path in paths:
        require_file(path, what)


def require_folder(path: Path, what: str = "folder") -> Path:
    """``path`` if it is a folder whose entries can be listed, else
    :class:`InputError`."""
    if not stat.S_ISDIR(_stat(path, what).st_mode):
        raise InputError(path, f"{what} is not a folder")
    if not os.access(path, os.R_OK | os.X_OK):
        raise InputError(path, f"{what} cannot be read: permission denied")
    return path


def run_alone(
    prog: str,
    doc: str | None,
    add_args: Callable[[argparse.ArgumentParser], None],
    main: Callable[[argparse.Namespace], int],
    argv: Sequence[str] | None = None,
) -> int:
    """One command's ``main`` on ``argv``, with :func:`livestream.cli.main.main`'s
    handling of an :class:`InputError` (one line, exit status 2).  With
    ``LIVESTREAM_DAEMON_PID`` set, the process exits when that daemon (its
    parent) is gone."""
    # the executors bring asyncio, multiprocessing and the config (~0.4 CPU s),
    # which `livestream <command>` (main.main) does not need
    # deferred: start-up of every command run through main.main
    from livestream.scheduling.executors import DAEMON_PID_ENV, exit_with_parent

    daemon_pid = os.environ.get(DAEMON_PID_ENV)
    if daemon_pid:
        exit_with_parent(int(daemon_pid))
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_args(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except InputError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS


def print_json(document: dict[str, Any], **options: Any) -> None:
    """Print ``document`` as the one JSON object of ``--json`` on stdout."""
    print(json.dumps(document, **options), flush=True)


def print_batch_json(
    items: list[dict[str, Any]], failed: list[dict[str, str]], **options: Any
) -> None:
    """The ``--json`` object of a command run over many files: ``{"items": [one
    object per file done], "failed": [{"path", "error"} per file that failed]}``."""
    print_json({"items": items, "failed": failed}, **options)


class Progress:
    """A progress bar on stderr over ``total`` steps, or nothing.

    It shows only when stderr is a terminal and ``json_output`` is false, so pipes,
    logs and ``--json`` output stay clean.  Use it as a context manager; print
    result lines with :meth:`write` so they do not tear the bar.
    """

    def __init__(self, total: int, *, label: str, unit: str, json_output: bool) -> None:
        stream = sys.stderr
        self.enabled = not json_output and stream.isatty()
        self._done, self._total = 0, total
        self._bar = tqdm(
            total=total,
            desc=label,
            unit=f" {unit}",
            file=stream,
            disable=not self.enabled,
            leave=False,
            dynamic_ncols=True,
        )

    def update(self, done: int, total: int) -> None:
        """Show ``done`` of ``total`` steps (the ``on_progress`` callback)."""
        self._done, self._total = done, total
        if self.enabled:
            self._bar.total = total
            self._bar.n = done
            self._bar.refresh()

    def advance(self, steps: int = 1) -> None:
        """``steps`` more steps are done (drawn at once: steps are slow)."""
        self.update(self._done + steps, self._total)

    def describe(self, text: str) -> None:
        """Show what is being done now beside the bar."""
        self._bar.set_postfix_str(text)

    def write(self, line: str) -> None:
        """Print a result line on stdout above the bar."""
        if self.enabled:
            tqdm.write(line, file=sys.stdout)
        else:
            print(line, flush=True)

    def warn(self, line: str) -> None:
        """Print a line on stderr above the bar (a file that failed)."""
        if self.enabled:
            tqdm.write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr, flush=True)

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
