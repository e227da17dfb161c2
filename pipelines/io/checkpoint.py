"""Checkpoints of the stateful optimisers (2D classes, 3D initial model): one ``.npz``.

A state is a dataclass of arrays, integer counters and the random generator's state
(JSON); its config travels beside it as JSON.  Written atomically, read back with
``allow_pickle=False``; a file that is not such a checkpoint is a
:class:`~pipelines.errors.StageInputError` naming it.  Resuming from a checkpoint
continues the run exactly: the generator picks up where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np

from pipelines.errors import StageInputError
from pipelines.io.outputs import atomic_path

__all__ = ["load_state_npz", "restore_rng", "rng_state_of", "save_state_npz"]

T = TypeVar("T")


class _State(Protocol):
    @property
    def rng_state(self) -> str: ...


def rng_state_of(rng: np.random.Generator) -> str:
    """The generator's state as JSON (what :func:`restore_rng` reads)."""
    return json.dumps(rng.bit_generator.state, default=int)


def restore_rng(rng_state: str) -> np.random.Generator:
    """A generator continuing exactly where the one of ``rng_state`` left off."""
    data = json.loads(rng_state)
    bit_generator = getattr(np.random, data["bit_generator"])()
    bit_generator.state = data
    return np.random.Generator(bit_generator)


def save_state_npz(
    path: str | Path,
    config_json: str,
    state: _State,
    *,
    arrays: tuple[str, ...],
    scalars: tuple[str, ...],
) -> Path:
    """Write ``state``'s ``arrays``, integer ``scalars``, ``rng_state`` and the config
    to ``path`` atomically."""
    contents: dict[str, Any] = {name: getattr(state, name) for name in arrays}
    contents |= {name: np.int64(getattr(state, name)) for name in scalars}
    contents["rng_state"] = np.array(state.rng_state)
    contents["config"] = np.array(config_json)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **contents)
    return Path(path)


def load_state_npz(
    path: str | Path,
    *,
    arrays: tuple[str, ...],
    scalars: tuple[str, ...],
    what: str,
    build: Callable[[str, dict[str, Any]], T],
) -> T:
    """``build(config_json, fields)`` from what :func:`save_state_npz` wrote; any
    failure to read or build is an error naming the file as not a ``what``
    checkpoint."""
    try:
        with np.load(path, allow_pickle=False) as data:
            fields: dict[str, Any] = {name: np.array(data[name]) for name in arrays}
            fields |= {name: int(data[name]) for name in scalars}
            fields["rng_state"] = str(data["rng_state"])
            return build(str(data["config"]), fields)
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise StageInputError(
            path, "checkpoint", None, f"not a {what} checkpoint: {error}"
        ) from error
