"""The particle pool's files: append-only, so a checkpoint refers to them by
length instead of rewriting them (docs/class2d.md, "Large sessions").

Four files in the pool's folder (``<actor job>/pool/``), each only ever grown:

* ``index.bin``: one fixed-width record per row (:data:`INDEX_DTYPE`: stack id,
  0-based image number, the byte offset of the row's STAR values in
  ``rows.txt``, the four CTF columns the classifier reads);
* ``rows.txt``: each row's STAR values, one line a row (the line as the fed STAR
  has it, or as pandas writes the row when the whole STAR was read; the columns
  and their types are the checkpoint's ``pool_segments``);
* ``stacks.jsonl``: one ``[absolute path, name as the STAR spells it]`` a stack;
* ``retired.bin``: the indices of retired rows (``int64``), in retirement order.

A feed appends; :meth:`PoolFiles.sync` flushes and fsyncs and returns the
lengths, which the checkpoint stores (after the sync, so it never refers to
bytes that are not on disk).  :meth:`PoolFiles.reopen` cuts every file back to a
checkpoint's lengths: what a feed appended after the last checkpoint (a SIGKILL
between the two) is dropped, and the next feed adds those rows again, once.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.errors import StageInputError
from pipelines.io.outputs import fsync_directory

__all__ = ["INDEX_DTYPE", "POOL_FOLDER", "PoolFiles"]

POOL_FOLDER = "pool"  # the pool's folder in the actor's job folder
INDEX_DTYPE = np.dtype(
    [
        ("stack", "<i4"),
        ("number", "<i4"),
        ("offset", "<i8"),
        ("ctf", "<f8", (4,)),
    ]
)
_NAMES = {
    "index": "index.bin",
    "text": "rows.txt",
    "stacks": "stacks.jsonl",
    "retired": "retired.bin",
}
# the unit of each length a checkpoint stores: records, bytes, bytes, indices
_GATHER_BYTES = 1 << 24  # output bytes gathered at once
_UNIT = {"index": INDEX_DTYPE.itemsize, "text": 1, "stacks": 1, "retired": 8}


class PoolFiles:
    """The append-only files of one pool (module docstring); ``lengths`` says
    how much of each belongs to the pool (rows, bytes, bytes, retired rows)."""

    def __init__(self, folder: Path, lengths: dict[str, int]) -> None:
        self.folder = folder
        self.lengths = dict(lengths)
        self._unsynced: set[str] = set()
        self._created = False  # the files' names not yet synced in the folder

    @classmethod
    def create(cls, folder: str | Path | None) -> PoolFiles:
        """Empty files in ``folder`` (any there are cut to nothing); ``None``: a
        temporary folder removed with the object (a pool without an actor)."""
        if folder is None:
            path = Path(tempfile.mkdtemp(prefix="livestream-pool-"))
            files = cls(path, dict.fromkeys(_NAMES, 0))
            weakref.finalize(files, shutil.rmtree, path, True)
        else:
            path = Path(folder)
            path.mkdir(parents=True, exist_ok=True)
            files = cls(path, dict.fromkeys(_NAMES, 0))
        files._created = True
        for name in _NAMES.values():
            with open(path / name, "wb"):
                pass
        return files

    @classmethod
    def reopen(cls, folder: str | Path, lengths: dict[str, int]) -> PoolFiles:
        """The files in ``folder`` cut back to ``lengths`` (a checkpoint's); a
        file shorter than that is a :class:`StageInputError` naming it."""
        path = Path(folder)
        for key, name in _NAMES.items():
            size = int(lengths[key]) * _UNIT[key]
            file = path / name
            try:
                have = file.stat().st_size
            except FileNotFoundError:
                have = -1
            if have < size:
                raise StageInputError(
                    file,
                    "size",
                    max(have, 0),
                    f"the checkpoint refers to {size} bytes "
                    + ("(missing)" if have < 0 else ""),
                )
            if have > size:  # appended after the checkpoint: dropped
                os.truncate(file, size)
        return cls(path, {k: int(v) for k, v in lengths.items()})

    # -- appending --------------------------------------------------------------
    def _append(self, key: str, data: bytes) -> int:
        """Append ``data`` to file ``key``; return the byte offset it starts at."""
        start = self.lengths[key] * _UNIT[key]
        with open(self.folder / _NAMES[key], "r+b") as fh:
            fh.seek(start)  # at the pool's end, whatever a dropped append left
            fh.write(data)
        self._unsynced.add(key)
        return start

    def append_rows(self, text: bytes, index: np.ndarray) -> None:
        """Rows' STAR lines (``text``, one line a row, in order) and their
        :data:`INDEX_DTYPE` records, whose ``offset`` this fills in."""
        ends = np.flatnonzero(np.frombuffer(text, dtype=np.uint8) == ord("\n")) + 1
        if ends.size != index.size:
            raise ValueError(f"{ends.size} lines for {index.size} rows")
        start = self._append("text", text)
        index["offset"] = start + np.concatenate(([0], ends[:-1]))
        self.lengths["text"] += len(text)
        self._append("index", np.ascontiguousarray(index, INDEX_DTYPE).tobytes())
        self.lengths["index"] += index.size

    def append_stacks(self, stacks: list[tuple[str, str]]) -> None:
        """New stacks as ``(absolute path, name)``, in stack-id order."""
        if stacks:
            text = "".join(json.dumps(list(s)) + "\n" for s in stacks).encode()
            self._append("stacks", text)
            self.lengths["stacks"] += len(text)

    def append_retired(self, rows: np.ndarray) -> None:
        if rows.size:
            self._append("retired", np.asarray(rows, "<i8").tobytes())
            self.lengths["retired"] += rows.size

    def sync(self) -> dict[str, int]:
        """fsync what was appended since the last sync; the lengths to store."""
        for key in sorted(self._unsynced):
            with open(self.folder / _NAMES[key], "rb+") as fh:
                os.fsync(fh.fileno())
        self._unsynced.clear()
        if self._created:  # new files: their names too
            fsync_directory(self.folder)
            fsync_directory(self.folder.parent)
            self._created = False
        return dict(self.lengths)

    # -- reading ----------------------------------------------------------------
    def read_index(self) -> np.ndarray:
        return np.fromfile(
            self.folder / _NAMES["index"], INDEX_DTYPE, self.lengths["index"]
        )

    def read_stacks(self) -> list[tuple[str, str]]:
        with open(self.folder / _NAMES["stacks"], "rb") as fh:
            raw = fh.read(self.lengths["stacks"])
        stacks: list[Any] = [json.loads(line) for line in raw.splitlines()]
        return [(str(p), str(n)) for p, n in stacks]

    def read_retired(self) -> np.ndarray:
        return np.fromfile(
            self.folder / _NAMES["retired"], "<i8", self.lengths["retired"]
        )

    def read_lines(self, starts: np.ndarray, ends: np.ndarray) -> bytes:
        """The bytes ``[starts[i], ends[i])`` of ``rows.txt`` joined, in order:
        consecutive lines merged into runs, each run one slice of a memory map
        (a bounded sample is one vectorised gather per block of runs)."""
        if not starts.size:
            return b""
        text = np.memmap(
            self.folder / _NAMES["text"], np.uint8, "r", shape=(self.lengths["text"],)
        )
        breaks = np.flatnonzero(starts[1:] != ends[:-1]) + 1
        run_starts = starts[np.concatenate(([0], breaks))]
        run_ends = ends[np.concatenate((breaks - 1, [ends.size - 1]))]
        lengths = run_ends - run_starts
        parts = []
        block = np.concatenate(([0], np.cumsum(lengths)))
        cuts = np.searchsorted(block, np.arange(0, block[-1], _GATHER_BYTES))
        for a, b in zip(cuts, np.append(cuts[1:], lengths.size), strict=True):
            if b - a == 1:
                parts.append(bytes(text[run_starts[a] : run_ends[a]]))
            elif b > a:
                n, s = lengths[a:b], run_starts[a:b]
                at = np.repeat(s - (np.cumsum(n) - n), n) + np.arange(int(n.sum()))
                parts.append(bytes(text[at]))
        return b"".join(parts)
