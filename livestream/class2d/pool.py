"""The particle pool of the online 2D classifier: every particle fed so far, in
arrival order, with its STAR row and image (held in memory as float32).

Rows are identified by ``n@absolute-stack-path``, so feeding a growing
``particles.star`` again adds only its new rows.  Stack names are looked up
relative to the STAR's folder, then the project folder (RELION's convention).

The pool follows the STAR exactly once: a row that is no longer in the fed STAR
(its exposure was re-picked into a new stack, or curation now rejects it) is
*retired*: it keeps its index (the half-set of every row is its index parity, so
indices never move) but is no longer drawn, assigned or written; its image is
freed.  A retired row that comes back in a later STAR is added again as a new row.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.class2d import ParticleStack
from pipelines.class2d.particles import stack_from_tables
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import read_particles_star

__all__ = ["ParticlePool"]


def _split_names(table: Any) -> tuple[np.ndarray, np.ndarray]:
    """``rlnImageName`` ``n@stack`` as 0-based numbers and stack names."""
    parts = table["rlnImageName"].astype(str).str.split("@", n=1, expand=True)
    if parts.shape[1] != 2 or parts[1].isna().any():
        raise StageInputError(
            "<particles>",
            "rlnImageName",
            str(table["rlnImageName"].iloc[0]),
            "must be n@stack",
        )
    return parts[0].astype(int).to_numpy() - 1, parts[1].to_numpy(dtype=str)


def _stack_paths(
    table: Any, roots: list[Path]
) -> tuple[np.ndarray, list[StageInputError]]:
    """Absolute stack path of each row (the first root holding its stack; ``""``
    and a problem for a stack found in no root)."""
    _, names = _split_names(table)
    unique, inverse = np.unique(names, return_inverse=True)
    resolved, problems = [], []
    for name in unique:  # one lookup per stack file
        found = [root / name for root in roots if (root / name).exists()]
        if not found:
            problems.append(
                StageInputError(roots[0], "rlnImageName", name, "stack not found")
            )
        resolved.append(str(found[0].resolve()) if found else "")
    return np.asarray(resolved, dtype=str)[inverse], problems


def _check_stacks(
    table: Any, stacks: np.ndarray, box: tuple[int, ...] | None
) -> tuple[np.ndarray, list[StageInputError]]:
    """Rows whose stack holds their image number at the pool's box (one header
    read per stack file), and a problem for each stack that does not."""
    import mrcfile

    numbers, _ = _split_names(table)
    usable = np.ones(len(stacks), dtype=bool)
    problems = []
    unique, inverse = np.unique(stacks, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    for stack, rows in zip(unique, groups, strict=True):  # one header per stack
        try:
            with mrcfile.open(stack, mode="r", header_only=True, permissive=True) as m:
                n = int(m.header.nz)
                shape = (int(m.header.ny), int(m.header.nx))
        except (OSError, ValueError) as error:
            problems.append(StageInputError(stack, "header", None, str(error)))
            usable[rows] = False
            continue
        box = shape if box is None else box
        if shape != box:
            problems.append(StageInputError(stack, "box", shape, f"pool has {box}"))
            usable[rows] = False
        elif numbers[rows].min() < 0 or numbers[rows].max() >= n:
            problems.append(
                StageInputError(
                    stack,
                    "rlnImageName",
                    int(numbers[rows].max()) + 1,
                    f"stack holds {n} images",
                )
            )
            usable[rows] = False
    return usable, problems


def _load_rows(table: Any, stacks: np.ndarray) -> np.ndarray:
    """Images ``(n, N, N)`` float32 of the rows (one read per stack file)."""
    import mrcfile

    numbers, _ = _split_names(table)
    unique, inverse = np.unique(stacks, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    groups = np.split(order, np.cumsum(np.bincount(inverse))[:-1])
    images: np.ndarray | None = None
    for stack, rows in zip(unique, groups, strict=True):  # one read per stack
        with mrcfile.mmap(stack, mode="r", permissive=True) as mrc:
            data = mrc.data if mrc.data.ndim == 3 else mrc.data[None]
            if numbers[rows].min() < 0 or numbers[rows].max() >= data.shape[0]:
                raise StageInputError(
                    stack,
                    "rlnImageName",
                    int(numbers[rows].max()) + 1,
                    f"stack holds {data.shape[0]} images",
                )
            if images is None:
                images = np.empty((len(stacks), *data.shape[1:]), dtype=np.float32)
            images[rows] = data[numbers[rows]]
    if images is None:
        raise StageInputError("<feed>", "rows", 0, "nothing to load")
    return images


def _row_keys(table: Any, stacks: np.ndarray) -> Any:
    """``n@absolute-stack`` per row (a pandas Series)."""
    import pandas as pd

    numbers, _ = _split_names(table)
    return pd.Series(numbers.astype(str)) + "@" + pd.Series(stacks)


class ParticlePool:
    """Particles, their STAR rows (``table``) and one-row ``optics``."""

    def __init__(self, project: str | Path) -> None:
        self.project = Path(project)
        self.optics: Any = None
        self.table: Any = None
        self.stacks = np.zeros(0, dtype=str)  # absolute stack file of each row
        self.images = np.zeros((0, 0, 0), dtype=np.float32)
        self.keys = np.zeros(0, dtype=str)  # n@absolute-stack of each row
        self.active = np.zeros(0, dtype=bool)  # False: retired (see module doc)
        self._known: set[str] = set()
        self.problems: list[StageInputError] = []  # of the latest feed
        self.n_retired_last = 0  # rows the latest feed retired

    @property
    def size(self) -> int:
        """Rows ever added (the index space; retired rows included)."""
        return int(self.images.shape[0])

    @property
    def n_active(self) -> int:
        """Rows drawn, assigned and written (not retired)."""
        return int(np.count_nonzero(self.active))

    def active_rows(self) -> np.ndarray:
        """Indices of the rows that are not retired, in arrival order."""
        return np.flatnonzero(self.active)

    def retire(self, rows: np.ndarray) -> int:
        """Retire ``rows`` (indices); return how many were active."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = rows[self.active[rows]]
        self.active[rows] = False
        self.images[rows] = 0.0  # freed in content; the index stays
        self._known.difference_update(self.keys[rows].tolist())
        return int(rows.size)

    def feed(self, particles_star: str | Path) -> int:
        """Add the rows of ``particles_star`` not in the pool yet; return how many.

        Rows whose stack is missing, too short or of another box are left out and
        described in :attr:`problems` (they are tried again on the next feed)."""
        path = Path(particles_star)
        optics, table = read_particles_star(path)
        if "rlnImageName" not in table.columns:
            raise StageInputError(path, "rlnImageName", None, "column missing")
        stacks, self.problems = _stack_paths(table, [path.parent, self.project])
        keys = _row_keys(table, stacks)
        gone = self.active & ~np.isin(self.keys, keys.to_numpy(dtype=str))
        self.n_retired_last = self.retire(np.flatnonzero(gone))
        fresh = ~keys.isin(self._known).to_numpy() & (stacks != "")
        if not fresh.any():
            return 0
        box = tuple(self.images.shape[1:]) if self.size else None
        usable, problems = _check_stacks(table[fresh], stacks[fresh], box)
        self.problems += problems
        fresh[np.flatnonzero(fresh)[~usable]] = False
        if not fresh.any():
            return 0
        new = table[fresh].reset_index(drop=True)
        self.append(new, stacks[fresh], optics)
        return int(fresh.sum())

    def append(self, rows: Any, stacks: np.ndarray, optics: Any) -> None:
        import pandas as pd

        images = _load_rows(rows, stacks)
        if self.size and images.shape[1:] != self.images.shape[1:]:
            raise StageInputError(
                stacks[0], "box", images.shape[1:], f"pool has {self.images.shape[1:]}"
            )
        if self.optics is None:
            self.optics = optics
        self.images = images if not self.size else np.concatenate([self.images, images])
        self.table = (
            rows
            if self.table is None
            else pd.concat([self.table, rows], ignore_index=True)
        )
        self.stacks = np.concatenate([self.stacks, stacks])
        keys = _row_keys(rows, stacks).to_numpy(dtype=str)
        self.keys = np.concatenate([self.keys, keys])
        self.active = np.concatenate([self.active, np.ones(len(keys), dtype=bool)])
        self._known.update(keys.tolist())

    def stack(self, order: np.ndarray | None = None) -> ParticleStack:
        """The classifier's input for the rows ``order`` (default: all)."""
        return stack_from_tables(self.images, self.optics, self.table, order)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """What a checkpoint needs to rebuild the pool (rows, not images)."""

        def as_json(frame: Any) -> str:
            if frame is None:
                return ""
            return str(frame.to_json(orient="split", double_precision=15))

        return {
            "pool_project": np.array(str(self.project.resolve())),
            "pool_stacks": np.array(self.stacks, dtype=str),
            "pool_table": np.array(as_json(self.table)),
            "pool_optics": np.array(as_json(self.optics)),
            "pool_active": self.active.copy(),
        }

    @classmethod
    def from_arrays(cls, data: Any, project: str | Path | None = None) -> ParticlePool:
        """Rebuild (re-reading the images) what :meth:`to_arrays` saved."""
        import pandas as pd

        pool = cls(str(data["pool_project"]) if project is None else project)
        table_json = str(data["pool_table"])
        if table_json:
            table = pd.read_json(io.StringIO(table_json), orient="split")
            optics = pd.read_json(io.StringIO(str(data["pool_optics"])), orient="split")
            stacks = np.asarray(data["pool_stacks"], dtype=str)
            active = (
                np.asarray(data["pool_active"], dtype=bool)
                if "pool_active" in data
                else np.ones(len(stacks), dtype=bool)
            )
            pool.append_retired(table, stacks, optics, active)
        return pool

    def append_retired(
        self, rows: Any, stacks: np.ndarray, optics: Any, active: np.ndarray
    ) -> None:
        """:meth:`append` for a resumed pool: only the ``active`` rows' images are
        read (a retired row's stack may have been replaced since)."""
        import pandas as pd

        if active.all():
            self.append(rows, stacks, optics)
            return
        images = np.zeros((len(stacks), 0, 0), dtype=np.float32)
        keep = np.flatnonzero(active)
        if keep.size:
            loaded = _load_rows(rows.iloc[keep].reset_index(drop=True), stacks[keep])
            images = np.zeros((len(stacks), *loaded.shape[1:]), dtype=np.float32)
            images[keep] = loaded
        self.optics = optics if self.optics is None else self.optics
        self.images = images
        self.table = pd.DataFrame(rows).reset_index(drop=True)
        self.stacks = np.asarray(stacks, dtype=str)
        self.keys = _row_keys(self.table, self.stacks).to_numpy(dtype=str)
        self.active = np.asarray(active, dtype=bool).copy()
        self._known = set(self.keys[self.active].tolist())
