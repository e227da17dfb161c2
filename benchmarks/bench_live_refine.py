"""The service's refinement of its live map, against the refinement run in-process.

    .venv/bin/python benchmarks/bench_live_refine.py [--particles 400] [--box 24]
        [--model-box 16] [--max-iterations 20]

A project folder as the service leaves it: ``--particles`` simulated particles of
a phantom (12 views, random psi and shifts, a CTF each, SNR 1, 4 Å/px) as the 2D
selection ``Class2D/job007/run_selected.star`` and the phantom at
``--model-box`` as ``InitialModel/job008/initial_model.mrc``.  The live path
(``livestream.class3d.refinement``, as at drain): freezing the selection,
resampling the map to the particles' box, ``python -m livestream.cli.refine3d``
in a child process (its start, reading the stacks, the refinement,
post-processing, the FSC plot, the files), moving the files into
``Refine3D/job009`` and the marker.  The lower bound, measured in the same run:
``pipelines.class3d.refine.refine`` alone on the same particles (already in
memory) and start map, in this process.  Both must give the same resolution.
``relion_refine`` is not installed here: no peer figures (docs/class3d.md has
the measured comparison of the refinement itself).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import starfile

from livestream.class3d.refinement import SUMMARY_NAME, LiveRefinement
from livestream.config import load_config
from livestream.telemetry.broadcast import Broadcaster
from livestream.telemetry.reporting import Reporter
from pipelines.class3d.refine import RefineConfig, refine
from pipelines.reconstruct import read_posed_particles
from pipelines.reconstruct.mask import resample_map
from pipelines.reconstruct.outputs import write_map
from pipelines.simulate.particle_sets import simulate_views, write_particle_set
from pipelines.simulate.volumes import load_map, phantom_volume

PIXEL_A = 4.0


def _project(root: Path, n: int, box: int, model_box: int) -> Path:
    project = root / "project"
    volume = phantom_volume(box, PIXEL_A, np.random.default_rng(8))
    data = simulate_views(
        volume,
        n_views=12,
        n_particles=n,
        pixel_size_a=PIXEL_A,
        snr=1.0,
        rng=np.random.default_rng(3),
    )
    optics, table = write_particle_set(project, "Particles/a.mrcs", data, PIXEL_A)
    selected = project / "Class2D/job007/run_selected.star"
    selected.parent.mkdir(parents=True)
    starfile.write({"optics": optics, "particles": table}, selected)
    model = project / "InitialModel/job008"
    model.mkdir(parents=True)
    write_map(
        model / "initial_model.mrc",
        resample_map(volume, model_box),
        pixel_size_a=PIXEL_A * box / model_box,
    )
    (model / "run_class3d.json").write_text(json.dumps({"iteration": 1}))
    return project


async def _live(project: Path, max_iterations: int) -> float:
    config = load_config(
        None,
        {
            "project": {"path": project},
            "class3d": {
                "refine_at_drain": True,
                "refine_max_iterations": max_iterations,
            },
        },
    )
    live = LiveRefinement(
        config.class3d,
        project,
        project / "Class2D/job007/run_selected.star",
        Reporter(Broadcaster()),
    )
    task = asyncio.create_task(live.run())
    loop = asyncio.get_running_loop()
    start = time.perf_counter()
    await live.drain(task, loop.time() + 3600)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=400)
    parser.add_argument("--box", type=int, default=24)
    parser.add_argument("--model-box", type=int, default=16)
    parser.add_argument("--max-iterations", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        project = _project(Path(tmp), args.particles, args.box, args.model_box)
        live_s = asyncio.run(_live(project, args.max_iterations))
        folder = project / "Refine3D/job009"
        marker = json.loads((folder / SUMMARY_NAME).read_text())
        os.chdir(project)  # the STAR names its stacks relative to the project
        particles = read_posed_particles(folder / "run_input.star", require_poses=False)
        reference, _ = load_map(folder / "run_reference.mrc")
        config = RefineConfig(
            box_px=args.box, pixel_size_a=PIXEL_A, max_iterations=args.max_iterations
        )
        start = time.perf_counter()
        result = refine(particles, reference, config)
        bound_s = time.perf_counter() - start
        os.chdir("/")
    n = args.particles
    print(
        f"{n} particles, box {args.box}: live refinement {live_s:.1f} s "
        f"({n / live_s:.1f} particles/s, {marker['iterations']} iterations, "
        f"{marker['resolution_a']:.2f} Å); refine() in-process {bound_s:.1f} s "
        f"({n / bound_s:.1f} particles/s, {len(result.iterations)} iterations, "
        f"{result.resolution_a:.2f} Å); ratio {live_s / bound_s:.2f}"
    )


if __name__ == "__main__":
    main()
