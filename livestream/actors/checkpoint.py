"""An online actor's checkpoint: one ``actor_checkpoint.npz`` in its job folder
holding its settings (JSON), seed, mini-batches since the last snapshot, its
particle pool's rows, its optimiser state (``state_<field>``) and whatever else
the actor adds; written atomically, read back with an error naming the file."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from livestream.class2d.pool import ParticlePool
from pipelines.errors import StageInputError
from pipelines.io.outputs import atomic_path

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
        np.savez(fh, **arrays)
    return path


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
            data = {name: npz[name] for name in npz.files}
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
