"""Whether the online 2D's (and 3D's) costs stay flat as a session grows to a
million particles.

    nice -n 10 .venv/bin/python benchmarks/bench_pool_scale.py [--particles 1000000]
        [--per-exposure 100] [--exposures-per-feed 10] [--box 32] [--snapshot-every 100]
        [--class3d [--select-fraction 0.5] [--start-particles 5000]
         [--snapshot-sample3d 5000]]

A simulated session streams ``particles / per-exposure`` exposures the way the
Extract job leaves them: one float16 ``.mrcs`` stack per exposure (noisy discs cut
from a bank made once, motion and CTF skipped) and ``Extract/job006/particles.star``
growing by the new rows (written once, then appended in place with the same
columns).  After every ``step-every``-th feed (``exposures-per-feed`` exposures) the actor (K = 10, psi step 15°,
offsets ±2 px, a fixed mini-batch of 500 so the algorithm's own schedule does not
hide the overheads) runs one mini-batch; every ``snapshot-every`` feeds it writes a
snapshot and a checkpoint.  Printed against particles seen: resident memory (now
and peak), seconds per feed, per mini-batch, per snapshot, per checkpoint and the
checkpoint's size (the pool's rows are in its append-only files, whose sizes are
printed at the end).  The lower bounds, measured in the same run at the end: a
feed = reading the new STAR bytes and the new stacks' bytes (no parsing); a
mini-batch = ``vdam_step`` on 500 particles already in memory; a snapshot =
``assign_particles`` of as many particles as the snapshot assigned, in memory.
The ratio of the last row to the first row of each column is the growth (target:
within 1.2, memory under 4 GB).  No peer: RELION/cryoSPARC have no online 2D of a
growing pool to run side by side.  Mini-batch columns are medians over the
mini-batches since the previous row, feed columns over the feeds since it.

``--class3d`` adds the online initial model (:class:`Class3dActor`, box 32, one
class, angular step 15°, mini-batches reaching 500 after 3, never pausing): the
selection it follows is the first ``select-fraction`` of each exposure's rows,
appended to ``Select/job009/particles.star`` as they are extracted (a growing
selection; the service's ``run_selected.star`` is the 2D snapshot's sample, so
its size is bounded by ``[class2d] snapshot_sample``).  The actor is fed after
every 2D feed, runs one mini-batch after each 2D mini-batch once
``start-particles`` are selected, and writes a snapshot (``snapshot-sample3d``
particles assigned) and a checkpoint with the 2D's.  Per row: selected
particles, seconds per 3D feed, mini-batch, its lower bound measured at that row
(``pipelines.class3d.vdam_step`` on 500 pool particles already in memory, the
actor's current state, the fastest of three), snapshot, checkpoint, and the checkpoint's size; the 3D
feed's lower bound (reading the last feed's new selected bytes) at the end.
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
from livestream.class3d.actor import Class3dActor, Class3dSettings
from pipelines.class2d import Schedule, assign_particles, vdam_step
from pipelines.class2d.box import to_working_box
from pipelines.class3d import vdam_step as vdam_step3d
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


def write_feed(
    project: Path, first: int, args: argparse.Namespace, rng: np.random.Generator
) -> tuple[list[str], list[str]]:
    """A feed's exposures from number ``first``: all their STAR rows and the
    selected ones (the first ``select-fraction`` of each exposure's)."""
    lines: list[str] = []
    selected: list[str] = []
    for index in range(first, first + args.exposures_per_feed):
        _, rows = write_exposure(project, index, args.per_exposure, args.box, rng)
        lines += rows
        selected += rows[: round(args.select_fraction * len(rows))]
    return lines, selected


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


def grow_star(path: Path, box: int, rows: list[str], *, first: bool) -> None:
    """Write the STAR with ``rows`` (``first``) or append them in place."""
    if first:
        start_star(path, box, rows)
    else:
        with open(path, "a") as fh:
            fh.write("\n".join(rows) + "\n")


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


SELECTED_STAR = "Select/job009/particles.star"  # the growing 3D selection


class Stage3d:
    """The 3D stage of ``--class3d``: a :class:`Class3dActor` fed a growing
    selection (the first ``select-fraction`` of each exposure's rows, appended to
    ``Select/job009/particles.star`` as they are extracted), one mini-batch after
    each 2D mini-batch, a snapshot and a checkpoint with the 2D's."""

    HEADER = (
        f" | {'sel':>7} {'feed3 s':>8} {'batch3 s':>8} {'lb3 s':>7} "
        f"{'snap3 s':>7} {'ckpt3 s':>7} {'ckpt3 MB':>8}"
    )

    def __init__(self, project: Path, args: argparse.Namespace) -> None:
        self.star = project / SELECTED_STAR
        self.star.parent.mkdir(parents=True)
        self.fraction = args.select_fraction
        self.actor = Class3dActor(
            project / "InitialModel/job010",
            Class3dSettings(
                start_particles=args.start_particles,
                mini_batch=BATCH,
                n_minibatches=3,  # batch size and step reach their final values
                box_px=args.box,
                angular_step_deg=15.0,
                snapshot_sample=args.snapshot_sample3d,
                max_passes=1e9,
            ),
            seed=0,
            project=project,
        )
        self.feed_s: list[float] = []
        self.batch_s: list[float] = []
        self.new_rows = 0

    def select(self, rows: list[str], first: bool, box: int) -> None:
        """Append this feed's selected rows (not timed: the 2D's writer's work)."""
        grow_star(self.star, box, rows, first=first)
        self.new_rows = len(rows)

    def feed(self) -> None:
        t0 = time.perf_counter()
        self.actor.feed(self.star)
        self.feed_s.append(time.perf_counter() - t0)

    def step(self) -> None:
        t0 = time.perf_counter()
        if self.actor.step():
            self.batch_s.append(time.perf_counter() - t0)

    def row(self, window: int, batches: int) -> tuple[float, ...]:
        """Median feed and mini-batch of the window, the mini-batch's lower bound
        now (``vdam_step`` on 500 pool particles already in memory, same state),
        snapshot and checkpoint seconds, checkpoint MB (nan before the start)."""
        nan = float("nan")
        feed = float(np.median(self.feed_s[-window:]))
        actor = self.actor
        if actor.state is None or actor.config is None:
            return (feed, nan, nan, nan, nan, nan)
        batch = float(np.median(self.batch_s[-batches:])) if self.batch_s else nan
        rows = np.sort(
            np.random.default_rng(1).choice(
                actor.pool.active_rows(), BATCH, replace=False
            )
        )
        posed = actor._posed(rows)
        lower = float("inf")
        for _ in range(3):  # the fastest of three: the machine is shared
            t0 = time.perf_counter()
            vdam_step3d(actor.config, actor.state, posed, rows=np.arange(rows.size))
            lower = min(lower, time.perf_counter() - t0)
        t0 = time.perf_counter()
        actor.snapshot()
        t1 = time.perf_counter()
        path = actor.checkpoint()
        t2 = time.perf_counter()
        return (feed, batch, lower, t1 - t0, t2 - t1, path.stat().st_size / 1e6)

    def summary(self, rows: list[tuple[float, ...]]) -> None:
        """Growth last/first (mini-batch, snapshot, checkpoint: from the first row
        after the start) and the last row against the lower bounds; the feed's:
        reading the last feed's new selected rows' bytes."""
        t0 = time.perf_counter()
        with open(self.star, "rb") as fh:
            fh.seek(-min(self.star.stat().st_size, self.new_rows * 80), os.SEEK_END)
            fh.read()
        feed_lb = time.perf_counter() - t0
        started = [r for r in rows if not np.isnan(r[1])]
        a, b = started[0], started[-1]
        print(
            f"3D growth last/first: feed {rows[-1][0] / rows[0][0]:.2f}, mini-batch "
            f"{b[1] / a[1]:.2f} (its lower bound {b[2] / a[2]:.2f}), snapshot "
            f"{b[3] / a[3]:.2f}, checkpoint {b[4] / a[4]:.2f} "
            f"({a[5]:.1f} -> {b[5]:.1f} MB)"
        )
        print(
            f"3D vs lower bound (last row): feed {b[0] / feed_lb:.1f}x "
            f"({feed_lb:.4f} s), mini-batch {b[1] / b[2]:.2f}x ({b[2]:.3f} s)"
        )


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
    parser.add_argument(
        "--class3d", action="store_true", help="add the online 3D (Class3dActor)"
    )
    parser.add_argument("--select-fraction", type=float, default=0.5)
    parser.add_argument("--start-particles", type=int, default=5000)
    parser.add_argument("--snapshot-sample3d", type=int, default=5000)
    return parser.parse_args()


def settings_2d(args: argparse.Namespace) -> tuple[Schedule, ActorSettings]:
    """A fixed mini-batch of 500 (the schedule's growth does not hide overheads),
    K 10, psi 15 degrees, offsets 2 px."""
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
    return schedule, settings


def summary_2d(
    rows: list[tuple[float, ...]], bounds: tuple[float, float, float]
) -> None:
    """Growth last/first and the last row against the lower bounds."""
    first, last = rows[0], rows[-1]
    feed_lb, batch_lb, snap_lb = bounds
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


def main() -> None:
    args = parse()
    rng = np.random.default_rng(0)
    schedule, settings = settings_2d(args)
    with tempfile.TemporaryDirectory(dir=args.folder) as tmp:
        project = Path(tmp)
        (project / "Extract/job006/Movies").mkdir(parents=True)
        star = project / "Extract/job006/particles.star"
        actor = Class2dActor(
            project / "Class2D/job008", settings, seed=0, project=project
        )
        stage3d = Stage3d(project, args) if args.class3d else None
        n_exposures = args.particles // args.per_exposure
        n_feeds = n_exposures // args.exposures_per_feed
        print(
            f"{args.particles} particles, {n_exposures} exposures, {n_feeds} feeds, "
            f"box {args.box} px float16, mini-batch {BATCH}, K 10"
        )
        print(
            f"{'seen':>9} {'rss GB':>7} {'peak GB':>7} {'feed s':>8} {'batch s':>8} "
            f"{'snap s':>8} {'ckpt s':>7} {'ckpt MB':>8} {'snap n':>7}"
            + (Stage3d.HEADER if stage3d else "")
        )
        feed_s, batch_s, rows_out, rows3 = [], [], [], []
        exposure = 0
        started = time.perf_counter()
        last_snapshot_n = 0
        for feed in range(n_feeds):
            lines, selected = write_feed(project, exposure, args, rng)
            exposure += args.exposures_per_feed
            if stage3d:
                stage3d.select(selected, feed == 0, args.box)
            grow_star(star, args.box, lines, first=feed == 0)
            t0 = time.perf_counter()
            actor.feed(star)
            t1 = time.perf_counter()
            ran = feed % args.step_every == 0 and actor.step()
            t2 = time.perf_counter()
            feed_s.append(t1 - t0)
            if ran:
                batch_s.append(t2 - t1)
            if stage3d:
                stage3d.feed()
                if ran:  # a 3D mini-batch after each 2D mini-batch
                    stage3d.step()
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
                batches = max(1, window // args.step_every)  # mini-batches a window
                row = (
                    actor.pool_size,
                    rss_gb(),
                    peak_gb(),
                    float(np.median(feed_s[-window:])),
                    float(np.median(batch_s[-batches:])) if batch_s else float("nan"),
                    t4 - t3,
                    t5 - t4,
                    ckpt_mb,
                    last_snapshot_n,
                )
                rows_out.append(row)
                line = (
                    f"{row[0]:>9} {row[1]:>7.2f} {row[2]:>7.2f} {row[3]:>8.4f} "
                    f"{row[4]:>8.4f} {row[5]:>8.3f} {row[6]:>7.3f} {row[7]:>8.2f} "
                    f"{row[8]:>7}"
                )
                if stage3d:
                    row3 = stage3d.row(window, batches)
                    rows3.append(row3)
                    line += (
                        f" | {stage3d.actor.pool_size:>7} {row3[0]:>8.4f} "
                        f"{row3[1]:>8.3f} {row3[2]:>7.3f} {row3[3]:>7.3f} "
                        f"{row3[4]:>7.3f} {row3[5]:>8.2f}"
                    )
                print(line, flush=True)
        wall = time.perf_counter() - started
        bounds = lower_bounds(actor, args, star, exposure, schedule, last_snapshot_n)
        print(
            f"wall {wall:.0f} s ({actor.pool_size / wall:.0f} particles/s end to end)"
        )
        summary_2d(rows_out, bounds)
        if stage3d:
            stage3d.summary(rows3)
        for pool in [actor.pool] + ([stage3d.actor.pool] if stage3d else []):
            files = sorted(pool.folder.iterdir())
            print(
                f"pool files {pool.folder.relative_to(project)} (append-only, not "
                f"rewritten by a checkpoint): {pool.size} rows, "
                + ", ".join(f"{f.name} {f.stat().st_size / 1e6:.1f} MB" for f in files)
            )


if __name__ == "__main__":
    main()
