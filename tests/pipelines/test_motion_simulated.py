"""Motion correction of movies from the image-formation simulator.

The simulator's movies carry the true drift, local motion, gain and defects.  At
its default (realistic) contrast a 512² frame holds 1/64 of the signal of a 4096²
frame, too little for 0.1 px per frame; these tests raise the ice texture so a
small, fast movie carries enough signal (see docs/motion.md for the numbers at
realistic contrast).
"""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.motion_correct import correct_motion
from pipelines.motion_defects import orient_gain

simulate = pytest.importorskip("pipelines.simulate.movie")
micrograph = pytest.importorskip("pipelines.simulate.micrograph")
detector = pytest.importorskip("pipelines.simulate.detector")

FLIPS = {0: None, 1: "y", 2: "x"}  # the simulator's GainFlip -> orient_gain's flip


@pytest.mark.parametrize("seed", [1, 2])
def test_simulated_drift_gain_and_hot_pixels(seed):
    rng = np.random.default_rng(seed)
    params = simulate.MovieParams(
        micrograph=micrograph.MicrographParams(
            shape_px=(512, 512),
            n_particles=20,
            ice_phase_sd_rad=0.3,
            particle_contrast_rad=0.4,
        ),
        n_frames=20,
        dose_per_frame_e_per_a2=2.0,
        local_motion_px=0.0,
        gain_rotation_quarter_turns=1,
        gain_flip=detector.GainFlip.LEFT_RIGHT,
    )
    frames, truth = simulate.simulate_movie(params, rng, workers=2)
    # the stored reference, oriented by the detector profile's rotation and flip
    gain = orient_gain(
        truth.gain_reference,
        (-90 * truth.gain_rotation_quarter_turns) % 360,
        FLIPS[int(truth.gain_flip)],
    )
    assert np.allclose(gain, 1.0 / truth.gain, rtol=1e-5)
    result = correct_motion(
        frames,
        pixel_size_a=truth.pixel_size_a,
        dose_per_frame_e_per_a2=2.0,
        voltage_kv=300,
        gain=gain,
        patches=None,
        bfactor_px2=50.0,
    )
    error = result.shifts_px + (truth.shifts_px - truth.shifts_px[0])
    rms = float(np.sqrt(np.mean(np.sum(error**2, axis=1))))
    print(f"seed {seed}: simulated global drift recovered to {rms:.3f} px RMS")
    assert rms <= 0.2
    assert result.n_hot_pixels >= int(truth.defects.hot.sum())
    # hot and dead pixels found without being told (20 frames x 2 e/px: dead is clear)
    assert result.n_defect_pixels >= int(truth.defect_mask.sum())
