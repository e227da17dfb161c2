"""File formats shared by the stages: movies and micrographs in (header checked before any frame is read), crash-safe outputs (temporary name, fsync, rename)."""

from pipelines.io.micrographs import read_micrograph
from pipelines.io.movies import (
    eer_frames_per_group,
    read_movie,
)
from pipelines.io.outputs import (
    atomic_path,
    remove_partials,
    write_bytes_atomic,
    write_mrc,
    write_star,
    write_text_atomic,
)

__all__ = [
    "atomic_path",
    "eer_frames_per_group",
    "read_micrograph",
    "read_movie",
    "remove_partials",
    "write_bytes_atomic",
    "write_mrc",
    "write_star",
    "write_text_atomic",
]
