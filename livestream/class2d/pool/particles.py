"""The particle pool of the online 2D classifier: every particle fed so far, in
arrival order, with its STAR row; images stay on disk and are read on demand.

Sized for sessions of a million particles (docs/class2d.md, "Large sessions"):

* **Feed reads the tail.**  ``particles.star`` only grows between Extract batches
  (the writer rewrites it atomically with the same prefix), so a feed reads only
  the bytes after the previous feed's end once the file's header (everything up to
  the first particle row) and the last bytes already read are unchanged; anything
  else (a shorter file, a new optics group, edited rows) falls back to a full read,
  which also retires rows (below).
* **Images are memory-mapped.**  A row is (stack, image number); a mini-batch's
  images are gathered from the ``.mrcs`` stacks through a bounded LRU of
  ``numpy.memmap`` views (``MAX_OPEN_STACKS``), so the resident memory does not
  grow with the pool.
* **Rows are compact and on disk.**  In memory, per row: stack id, image number,
  active flag, the CTF columns and where its STAR values are; the STAR values
  themselves are appended to the pool's files (:mod:`livestream.class2d.pool.files`)
  and read back only for the rows a snapshot writes.
* **A checkpoint refers to the files by length.**  The files only grow, so a
  checkpoint stores their lengths (after an fsync), not their rows; a resumed
  pool cuts them back to those lengths.

Rows are identified by (absolute stack path, image number), so feeding a growing
``particles.star`` again adds only its new rows.  Stack names are looked up
relative to the STAR's folder, then the project folder (RELION's convention).

The pool follows the STAR exactly once: a row that is no longer in the fed STAR
(its exposure was re-picked into a new stack, or curation now rejects it) is
*retired*: it keeps its index (the half-set of every row is its index parity, so
indices never move) but is no longer drawn, assigned or written.  A retired row
that comes back in a later STAR is added again as a new row.
"""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from livestream.class2d.pool.files import INDEX_DTYPE, PoolFiles
from livestream.class2d.pool.legacy import from_columns, from_table_json
from livestream.class2d.pool.star import (
    StackHeader,
    header_lines,
    particles_start,
    read_stack_header,
    row_lines,
    rows_end,
    split_image_names,
    stack_paths,
)
from pipelines.class2d import ParticleStack
from pipelines.class2d.particles import stack_from_tables
from pipelines.errors import StageInputError
from pipelines.extraction.particles_star import read_particles_star

__all__ = ["MAX_OPEN_STACKS", "POOL_FORMAT", "ParticlePool"]

POOL_FORMAT = 2  # the checkpoint layout of to_arrays (1: rows in the checkpoint)
MAX_OPEN_STACKS = 256  # memory maps kept open (least recently used closed first)
_TAIL_CHECK = 256  # bytes before the previous end that must be unchanged
_CTF = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnPhaseShift")


class _Grow:
    """A 1-D array that grows by doubling (amortised O(1) append)."""

    def __init__(self, dtype: Any) -> None:
        self.data = np.zeros(1024, dtype=dtype)
        self.n = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > self.data.size:
            grown = np.zeros(max(need, 2 * self.data.size), dtype=self.data.dtype)
            grown[: self.n] = self.data[: self.n]
            self.data = grown
        self.data[self.n : need] = values
        self.n = need

    @property
    def view(self) -> np.ndarray:
        return self.data[: self.n]


class ParticlePool:
    """Particles, their STAR rows (``table``) and one-row ``optics``."""

    def __init__(
        self,
        project: str | Path,
        folder: str | Path | None = None,
        *,
        files: PoolFiles | None = None,
    ) -> None:
        """An empty pool whose files are in ``folder`` (emptied; ``None``: a
        temporary folder, for a pool no checkpoint refers to); ``files``: files
        already holding rows (:meth:`from_arrays`)."""
        self.project = Path(project)
        self.optics: Any = None
        self._files = files if files is not None else PoolFiles.create(folder)
        # (first row, columns, dtypes) each time the fed columns change
        self._segments: list[tuple[int, list[str], list[str]]] = []
        self._offset = _Grow(np.int64)  # where each row's STAR values start
        self._stacks_written = 0  # stacks in the files
        self._stack_id = _Grow(np.int32)  # index into _stacks per row
        self._number = _Grow(np.int32)  # 0-based image number per row
        self._active = _Grow(np.bool_)  # False: retired (see module doc)
        self._ctf = {name: _Grow(np.float64) for name in _CTF}
        self._stacks: list[StackHeader] = []
        self._stack_index: dict[str, int] = {}
        self._stack_names: list[str] = []  # the stack name as the STAR spells it
        self._known: set[int] = set()  # keys (stack id << 32 | number) of active rows
        self._maps: OrderedDict[int, np.ndarray] = OrderedDict()
        self._tail: tuple[str, int, bytes, bytes, list[str], Any] | None = None
        self.problems: list[StageInputError] = []  # of the latest feed
        self.n_retired_last = 0  # rows the latest feed retired
        self.last_feed_read = "none"  # "tail" or "full": how the latest feed read

    # -- rows -----------------------------------------------------------------
    @property
    def size(self) -> int:
        """Rows ever added (the index space; retired rows included)."""
        return self._number.n

    @property
    def active(self) -> np.ndarray:
        """Per row: False when retired."""
        return self._active.view

    @property
    def n_active(self) -> int:
        """Rows drawn, assigned and written (not retired)."""
        return int(np.count_nonzero(self.active))

    @property
    def box(self) -> tuple[int, int]:
        """Image shape of the pool's particles (from the first stack)."""
        if not self._stacks:
            raise StageInputError(self.project, "pool", 0, "no particles yet")
        return self._stacks[0].shape

    @property
    def stacks(self) -> np.ndarray:
        """Absolute stack file of each row."""
        paths = np.asarray([s.path for s in self._stacks] or [""], dtype=str)
        chosen: np.ndarray = paths[self._stack_id.view]
        return chosen

    @property
    def folder(self) -> Path:
        """Where the pool's files are."""
        return self._files.folder

    @property
    def table(self) -> Any:
        """Every row's STAR columns, read from the pool's files (``None`` before
        the first row); a snapshot reads only its rows (:meth:`rows_table`)."""
        return self.rows_table(np.arange(self.size)) if self.size else None

    def rows_table(self, rows: np.ndarray) -> Any:
        """The STAR rows of pool indices ``rows``, in that order, read from the
        pool's ``rows.txt`` (only those rows' bytes)."""
        import pandas as pd

        rows = np.asarray(rows, dtype=np.int64)
        order = np.argsort(rows, kind="stable")
        ordered = rows[order]
        offsets = self._offset.view
        after = np.minimum(ordered + 1, self.size - 1)
        ends = np.where(
            ordered + 1 < self.size, offsets[after], self._files.lengths["text"]
        )
        starts = offsets[ordered]
        first_rows = np.asarray([seg[0] for seg in self._segments], dtype=np.int64)
        segment = np.searchsorted(first_rows, ordered, side="right") - 1
        parts = []
        for k in np.unique(segment):
            _, columns, dtypes = self._segments[k]
            members = segment == k
            raw = self._files.read_lines(starts[members], ends[members])
            parts.append(
                pd.read_csv(
                    io.BytesIO(raw),
                    sep=r"\s+",
                    header=None,
                    names=columns,
                    comment="#",
                    dtype={
                        c: pd.api.types.pandas_dtype(d)
                        for c, d in zip(columns, dtypes, strict=True)
                    },
                )
            )
        if not parts:
            columns = self._segments[-1][1] if self._segments else ["rlnImageName"]
            return pd.DataFrame(columns=columns)
        gathered = parts[0] if len(parts) == 1 else pd.concat(parts, ignore_index=True)
        if np.any(np.diff(rows) < 0):  # back to the order asked for
            back = np.empty_like(order)
            back[order] = np.arange(order.size)
            gathered = gathered.iloc[back]
        return gathered.reset_index(drop=True)

    def active_rows(self) -> np.ndarray:
        """Indices of the rows that are not retired, in arrival order."""
        return np.flatnonzero(self.active)

    def _keys(self, rows: np.ndarray | slice = slice(None)) -> np.ndarray:
        sid = self._stack_id.view[rows].astype(np.int64)
        return (sid << 32) | self._number.view[rows].astype(np.int64)

    def retire(self, rows: np.ndarray) -> int:
        """Retire ``rows`` (indices); return how many were active."""
        rows = np.asarray(rows, dtype=np.int64)
        rows = np.unique(rows[self.active[rows]])
        self.active[rows] = False
        self._files.append_retired(rows)
        self._known.difference_update(self._keys(rows).tolist())
        return int(rows.size)

    # -- images ---------------------------------------------------------------
    def _map(self, stack_id: int) -> np.ndarray:
        mapped = self._maps.get(stack_id)
        if mapped is None:
            s = self._stacks[stack_id]
            mapped = np.memmap(
                s.path, dtype=s.dtype, mode="r", offset=s.offset, shape=(s.n, *s.shape)
            )
            self._maps[stack_id] = mapped
            while len(self._maps) > MAX_OPEN_STACKS:
                self._maps.popitem(last=False)
        else:
            self._maps.move_to_end(stack_id)
        return mapped

    def read_images(self, rows: np.ndarray) -> np.ndarray:
        """Images ``(len(rows), N, N)`` float32 of pool indices ``rows``, read from
        their stacks (one memory map per stack, at most ``MAX_OPEN_STACKS`` open)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, *self.box), dtype=np.float32)
        ids = self._stack_id.view[rows]
        numbers = self._number.view[rows]
        order = np.argsort(ids, kind="stable")
        bounds = np.flatnonzero(np.diff(ids[order])) + 1
        for group in np.split(order, bounds):  # one gather per stack
            if group.size:
                out[group] = self._map(int(ids[group[0]]))[numbers[group]]
        return out

    def stack(self, order: np.ndarray | None = None) -> ParticleStack:
        """The classifier's input for the rows ``order`` (default: all)."""
        rows = np.arange(self.size) if order is None else np.asarray(order)
        frame = {name: self._ctf[name].view[rows] for name in _CTF}
        import pandas as pd

        return stack_from_tables(
            self.read_images(rows), self.optics, pd.DataFrame(frame), None
        )

    # -- feeding --------------------------------------------------------------
    def _read_tail(self, path: Path) -> tuple[Any, Any, Any] | None:
        """``(optics, new rows, their lines)`` when ``path`` only grew since the
        last feed, else None (read it all)."""
        import pandas as pd

        if self._tail is None or self._tail[0] != str(path.resolve()):
            return None
        _, end, head, before, columns, dtypes = self._tail
        size = path.stat().st_size
        if size < end:
            return None
        with open(path, "rb") as fh:
            start = fh.read(len(head) + 4096)
            try:
                if start[: particles_start(start)] != head and header_lines(
                    start[: particles_start(start)]
                ) != header_lines(head):
                    return None
            except ValueError:
                return None
            if particles_start(start) != len(head):
                return None
            fh.seek(end - len(before))
            if fh.read(len(before)) != before:
                return None
            new = fh.read(size - end)
        cut = rows_end(new)
        new = new[:cut]
        if b"data_" in new or b"loop_" in new:
            return None
        lines = row_lines(new)
        if not new.strip():
            table = pd.DataFrame({c: pd.Series(dtype=dtypes[c]) for c in columns})
        else:
            try:
                table = pd.read_csv(
                    io.BytesIO(new),
                    sep=r"\s+",
                    header=None,
                    names=columns,
                    dtype=dtypes,
                    comment="#",
                )
            except (ValueError, pd.errors.ParserError):
                return None
        self._remember(path, end + cut, head, columns, dtypes)
        return self.optics, table, lines if len(lines) == len(table) else None

    def _remember(
        self, path: Path, end: int, head: bytes, columns: list[str], dtypes: Any
    ) -> None:
        with open(path, "rb") as fh:
            fh.seek(max(len(head), end - _TAIL_CHECK))
            before = fh.read(end - max(len(head), end - _TAIL_CHECK))
        self._tail = (str(path.resolve()), end, head, before, columns, dtypes)

    def _read_full(self, path: Path) -> tuple[Any, Any, Any]:
        optics, table = read_particles_star(path)
        raw = path.read_bytes()
        self._tail = None
        try:
            start = particles_start(raw)
        except ValueError:
            return optics, table, None
        end = rows_end(raw)
        if end >= start:
            dtypes = {c: table[c].dtype for c in table.columns}
            self._remember(path, end, raw[:start], list(table.columns), dtypes)
        return optics, table, None

    def feed(self, particles_star: str | Path) -> int:
        """Add the rows of ``particles_star`` not in the pool yet; return how many.

        Rows whose stack is missing, too short or of another box are left out and
        described in :attr:`problems` (they are tried again on the next full
        read: a rewritten STAR, or the next start)."""
        path = Path(particles_star)
        tail = self._read_tail(path)
        self.last_feed_read = "tail" if tail is not None else "full"
        optics, table, lines = tail if tail is not None else self._read_full(path)
        if "rlnImageName" not in table.columns:
            raise StageInputError(path, "rlnImageName", None, "column missing")
        self.n_retired_last = 0
        self.problems = []
        if not len(table):
            return 0
        numbers, names = split_image_names(table)
        stacks, self.problems = stack_paths(names, [path.parent, self.project])
        if self.problems:
            self._tail = None  # rows left out: the next feed reads all, retries them
        ids = np.asarray([self._stack_index.get(s, -1) for s in stacks], np.int64)
        keys = np.where(ids >= 0, (ids << 32) | numbers, -1)
        if tail is None and self.size:  # the whole STAR: retire rows not in it
            gone = self.active & ~np.isin(self._keys(), keys)
            self.n_retired_last = self.retire(np.flatnonzero(gone))
        known = self._known
        old = np.fromiter((k in known for k in keys.tolist()), bool, len(keys))
        fresh = (stacks != "") & ~old
        if not fresh.any():
            return 0
        usable = self._register_stacks(numbers, names, stacks, fresh)
        if self.problems or not usable.all():
            self._tail = None  # rows left out: the next feed reads all, retries them
        fresh &= usable
        if not fresh.any():
            return 0
        if self.optics is None:
            self.optics = optics
        rows = table[fresh].reset_index(drop=True)
        ids = np.asarray([self._stack_index[s] for s in stacks[fresh]], np.int64)
        text = None if lines is None else b"\n".join(lines[fresh]) + b"\n"
        self._add(rows, ids, numbers[fresh], text)
        return int(fresh.sum())

    def _register_stacks(
        self, numbers: np.ndarray, names: np.ndarray, stacks: np.ndarray, rows: Any
    ) -> np.ndarray:
        """Read the header of each new stack; whether each row's image is there at
        the pool's box (a problem per stack that is not)."""
        usable = np.ones(len(stacks), dtype=bool)
        chosen = np.flatnonzero(rows)
        unique, inverse = np.unique(stacks[chosen], return_inverse=True)
        for k, stack in enumerate(unique):
            members = chosen[inverse == k]
            known = self._stack_index.get(stack)
            try:
                info = (
                    self._stacks[known]
                    if known is not None
                    else read_stack_header(stack)
                )
            except (OSError, ValueError) as error:
                self.problems.append(StageInputError(stack, "header", None, str(error)))
                usable[members] = False
                continue
            box = self._stacks[0].shape if self._stacks else info.shape
            if info.shape != box:
                self.problems.append(
                    StageInputError(stack, "box", info.shape, f"pool has {box}")
                )
                usable[members] = False
                continue
            if numbers[members].min() < 0 or numbers[members].max() >= info.n:
                if known is not None:  # the stack grew since: read it again
                    info = read_stack_header(stack)
                    self._stacks[known] = info
                    self._maps.pop(known, None)
                if numbers[members].min() < 0 or numbers[members].max() >= info.n:
                    self.problems.append(
                        StageInputError(
                            stack,
                            "rlnImageName",
                            int(numbers[members].max()) + 1,
                            f"stack holds {info.n} images",
                        )
                    )
                    usable[members] = False
                    continue
            if known is None:
                self._stack_index[stack] = len(self._stacks)
                self._stacks.append(info)
                self._stack_names.append(str(names[members[0]]))
        return usable

    def _add(
        self, rows: Any, ids: np.ndarray, numbers: np.ndarray, text: bytes | None = None
    ) -> None:
        """Append ``rows`` (their stacks' ids and image numbers; ``text``: their
        STAR lines as read, else they are formatted) to the pool's files and its
        arrays."""
        columns = [str(c) for c in rows.columns]
        dtypes = [str(rows[c].dtype) for c in rows.columns]
        if not self._segments or self._segments[-1][1:] != (columns, dtypes):
            self._segments.append((self.size, columns, dtypes))
        index = np.zeros(len(ids), dtype=INDEX_DTYPE)
        index["stack"], index["number"] = ids, numbers
        for k, name in enumerate(_CTF):
            if name in rows.columns:
                index["ctf"][:, k] = rows[name].to_numpy(dtype=np.float64)
        if text is None:
            text = rows.to_csv(
                sep=" ", header=False, index=False, lineterminator="\n"
            ).encode()
        new = zip(
            self._stacks[self._stacks_written :],
            self._stack_names[self._stacks_written :],
            strict=True,
        )
        self._files.append_stacks([(s.path, n) for s, n in new])
        self._stacks_written = len(self._stacks)
        self._files.append_rows(text, index)
        self._extend(index)

    def _extend(self, index: np.ndarray) -> None:
        """The in-memory arrays of rows ``index`` (:data:`INDEX_DTYPE`), active."""
        ids = index["stack"].astype(np.int64)
        numbers = index["number"].astype(np.int64)
        self._offset.extend(index["offset"])
        self._stack_id.extend(ids)
        self._number.extend(numbers)
        self._active.extend(np.ones(len(ids), dtype=bool))
        for k, name in enumerate(_CTF):
            self._ctf[name].extend(index["ctf"][:, k])
        self._known.update(((ids << 32) | numbers).tolist())

    # -- checkpoint -----------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        """What a checkpoint needs to rebuild the pool: the lengths of its files
        (fsynced first, so the checkpoint never refers to bytes not on disk), the
        columns of each stretch of rows and the optics; no rows, no images."""
        lengths = self._files.sync()
        arrays: dict[str, np.ndarray] = {
            "pool_format": np.array(POOL_FORMAT, dtype=np.int64),
            "pool_project": np.array(str(self.project.resolve())),
            "pool_segments": np.array(json.dumps(self._segments)),
            "pool_optics": np.array(
                ""
                if self.optics is None
                else str(self.optics.to_json(orient="split", double_precision=15))
            ),
        }
        for key, value in lengths.items():
            arrays[f"pool_length_{key}"] = np.array(value, dtype=np.int64)
        return arrays

    @classmethod
    def from_arrays(
        cls,
        data: Any,
        project: str | Path | None = None,
        folder: str | Path | None = None,
    ) -> ParticlePool:
        """Rebuild what :meth:`to_arrays` saved from the files in ``folder`` (cut
        back to the saved lengths; the active rows' stack headers are read again,
        a retired row's stack may be gone).  A checkpoint of an earlier layout
        (the rows in the checkpoint) is rebuilt into new files in ``folder``."""
        project = str(data["pool_project"]) if project is None else project
        if "pool_format" not in data:  # the rows are in the checkpoint
            pool = cls(project, folder)
            if "pool_table" in data:  # before the pool index
                return from_table_json(pool, data)
            if "pool_columns" in data:
                return from_columns(pool, data)
            return pool
        if folder is None:
            raise ValueError("a pool checkpoint needs the folder of its files")
        lengths = {
            str(k)[len("pool_length_") :]: int(data[k])
            for k in data
            if str(k).startswith("pool_length_")
        }
        files = PoolFiles.reopen(folder, lengths)
        pool = cls(project, files=files)
        pool._segments = [
            (int(a), list(b), list(c))
            for a, b, c in json.loads(str(data["pool_segments"]))
        ]
        if str(data["pool_optics"]):
            import pandas as pd

            pool.optics = pd.read_json(
                io.StringIO(str(data["pool_optics"])), orient="split"
            )
        index = files.read_index()
        stacks = files.read_stacks()
        if index.size and int(index["stack"].max()) >= len(stacks):
            raise StageInputError(
                files.folder / "stacks.jsonl",
                "stack",
                int(index["stack"].max()),
                f"only {len(stacks)} stacks",
            )
        active = np.ones(index.size, dtype=bool)
        active[files.read_retired()] = False
        pool._load_stacks(stacks, index["stack"][active])
        pool._stacks_written = len(stacks)
        pool._extend(index)
        pool._active.view[:] = active
        pool._known = set(pool._keys(np.flatnonzero(active)).tolist())
        return pool

    def _load_stacks(self, stacks: list[tuple[str, str]], live_ids: np.ndarray) -> None:
        """Register ``(path, name)`` stacks in id order, reading the headers of
        those in ``live_ids`` (a stack of retired rows only may be gone)."""
        live = sorted(set(np.unique(live_ids).tolist()))
        headers = {k: read_stack_header(stacks[k][0]) for k in live}
        box = headers[live[0]].shape if live else (0, 0)
        for k, (path, name) in enumerate(stacks):
            self._stack_index[path] = k
            self._stack_names.append(name)
            self._stacks.append(
                headers.get(k, StackHeader(path, np.float32, 0, 0, box))
            )
