"""Early class selection in a simulated online session with junk: particles and
junk (empty boxes, ice, carbon edges, aggregates) arrive in batches, the actor
learns and snapshots after each, and the ranker's selection is followed from
snapshot to snapshot.  Measured: the flip rate (particles present in two
consecutive snapshots whose selected state changed), the drop rate (selected, then
rejected), classes selected on fewer particles than the minimum support
(:func:`pipelines.class2d.ranker.min_class_support`), and junk kept / particles
lost at the end."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import starfile

from livestream.class2d.actor import ActorSettings, Class2dActor
from pipelines.class2d import Schedule
from pipelines.class2d.ranker import min_class_support
from pipelines.io.outputs import write_mrc
from pipelines.simulate.particle_sets import simulate_views
from pipelines.simulate.volumes import phantom_volume
from tests.pipelines.class2d.test_ranker import JUNK_KINDS, SNR, _junk

N_GOOD, N_JUNK_EACH, N_BATCHES = 300, 30, 8
SETTINGS = ActorSettings(
    n_classes=8,
    min_pool=80,
    new_fraction=0.5,
    max_passes=2.0,
    psi_step_deg=15.0,
    offset_range_px=2.0,
    schedule=Schedule(n_minibatches=30, initial_min=60, final_min=120),
)


def _session(folder: Path, seed: int) -> tuple[pd.DataFrame, list[pd.DataFrame]]:
    """Write the particle set; return its table (with ``label``: 0 particle, else
    junk kind) and the per-batch STAR tables in arrival order."""
    rng = np.random.default_rng(seed)
    volume = phantom_volume(32, 4.0, rng)
    good = simulate_views(
        volume, n_views=3, n_particles=N_GOOD, pixel_size_a=4.0, snr=SNR, rng=rng
    )
    images = [good.particles.images]
    images += [_junk(kind, N_JUNK_EACH, volume, rng) for kind in JUNK_KINDS]
    label = np.repeat(np.arange(5), [N_GOOD] + [N_JUNK_EACH] * len(JUNK_KINDS))
    order = rng.permutation(label.size)  # arrival order: junk mixed in throughout
    stack = np.concatenate(images)[order]
    label = label[order]
    n = label.size
    defocus = np.concatenate(
        [good.particles.defocus_u_a, rng.uniform(10000, 25000, n - N_GOOD)]
    )[order]
    write_mrc(folder / "Extract/job005/particles.mrcs", stack, pixel_size_a=4.0)
    optics = pd.DataFrame(
        {
            "rlnOpticsGroup": [1],
            "rlnOpticsGroupName": ["opticsGroup1"],
            "rlnVoltage": [good.particles.voltage_kv],
            "rlnSphericalAberration": [good.particles.cs_mm],
            "rlnAmplitudeContrast": [good.particles.amplitude_contrast],
            "rlnImagePixelSize": [4.0],
            "rlnImageSize": [32],
            "rlnImageDimensionality": [2],
        }
    )
    table = pd.DataFrame(
        {
            "rlnImageName": [
                f"{i:06d}@Extract/job005/particles.mrcs" for i in range(1, n + 1)
            ],
            "rlnDefocusU": defocus,
            "rlnDefocusV": defocus,
            "rlnDefocusAngle": np.zeros(n),
            "rlnOpticsGroup": np.ones(n, dtype=int),
        }
    )
    stars = []
    for b, end in enumerate(np.linspace(0, n, N_BATCHES + 1).astype(int)[1:]):
        star = folder / f"Extract/job005/batch{b}.star"
        starfile.write({"optics": optics, "particles": table[:end]}, star)
        stars.append(star)
    return table.assign(label=label), stars


def _numbers(image_names: pd.Series) -> list[int]:
    return [int(name.split("@")[0]) for name in image_names]


def _follow_selection(folder: Path, seed: int) -> dict[str, float]:
    table, stars = _session(folder, seed)
    actor = Class2dActor(folder / "Class2D/job007", SETTINGS, seed=1, project=folder)
    names = np.arange(1, len(table) + 1)  # image numbers in the one stack
    snapshots: list[tuple[int, np.ndarray]] = []  # (pool size, selected per row)
    classes: list[tuple[set[int], np.ndarray]] = []  # selected classes, counts
    small_selected = 0
    for star in stars:
        actor.feed(star)
        steps = 0
        while steps < 4 and actor.step():
            steps += 1
        if actor.state is None:
            continue
        info = actor.snapshot()
        chosen = starfile.read(info.selected_star, always_dict=True).get("particles")
        picked = [] if chosen is None else _numbers(chosen["rlnImageName"])
        snapshots.append((actor.pool_size, np.isin(names, picked)))
        counts = np.asarray(info.payload["class_counts"])
        selected = np.asarray(info.payload["selected_classes"], dtype=int) - 1
        classes.append((set(selected.tolist()), counts))
        support = min_class_support(actor.pool_size, SETTINGS.n_classes)
        small_selected += int(np.sum(counts[selected] < support))
    # flip: a particle already in the earlier snapshot's pool changed state
    pairs = list(itertools.pairwise(snapshots))
    flips = [float(np.mean(a[:m] != b[:m])) for (m, a), (_, b) in pairs]
    # a drop: selected, then rejected while the pool grew
    drops = [float(np.mean(a[:m] & ~b[:m])) for (m, a), (_, b) in pairs]
    # a class populated in both snapshots whose selected state changed
    class_flips = [
        float(np.mean([(c in sa) != (c in sb) for c in both]))
        for (sa, ca), (sb, cb) in itertools.pairwise(classes)
        if (both := np.flatnonzero((ca > 0) & (cb > 0))).size
    ]
    kept = snapshots[-1][1]
    is_good = table["label"].to_numpy() == 0
    return {
        "snapshots": len(snapshots),
        "flip_rate": float(np.mean(flips)),
        "max_flip_rate": float(np.max(flips)),
        "drop_rate": float(np.mean(drops)),
        "class_flip_rate": float(np.mean(class_flips)) if class_flips else 0.0,
        "small_selected": small_selected,
        "junk_kept": float(np.mean(kept[~is_good])),
        "particles_lost": float(np.mean(~kept[is_good])),
    }


@pytest.mark.slow
def test_selection_is_stable_and_needs_support(tmp_path: Path) -> None:
    """Three simulated sessions (7 snapshots each), means over the seeds.
    Before the minimum support and the shrinkage: 2.0 classes below the support
    selected per session, flip rate 0.009 (max 0.029), drop rate 0.004, junk kept
    0.000, particles lost 0.014.  With them: no such class, flip rate 0.015 (max
    0.064: particle classes are now accepted once they hold enough particles, not
    on their first handful, and acceptance counts as a flip), drop rate 0.004,
    junk kept 0.000, particles lost 0.006; with the probability taken within the
    class as well: flip rate 0.013 (max 0.051), drop rate 0.005."""
    results = [_follow_selection(tmp_path / str(seed), seed) for seed in (31, 32, 33)]
    mean = {k: float(np.mean([r[k] for r in results])) for k in results[0]}
    print("\nonline selection:", {k: round(v, 4) for k, v in mean.items()})
    assert all(r["small_selected"] == 0 for r in results)
    assert mean["drop_rate"] <= 0.01  # selected, then rejected: rare
    assert mean["flip_rate"] <= 0.025
    assert mean["junk_kept"] <= 0.05
    assert mean["particles_lost"] <= 0.05
