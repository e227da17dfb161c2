"""The ``Movies`` link: how a RELION project reaches the session's movies.

RELION names every input relative to the project folder, and a project made by
RELION's Import job reaches the microscope's files through a link inside it.  The
service does the same: ``<project>/Movies`` is a symbolic link to the session
folder (made at start-up, never replaced when it points elsewhere; the service
never writes into the session folder), and a movie (or gain reference) inside the
session is named ``Movies/<path inside the session>`` in
``Import/job001/movies.star`` and in the per-movie motion STAR files.  A movie outside the session (a ``movie_roots``
folder) keeps its absolute path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["MOVIES_LINK", "link_movies", "movie_name"]

log = logging.getLogger(__name__)

MOVIES_LINK = "Movies"


def link_movies(project: Path, session: Path) -> Path | None:
    """Make ``<project>/Movies`` point at ``session``; return the link, or
    ``None`` when ``Movies`` exists and is something else (left as it is) or the
    project is inside the session (a link would make a loop)."""
    link = project / MOVIES_LINK
    target = session.absolute()
    if project.absolute().is_relative_to(target):
        log.warning("the project %s is inside the session: no Movies link", project)
        return None
    if link.is_symlink():
        if Path(os.readlink(link)) == target:
            return link
        log.warning(
            "%s points at %s, not the session %s", link, link.readlink(), target
        )
        return None
    if link.exists():
        log.warning("%s exists and is not a link: movies keep absolute paths", link)
        return None
    project.mkdir(parents=True, exist_ok=True)
    tmp = link.with_name(f".{MOVIES_LINK}.link.partial")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)
    return link


def movie_name(project: Path, movie: Path) -> str:
    """``movie`` as RELION names it in this project: through the ``Movies`` link
    when that link leads to a folder holding it, else its absolute path."""
    link = project / MOVIES_LINK
    if link.is_symlink():
        session = Path(os.readlink(link))
        try:
            inside = movie.absolute().relative_to(session)
        except ValueError:
            pass
        else:
            return f"{MOVIES_LINK}/{inside.as_posix()}"
    return str(movie)
