"""Pool checkpoints of the layouts before the append-only pool files: the rows
were in the checkpoint itself.  They are rebuilt into a new pool (and so into
new pool files), after which the pool checkpoints in the current layout."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

import numpy as np

from livestream.class2d.pool.star import split_image_names

if TYPE_CHECKING:
    from livestream.class2d.pool.particles import ParticlePool

__all__ = ["from_columns", "from_table_json"]


def from_columns(pool: ParticlePool, data: Any) -> ParticlePool:
    """A checkpoint of the pool index in the checkpoint (before the pool's
    files): per row stack id, number, active flag and STAR columns."""
    import pandas as pd

    ids = np.asarray(data["pool_stack_id"], dtype=np.int64)
    numbers = np.asarray(data["pool_number"], dtype=np.int64)
    active = np.asarray(data["pool_active"], dtype=bool)
    paths = [str(p) for p in np.atleast_1d(data["pool_stack_paths"])]
    names = [str(p) for p in np.atleast_1d(data["pool_stack_names"])]
    pool._load_stacks(list(zip(paths, names, strict=True)), ids[active])
    columns: dict[str, Any] = {}
    for k, name in enumerate(str(c) for c in data["pool_columns"]):
        if name == "rlnImageName":
            stack_names = np.asarray(names, dtype=object)[ids]
            columns[name] = [
                f"{n + 1:06d}@{s}" for n, s in zip(numbers, stack_names, strict=True)
            ]
        elif f"pool_col{k}_codes" in data:
            values = np.asarray(data[f"pool_col{k}_values"], dtype=object)
            columns[name] = values[np.asarray(data[f"pool_col{k}_codes"])]
        else:
            columns[name] = np.asarray(data[f"pool_col{k}"])
    pool.optics = pd.read_json(io.StringIO(str(data["pool_optics"])), orient="split")
    pool._add(pd.DataFrame(columns), ids, numbers)
    pool.retire(np.flatnonzero(~active))
    return pool


def from_table_json(pool: ParticlePool, data: Any) -> ParticlePool:
    """A checkpoint written before the pool index (the STAR rows as JSON and
    each row's absolute stack): rebuilt into the same rows and active mask."""
    import pandas as pd

    table_json = str(data["pool_table"])
    if not table_json:
        return pool
    table = pd.read_json(io.StringIO(table_json), orient="split")
    stacks = np.asarray(data["pool_stacks"], dtype=str)
    active = (
        np.asarray(data["pool_active"], dtype=bool)
        if "pool_active" in data
        else np.ones(len(stacks), dtype=bool)
    )
    numbers, names = split_image_names(table)
    unique, first, inverse = np.unique(stacks, return_index=True, return_inverse=True)
    pool._load_stacks(
        [(str(p), str(names[k])) for p, k in zip(unique, first, strict=True)],
        inverse[active],
    )
    pool.optics = pd.read_json(io.StringIO(str(data["pool_optics"])), orient="split")
    pool._add(table, inverse.astype(np.int64), numbers.astype(np.int64))
    pool.retire(np.flatnonzero(~active))
    return pool
