"""A particle set as another program wrote it: a RELION STAR (``data_optics`` +
``data_particles``) or a cryoSPARC ``.cs``, filtered by row and written back in the
same format with every other column unchanged (what Rebalance Orientations and
similar selections need)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from cryosparc.dataset import Dataset
from numpy.typing import NDArray

from pipelines.errors import StageInputError
from pipelines.exchange.poses import rotvec_viewing_directions
from pipelines.extraction.particles_star import (
    read_particles_star,
    write_particles_star,
)
from pipelines.io.outputs import atomic_path
from pipelines.reconstruct.rebalance import CRITERIA

__all__ = ["ParticleSet", "read_particle_set"]

STAR_SUFFIX = ".star"
CS_SUFFIX = ".cs"


@dataclass(frozen=True, slots=True, kw_only=True)
class ParticleSet:
    """``n`` particles from ``path``: ``optics`` + ``table`` (STAR) or ``dataset``
    (``.cs``); exactly one of the two forms is set."""

    path: Path
    optics: Any = None
    table: Any = None
    dataset: Dataset | None = None

    @property
    def suffix(self) -> str:
        return CS_SUFFIX if self.dataset is not None else STAR_SUFFIX

    def __len__(self) -> int:
        return len(self.dataset) if self.dataset is not None else len(self.table)

    def viewing_directions(self) -> NDArray[np.float64]:
        """Unit viewing directions ``(n, 3)``: row 2 of RELION's rotation matrix."""
        if self.dataset is not None:
            if "alignments3D/pose" not in self.dataset.fields():
                raise StageInputError(
                    self.path, "alignments3D/pose", None, "no 3D poses in the .cs"
                )
            pose = np.asarray(self.dataset["alignments3D/pose"], np.float64)
            return rotvec_viewing_directions(pose.reshape(-1, 3))
        for label in ("rlnAngleRot", "rlnAngleTilt"):
            if label not in self.table.columns:
                raise StageInputError(self.path, label, None, "no 3D poses in the STAR")
        rot = np.deg2rad(self.table["rlnAngleRot"].to_numpy(np.float64))
        tilt = np.deg2rad(self.table["rlnAngleTilt"].to_numpy(np.float64))
        return np.stack(
            [np.sin(tilt) * np.cos(rot), np.sin(tilt) * np.sin(rot), np.cos(tilt)],
            axis=1,
        )

    def badness(self, criterion: str) -> NDArray[np.float64] | None:
        """Per-particle badness for ``criterion`` (higher goes first), or None for
        ``random``; a missing column is an error naming the file and field."""
        if criterion not in CRITERIA:
            raise StageInputError(
                self.path, "criterion", criterion, f"must be one of {sorted(CRITERIA)}"
            )
        spec = CRITERIA[criterion]
        if spec is None:
            return None
        field = spec.cs_field if self.dataset is not None else spec.star_label
        if self.dataset is not None and field in self.dataset.fields():
            values = np.asarray(self.dataset[field], np.float64)
        elif self.table is not None and field is not None and field in self.table:
            values = self.table[field].to_numpy(np.float64)
        else:
            where = "a RELION STAR has no such column" if field is None else "missing"
            raise StageInputError(
                self.path,
                field or spec.cs_field,
                None,
                f"needed by criterion {criterion!r}; {where}",
            )
        return values if spec.higher_is_worse else -values

    def subset(self, keep: np.ndarray) -> ParticleSet:
        """The rows where ``keep`` (bool ``(n,)``) is true, otherwise unchanged."""
        if self.dataset is not None:
            return ParticleSet(path=self.path, dataset=self.dataset.mask(keep))
        return ParticleSet(
            path=self.path,
            optics=self.optics,
            table=self.table[np.asarray(keep, bool)].reset_index(drop=True),
        )

    def write(self, path: str | Path) -> Path:
        """Write in the input's format, atomically (temporary name, fsync, rename)."""
        target = Path(path)
        if self.dataset is not None:
            with atomic_path(target) as tmp:
                self.dataset.save(tmp)
            return target
        return write_particles_star(target, self.optics, self.table)


def read_particle_set(path: str | Path) -> ParticleSet:
    """A RELION particle STAR (``.star``) or cryoSPARC dataset (``.cs``)."""
    source = Path(path)
    if source.suffix == CS_SUFFIX:
        try:
            dataset = Dataset.load(source)
        except (OSError, ValueError, TypeError, AssertionError) as exc:
            raise StageInputError(
                source, "file", source.name, f"not a .cs: {exc}"
            ) from exc
        return ParticleSet(path=source, dataset=dataset)
    if source.suffix == STAR_SUFFIX:
        optics, table = read_particles_star(source)
        return ParticleSet(path=source, optics=optics, table=table)
    raise StageInputError(source, "suffix", source.suffix, "must be .star or .cs")
