"""The online 3D initial model's mini-batch and snapshot, against the numerics alone.

    .venv/bin/python benchmarks/bench_class3d_actor.py [--particles 600]
        [--box 48] [--working-box 32] [--batch 200] [--steps 4]

A pool of ``--particles`` simulated particles (a phantom, 40 views, SNR 1) is
written as an MRC stack with its STAR file, as the 2D selection would be.  The
actor (``livestream.class3d.actor``) steps ``--steps`` mini-batches of ``--batch``
particles: drawing, reading the images from the memory-mapped stack, cropping
them to ``--working-box`` in Fourier space and the VDAM step.  The lower bound,
measured in the same run, is the VDAM step alone on the same number of particles
already in memory at the working box (what the actor adds is the rest).  Then
one snapshot (assignment of the pool, maps, half maps, PNGs, STAR files).
``relion_refine`` is not run: ``/work/relion-build/bin`` holds no binary here.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import starfile

from livestream.class3d.actor import Class3dActor, Class3dSettings
from pipelines.class3d import vdam_step
from pipelines.simulate.particle_sets import simulate_views, write_particle_set
from pipelines.simulate.volumes import phantom_volume

RELION = Path("/work/relion-build/bin/relion_refine")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=600)
    parser.add_argument("--box", type=int, default=48)
    parser.add_argument("--working-box", type=int, default=32)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--steps", type=int, default=4)
    args = parser.parse_args()
    px = 4.0
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rng = np.random.default_rng(3)
        data = simulate_views(
            phantom_volume(args.box, px, rng),
            n_views=40,
            n_particles=args.particles,
            pixel_size_a=px,
            snr=1.0,
            rng=rng,
        )
        optics, table = write_particle_set(folder, "Extract/p.mrcs", data, px)
        star = folder / "run_selected.star"
        starfile.write({"optics": optics, "particles": table}, star)
        settings = Class3dSettings(
            start_particles=2,
            mini_batch=args.batch,
            n_minibatches=1,  # the final (full) batch size from the first step
            snapshot_sample=args.particles,
            box_px=args.working_box,
        )
        actor = Class3dActor(folder / "IM", settings, seed=1, project=folder)
        actor.feed(star)
        actor.step()  # start and compile
        assert actor.config is not None
        assert actor.state is not None
        start = time.perf_counter()
        processed = actor.state.particles_processed
        for _ in range(args.steps):
            actor.step()
        actor_s = time.perf_counter() - start
        n = actor.state.particles_processed - processed
        # the bound: the VDAM step alone, particles in memory at the working box
        rows = np.arange(2 * (args.batch // 2))
        posed = actor._posed(rows)
        state = dataclasses.replace(actor.state)
        start = time.perf_counter()
        for _ in range(args.steps):
            state = vdam_step(actor.config, state, posed, rows=rows)
        bound_s = time.perf_counter() - start
        start = time.perf_counter()
        info = actor.snapshot()
        snapshot_s = time.perf_counter() - start
    print(
        f"pool {args.particles} particles, box {args.box} -> {args.working_box}, "
        f"{args.steps} mini-batches of {args.batch}"
    )
    print(
        f"  actor mini-batch: {n / actor_s:7.1f} particles/s; VDAM step alone "
        f"{len(rows) * args.steps / bound_s:7.1f} particles/s; ratio "
        f"{actor_s / n / (bound_s / (len(rows) * args.steps)):5.2f}"
    )
    print(
        f"  snapshot of {info.payload['particles_assigned']} particles: "
        f"{snapshot_s:.1f} s ({info.payload['particles_assigned'] / snapshot_s:.1f} "
        "particles/s, assignment + files)"
    )
    print(
        f"relion_refine: {'at ' + str(RELION) if RELION.exists() else 'not installed'}"
    )


if __name__ == "__main__":
    main()
