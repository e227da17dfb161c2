"""Export a live project's particles and exposures as cryoSPARC datasets (.cs).

Example:
    livestream export-cryosparc /data/session1 --out /data/session1/cryosparc --json

Reads the project's Extract/job006/particles.star (the particle pool), the latest
Class2D/job007 snapshot's particles (run_itNNN_data.star with the highest NNN, else
run_data.star) for alignments2D, CtfFind/job003/micrographs_ctf.star for the
exposures, and each micrograph's MRC header for its size (location/*).  Writes
through cryosparc-tools to --out:

  particles.cs   uid, blob/*, ctf/*, location/*, pick_stats/ncc_score, alignments2D/*
  exposures.cs   uid (= the particles' location/micrograph_uid), micrograph_blob/*,
                 ctf/*, mscope_params/*

--no-locations skips the micrograph headers (and location/*).  In cryoSPARC's
Import Particles give particles.cs as "Particle meta path", the project folder as
"Particle data path" (blob/path is relative to it) and exposures.cs as "Exposure
meta path"; docs/cryosparc.md has the steps.  With --json prints one object:
particles_path, exposures_path, particle_data_path, n_particles, n_exposures,
n_with_alignments2d, class2d_data_path, seconds.  Exit status 2, with one line
naming the file, when the project has no particles or a micrograph is unreadable.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import starfile

from livestream.cli.console import (
    INPUT_ERROR_STATUS,
    print_json,
    require_file,
    require_folder,
)
from livestream.project.jobs import CLASS2D, CTF_FIND, EXTRACT
from mdcatch.errors import InputFieldError
from mdcatch.headers import read_movie_header
from pipelines.exchange import exposures_to_dataset, particles_to_dataset
from pipelines.extraction.particles_star import read_particles_star
from pipelines.io.outputs import atomic_path

PROG = "livestream export-cryosparc"
_ITERATION_DATA = re.compile(r"run_it(\d+)_data\.star$")


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("project", type=Path, metavar="PROJECT")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--no-locations",
        action="store_true",
        help="do not read micrograph headers; write no location/* fields",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary")


def latest_class2d_data(job_folder: Path) -> Path | None:
    """The newest Class2D particles STAR in ``job_folder``: ``run_itNNN_data.star``
    with the highest NNN, else ``run_data.star``, else None."""
    if not job_folder.is_dir():
        return None
    numbered = [
        (int(m.group(1)), path)
        for path in job_folder.glob("run_it*_data.star")
        if (m := _ITERATION_DATA.search(path.name))
    ]
    if numbered:
        return max(numbered)[1]
    plain = job_folder / "run_data.star"
    return plain if plain.is_file() else None


def micrograph_shapes(
    project: Path, names: Iterable[str]
) -> dict[str, tuple[int, int]]:
    """``name -> (ny, nx)`` from each micrograph's header (names relative to the
    project folder, as the STAR files hold them)."""
    shapes = {}
    for name in sorted(set(names)):
        path = Path(name) if Path(name).is_absolute() else project / name
        shape = read_movie_header(path).shape
        shapes[name] = (int(shape[1]), int(shape[2]))
    return shapes


def _save(dataset: Any, path: Path) -> Path:
    with atomic_path(path) as tmp:
        dataset.save(tmp)
    return path


def _export(args: argparse.Namespace, project: Path) -> dict[str, Any]:
    particles_star = require_file(
        project / EXTRACT.folder / "particles.star", "particle pool STAR"
    )
    optics, particles = read_particles_star(particles_star)
    class2d_star = latest_class2d_data(project / CLASS2D.folder)
    alignments = None if class2d_star is None else read_particles_star(class2d_star)[1]
    ctf_star = project / CTF_FIND.folder / "micrographs_ctf.star"
    names: list[str] = []
    if "rlnMicrographName" in particles.columns:
        names = particles["rlnMicrographName"].astype(str).tolist()
    mic_optics = mic_table = None
    if ctf_star.is_file():
        mic_optics, mic_table = _read_micrographs(ctf_star)
        names += mic_table["rlnMicrographName"].astype(str).tolist()
    shapes = None if args.no_locations else micrograph_shapes(project, names)
    dataset = particles_to_dataset(
        optics,
        particles,
        source=particles_star,
        micrograph_shapes=shapes,
        alignments2d=alignments,
    )
    out: Path = args.out
    result: dict[str, Any] = {
        "particles_path": str(_save(dataset, out / "particles.cs")),
        "particle_data_path": str(project.resolve()),
        "n_particles": len(dataset),
        "n_with_alignments2d": 0,
        "class2d_data_path": None if class2d_star is None else str(class2d_star),
        "exposures_path": None,
        "n_exposures": 0,
    }
    if "alignments2D/class_posterior" in dataset.fields():
        result["n_with_alignments2d"] = int(
            (dataset["alignments2D/class_posterior"] > 0).sum()
        )
    if mic_table is not None and shapes is not None:
        exposures = exposures_to_dataset(
            mic_optics, mic_table, source=ctf_star, micrograph_shapes=shapes
        )
        result["exposures_path"] = str(_save(exposures, out / "exposures.cs"))
        result["n_exposures"] = len(exposures)
    return result


def _read_micrographs(path: Path) -> tuple[Any, Any]:
    blocks = starfile.read(path, always_dict=True)
    if "optics" not in blocks or "micrographs" not in blocks:
        raise InputFieldError(
            path, "data blocks", sorted(blocks), "need data_optics and data_micrographs"
        )
    return blocks["optics"], blocks["micrographs"]


def main(args: argparse.Namespace) -> int:
    project = require_folder(args.project, "project folder")
    start = time.perf_counter()
    try:
        result = _export(args, project)
    except InputFieldError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return INPUT_ERROR_STATUS
    result["seconds"] = round(time.perf_counter() - start, 3)
    if args.json:
        print_json(result, sort_keys=True)
    else:
        print(
            f"{result['n_particles']} particles "
            f"({result['n_with_alignments2d']} with 2D classes) -> "
            f"{result['particles_path']}; {result['n_exposures']} exposures"
        )
    return 0
