"""The one path-containment rule: what a session may make us open.

A movie or metadata file is read only when its *resolved* path (symbolic links
followed, ``..`` removed) lies inside one of the configured folders: the session
folder and the movie folders.  Anything else (a symlink to ``/etc/passwd`` named
``.mrc``, an mdoc ``SubFramePath`` that is absolute or climbs with ``../..``) is
refused with a :class:`~mdcatch.errors.MetadataError` naming the file that
pointed there, the field and the value, before anything outside is opened.

Example::

    movie = check_inside(
        Path("/data/session/a_Fractions.mrc"),
        [Path("/data/session"), Path("/data/movies")],
        source=Path("/data/session/a_Fractions.mrc"),
        field="movie_path",
    )
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from mdcatch.errors import MetadataError

__all__ = ["check_inside"]


def check_inside(
    path: Path,
    folders: Sequence[Path],
    *,
    source: Path,
    field: str,
    value: object = None,
) -> Path:
    """The resolved ``path``, if it lies inside one of ``folders`` (also resolved).

    ``source`` is the file that named ``path`` (the path itself for a watched
    file), ``field`` the field it was named in (``movie_path``, ``SubFramePath``,
    ...) and ``value`` the value as written there (default: ``str(path)``).
    Raises :class:`MetadataError` for a path outside every folder and for one
    that cannot be resolved (a symbolic link loop).  The check only resolves
    names: nothing is opened.
    """
    shown = str(path) if value is None else value
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as error:  # RuntimeError: a loop (Python < 3.13)
        raise MetadataError(
            source, field, shown, f"cannot be resolved (symbolic link loop?): {error}"
        ) from error
    roots = [Path(folder).resolve() for folder in folders]
    if any(resolved.is_relative_to(root) for root in roots):
        return resolved
    names = ", ".join(str(root) for root in roots) or "none configured"
    raise MetadataError(
        source,
        field,
        shown,
        f"resolves to {resolved}, outside the session and movie folders ({names})",
    )
