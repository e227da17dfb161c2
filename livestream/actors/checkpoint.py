"""An online actor's checkpoint: one ``actor_checkpoint.npz`` in its job folder
holding its settings (JSON), seed, mini-batches since the last snapshot, the
lengths of its particle pool's append-only files (``<job>/pool/``, fsynced before
the checkpoint is written; :mod:`livestream.class2d.pool.files`), its optimiser
state (``state_<field>``) and whatever else the actor adds; written atomically,
read back with an error naming the file.

Its size does not grow with the pool: the pool's rows are in the pool's files,
and a per-particle flag (a 1-D bool array such as ``seen``) is stored as the
indices of its set rows when that is smaller than one bit a row (the bits
otherwise), so it grows with the rows a mini-batch has used, not with the pool.
A checkpoint of the earlier layout (the pool's rows in the file) still resumes:
its rows are written into new pool files, referred to from the next checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.errors import StageInputError
from pipelines.io.outputs import atomic_path

if TYPE_CHECKING:
    from livestream.class2d.pool import ParticlePool

__all__ = [
    "CHECKPOINT_NAME",
    "SavedActor",
    "read_actor_checkpoint",
    "state_fields",
    "write_actor_checkpoint",
]

CHECKPOINT_NAME = "actor_checkpoint.npz"


def write_actor_checkpoint(
    folder: Path,
    *,
    settings: Any,
    seed: int,
    since_snapshot: int,
    pool: ParticlePool,
    state: Any | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write ``<folder>/actor_checkpoint.npz`` atomically (``settings`` and
    ``state`` are dataclasses; a state's fields are arrays, strings or ints)."""
    # the pool package loads pipelines.class2d (~2 s); the live tasks import this
    # module for CHECKPOINT_NAME at service start (an actor that writes a
    # checkpoint has loaded it already)
    from livestream.class2d.pool.files import POOL_FOLDER  # deferred: numerics

    if pool.folder != folder / POOL_FOLDER:
        raise ValueError(f"the pool's files are in {pool.folder}, not {folder}")
    arrays: dict[str, Any] = {
        "settings": np.array(json.dumps(dataclasses.asdict(settings), sort_keys=True)),
        "seed": np.int64(seed),
        "since_snapshot": np.int64(since_snapshot),
        **(extra or {}),
        **pool.to_arrays(),
    }
    if state is not None:
        for f in dataclasses.fields(state):
            value = getattr(state, f.name)
            arrays[f"state_{f.name}"] = (
                np.array(value)
                if isinstance(value, str | np.ndarray)
                else np.int64(value)
            )
    path = folder / CHECKPOINT_NAME
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **_pack_flags(arrays))
    return path


_SET, _BITS, _SIZE = "__set", "__bits", "__size"  # key suffixes of a packed flag


def _pack_flags(arrays: dict[str, Any]) -> dict[str, Any]:
    """Each 1-D bool array as the indices of its set rows or as bits (the
    smaller), with its length."""
    packed: dict[str, Any] = {}
    for name, value in arrays.items():
        if not (isinstance(value, np.ndarray) and value.dtype == bool):
            packed[name] = value
            continue
        if value.ndim != 1:
            packed[name] = value
            continue
        rows = np.flatnonzero(value)
        packed[name + _SIZE] = np.int64(value.size)
        if rows.size * 4 < (value.size + 7) // 8:
            packed[name + _SET] = rows.astype(np.uint32)
        else:
            packed[name + _BITS] = np.packbits(value)
    return packed


def _unpack_flags(data: dict[str, Any]) -> dict[str, Any]:
    """What :func:`_pack_flags` packed, as bool arrays again."""
    out = {k: v for k, v in data.items() if not k.endswith((_SET, _BITS, _SIZE))}
    for key in data:
        if not key.endswith(_SIZE):
            continue
        name, size = key[: -len(_SIZE)], int(data[key])
        if name + _SET in data:
            flags = np.zeros(size, dtype=bool)
            flags[np.asarray(data[name + _SET], dtype=np.int64)] = True
        else:
            flags = np.unpackbits(data[name + _BITS], count=size).astype(bool)
        out[name] = flags
    return out


@dataclass(frozen=True, slots=True)
class SavedActor:
    """What :func:`read_actor_checkpoint` read."""

    path: Path
    data: dict[str, Any]  # every array in the file
    settings: dict[str, Any]  # the settings dataclass's fields
    seed: int
    since_snapshot: int

    def not_one(self, error: Exception, what: str) -> StageInputError:
        """The error for a file whose contents do not make a ``what`` actor."""
        return StageInputError(
            self.path, "checkpoint", None, f"not a {what} actor checkpoint: {error}"
        )


def read_actor_checkpoint(folder: str | Path, what: str) -> SavedActor | None:
    """The checkpoint in ``folder`` (``None``: there is none); a file that is not
    one is a :class:`StageInputError` naming it."""
    path = Path(folder) / CHECKPOINT_NAME
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = _unpack_flags({name: npz[name] for name in npz.files})
        return SavedActor(
            path,
            data,
            json.loads(str(data["settings"])),
            int(data["seed"]),
            int(data["since_snapshot"]),
        )
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise StageInputError(
            path, "checkpoint", None, f"not a {what} actor checkpoint: {error}"
        ) from error


def state_fields(data: dict[str, Any], state_type: type) -> dict[str, Any]:
    """The ``state_<field>`` arrays as the fields of the dataclass ``state_type``
    (``rng_state`` a string, 0-d values ints, the rest arrays)."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(state_type):
        value = data[f"state_{f.name}"]
        if f.name == "rng_state":
            fields[f.name] = str(value)
        elif np.ndim(value) == 0:
            fields[f.name] = int(value)
        else:
            fields[f.name] = np.asarray(value)
    return fields
