"""Whether the online 2D's costs stay flat as a session grows to a million particles.

    nice -n 10 .venv/bin/python benchmarks/bench_pool_scale.py [--particles 1000000]
        [--per-exposure 100] [--exposures-per-feed 10] [--box 32] [--snapshot-every 100]

A simulated session streams ``particles / per-exposure`` exposures the way the
Extract job leaves them: one float16 ``.mrcs`` stack per exposure (noisy discs cut
from a bank made once, motion and CTF skipped) and ``Extract/job006/particles.star``
growing by the new rows (written once, then appended in place with the same
columns).  After every ``step-every``-th feed (``exposures-per-feed`` exposures) the actor (K = 10, psi step 15°,
offsets ±2 px, a fixed mini-batch of 500 so the algorithm's own schedule does not
hide the overheads) runs one mini-batch; every ``snapshot-every`` feeds it writes a
snapshot and a checkpoint.  Printed against particles seen: resident memory (now
and peak), seconds per feed, per mini-batch, per snapshot, per checkpoint and the
checkpoint's size.  The lower bounds, measured in the same run at the end: a
feed = reading the new STAR bytes and the new stacks' bytes (no parsing); a
mini-batch = ``vdam_step`` on 500 particles already in memory; a snapshot =
``assign_particles`` of as many particles as the snapshot assigned, in memory.
The ratio of the last row to the first row of each column is the growth (target:
within 1.2, memory under 4 GB).  No peer: RELION/cryoSPARC have no online 2D of a
growing pool to run side by side.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import resource
import tempfile
import time
from pathlib import Path

import mrcfile
import numpy as np

from livestream.class2d.actor import CHECKPOINT_NAME, ActorSettings, Class2dActor
from pipelines.class2d import Schedule, assign_particles, vdam_step
from pipelines.class2d.box import to_working_box
from pipelines.io.outputs import write_star

BATCH = 500


def rss_gb() -> float:
    """Resident memory now (GB)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e9


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


_BANK: list[np.ndarray] = []


def _noise_bank(n: int, box: int, rng: np.random.Generator) -> np.ndarray:
    """4 n noisy discs (float16), made once: writing the stacks is not measured."""
    if not _BANK:
        yy, xx = np.mgrid[:box, :box] - box // 2
        disc = (xx**2 + yy**2 < (box // 5) ** 2).astype(np.float32)
        noise = rng.standard_normal((4 * n, box, box), dtype=np.float32)
        _BANK.append((noise + disc).astype(np.float16))
    return _BANK[0]


def write_exposure(
    folder: Path, index: int, n: int, box: int, rng: np.random.Generator
) -> tuple[str, list[str]]:
    """One exposure's stack (noise + a disc) and its STAR rows as text."""
    bank = _noise_bank(n, box, rng)
    images = bank[(index * 7919) % bank.shape[0] :][:n]
    if images.shape[0] < n:
        images = bank[:n]
    name = f"Extract/job006/Movies/exp{index:06d}.mrcs"
    with mrcfile.new(folder / name, overwrite=True) as mrc:
        mrc.set_data(images)
    defocus = 12000.0 + 50.0 * (index % 40)
    rows = [
        f"{i:06d}@{name} {100 + i} {200 + i} {defocus:.1f} {defocus + 200:.1f} "
        f"30.0 0.0 exp{index:06d}.mrc 1"
        for i in range(1, n + 1)
    ]
    return name, rows


COLUMNS = (
    "rlnImageName",
    "rlnCoordinateX",
    "rlnCoordinateY",
    "rlnDefocusU",
    "rlnDefocusV",
    "rlnDefocusAngle",
    "rlnPhaseShift",
    "rlnMicrographName",
    "rlnOpticsGroup",
)


def start_star(path: Path, box: int, first_rows: list[str]) -> None:
    import pandas as pd

    optics = pd.DataFrame(
        {
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnOpticsGroup": [1],
            "rlnVoltage": [300.0],
            "rlnSphericalAberration": [2.7],
            "rlnAmplitudeContrast": [0.1],
            "rlnImagePixelSize": [4.0],
            "rlnImageSize": [box],
            "rlnImageDimensionality": [2],
        }
    )
    table = pd.DataFrame([r.split() for r in first_rows], columns=list(COLUMNS))
    for column in COLUMNS[1:7]:
        table[column] = table[column].astype(float)
    table["rlnOpticsGroup"] = table["rlnOpticsGroup"].astype(int)
    write_star(path, {"optics": optics, "particles": table})


def lower_bounds(
    actor: Class2dActor,
    args: argparse.Namespace,
    star: Path,
    exposure: int,
    schedule: Schedule,
    last_snapshot_n: int,
) -> tuple[float, float, float]:
    """Seconds of: reading a feed's new bytes; ``vdam_step`` on a batch in memory;
    ``assign_particles`` of the snapshot's sample in memory."""
    project = actor.pool.project
    # lower bounds, same run
    new_bytes = args.exposures_per_feed * args.per_exposure
    t0 = time.perf_counter()
    with open(star, "rb") as fh:
        fh.seek(-min(star.stat().st_size, new_bytes * 80), os.SEEK_END)
        fh.read()
    for index in range(exposure - args.exposures_per_feed, exposure):
        (project / f"Extract/job006/Movies/exp{index:06d}.mrcs").read_bytes()
    feed_lb = time.perf_counter() - t0
    assert actor.config is not None
    assert actor.state is not None
    order = np.arange(BATCH)
    particles = to_working_box(actor.pool.stack(order))
    config = dataclasses.replace(actor.config, schedule=schedule)
    state = dataclasses.replace(actor.state, seen=np.zeros(BATCH, dtype=bool))
    t0 = time.perf_counter()
    vdam_step(config, state, particles)
    batch_lb = time.perf_counter() - t0
    sample = to_working_box(
        actor.pool.stack(np.arange(min(last_snapshot_n, actor.pool_size)))
    )
    t0 = time.perf_counter()
    assign_particles(actor.config, actor.state, sample)
    snap_lb = time.perf_counter() - t0
    return feed_lb, batch_lb, snap_lb


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=1_000_000)
    parser.add_argument("--per-exposure", type=int, default=100)
    parser.add_argument("--exposures-per-feed", type=int, default=10)
    parser.add_argument("--box", type=int, default=32)
    parser.add_argument("--snapshot-every", type=int, default=100, help="feeds")
    parser.add_argument("--step-every", type=int, default=1, help="feeds a batch")
    parser.add_argument("--snapshot-sample", type=int, default=20_000)
    parser.add_argument("--folder", default=None, help="default: a temporary one")
    return parser.parse_args()


def main() -> None:
    args = parse()
    rng = np.random.default_rng(0)
    schedule = Schedule(
        n_minibatches=50,
        initial_min=BATCH,
        initial_max=BATCH,
        final_min=BATCH,
        final_max=BATCH,
    )
    settings = ActorSettings(
        n_classes=10,
        min_pool=BATCH,
        psi_step_deg=15.0,
        offset_range_px=2.0,
        max_passes=1e9,
        snapshot_sample=args.snapshot_sample,
        schedule=schedule,
    )
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        project = Path(tmp)
        (project / "Extract/job006/Movies").mkdir(parents=True)
        star = project / "Extract/job006/particles.star"
        actor = Class2dActor(
            project / "Class2D/job008", settings, seed=0, project=project
        )
        n_exposures = args.particles // args.per_exposure
        n_feeds = n_exposures // args.exposures_per_feed
        print(
            f"{args.particles} particles, {n_exposures} exposures, {n_feeds} feeds, "
            f"box {args.box} px float16, mini-batch {BATCH}, K 10"
        )
        print(
            f"{'seen':>9} {'rss GB':>7} {'peak GB':>7} {'feed s':>8} {'batch s':>8} "
            f"{'snap s':>8} {'ckpt s':>7} {'ckpt MB':>8} {'snap n':>7}"
        )
        feed_s, batch_s, rows_out = [], [], []
        exposure = 0
        started = time.perf_counter()
        last_snapshot_n = 0
        for feed in range(n_feeds):
            lines: list[str] = []
            for _ in range(args.exposures_per_feed):
                _, rows = write_exposure(
                    project, exposure, args.per_exposure, args.box, rng
                )
                lines += rows
                exposure += 1
            if feed == 0:
                start_star(star, args.box, lines)
            else:
                with open(star, "a") as fh:
                    fh.write("\n".join(lines) + "\n")
            t0 = time.perf_counter()
            actor.feed(star)
            t1 = time.perf_counter()
            ran = feed % args.step_every == 0 and actor.step()
            t2 = time.perf_counter()
            feed_s.append(t1 - t0)
            if ran:
                batch_s.append(t2 - t1)
            if (feed + 1) % args.snapshot_every == 0 or feed == n_feeds - 1:
                t3 = time.perf_counter()
                info = actor.snapshot()
                t4 = time.perf_counter()
                actor.checkpoint()
                t5 = time.perf_counter()
                last_snapshot_n = int(info.payload.get("particles_assigned", 0)) or (
                    actor.pool_size
                )
                ckpt_mb = (actor.folder / CHECKPOINT_NAME).stat().st_size / 1e6
                window = args.snapshot_every
                row = (
                    actor.pool_size,
                    rss_gb(),
                    peak_gb(),
                    float(np.median(feed_s[-window:])),
                    float(np.median(batch_s[-window:])) if batch_s else float("nan"),
                    t4 - t3,
                    t5 - t4,
                    ckpt_mb,
                    last_snapshot_n,
                )
                rows_out.append(row)
                print(
                    f"{row[0]:>9} {row[1]:>7.2f} {row[2]:>7.2f} {row[3]:>8.4f} "
                    f"{row[4]:>8.4f} {row[5]:>8.3f} {row[6]:>7.3f} {row[7]:>8.2f} "
                    f"{row[8]:>7}",
                    flush=True,
                )
        wall = time.perf_counter() - started
        feed_lb, batch_lb, snap_lb = lower_bounds(
            actor, args, star, exposure, schedule, last_snapshot_n
        )
        first, last = rows_out[0], rows_out[-1]
        print(
            f"wall {wall:.0f} s ({actor.pool_size / wall:.0f} particles/s end to end)"
        )
        print(
            f"growth last/first: feed {last[3] / first[3]:.2f}, mini-batch "
            f"{last[4] / first[4]:.2f}, snapshot {last[5] / first[5]:.2f}, "
            f"checkpoint {last[6] / first[6]:.2f}, rss {last[1]:.2f} GB"
        )
        print(
            f"vs lower bound (last row): feed {last[3] / feed_lb:.1f}x "
            f"({feed_lb:.4f} s), mini-batch {last[4] / batch_lb:.2f}x "
            f"({batch_lb:.4f} s), snapshot {last[5] / snap_lb:.2f}x ({snap_lb:.3f} s)"
        )


if __name__ == "__main__":
    main()
