"""Stages that run the numerical code of :mod:`pipelines` (motion, CTF).

Each adapter turns an :class:`~mdcatch.records.Exposure` and the earlier stages'
results into the arguments of a ``pipelines.run_*`` function, and its result record
into a :class:`~livestream.ledger.schema.StageResult` (output paths relative to the
project, figures for metrics and events).  Their parameters are in
:mod:`livestream.stages.params`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from livestream.ledger.schema import StageResult
from livestream.project.movies import movie_name
from livestream.stages.params import CtfParams, MotionParams
from livestream.stages.task import StageTask
from mdcatch.crosscheck import DEFAULT_CS_MM
from mdcatch.profiles.detectors import load_profiles
from mdcatch.records import Exposure, MovieFormat, Optics
from pipelines.ctf import job as ctf_job
from pipelines.errors import StageInputError
from pipelines.motion import job as motion_job

__all__ = ["CTF_FIGURES", "MOTION_FIGURES", "cs_mm_of", "run_ctf", "run_motion"]


def cs_mm_of(optics: Optics) -> float:
    """The exposure's Cs in mm.  :func:`mdcatch.crosscheck.reconcile` fills it at
    intake; a record built without reconciling (tests, tools) gets mdcatch's
    default."""
    return DEFAULT_CS_MM if optics.cs_mm is None else optics.cs_mm


# mdcatch's gain flip -> pipelines.motion.defects.orient_gain's
_FLIPS = {"none": None, "upside_down": "y", "left_right": "x"}


def _detector_settings(
    exposure: Exposure, profiles_file: Path | None
) -> tuple[int, str | None, float | None]:
    """Gain rotation (deg, counter-clockwise), flip and EER group dose (e/Å²) from
    the detector profile; ``(0, None, None)`` when there is neither a gain reference
    nor an EER movie (nothing to orient or group).  An unknown detector raises
    :class:`~mdcatch.errors.MetadataError`: a gain applied in the wrong orientation
    would corrupt every micrograph silently."""
    movie = exposure.movie_path
    is_eer = movie is not None and movie.suffix.lower() in (".eer", ".ecc")
    if exposure.gain_reference_path is None and not is_eer:
        return 0, None, None
    profile = load_profiles(profiles_file).detector_for(
        exposure.optics.detector,
        camera_mode=exposure.optics.camera_mode,
        movie_format=MovieFormat.EER if is_eer else None,
    )
    group_dose = profile.eer_grouping_target_e_per_a2 if is_eer else None
    return profile.gain_rotation_deg, _FLIPS[profile.gain_flip.value], group_dose


def run_motion(task: StageTask, params: MotionParams) -> StageResult:
    """Motion correction with :func:`pipelines.motion.job.run_motion`."""
    exposure = task.exposure
    if exposure.movie_path is None:
        raise StageInputError(exposure.metadata_path, "movie_path", None, "no movie")
    patches = (
        (params.patches_y, params.patches_x)  # motion's convention: (n_y, n_x)
        if params.patches_x > 1 and params.patches_y > 1
        else None
    )
    rotation_deg, flip, eer_group_dose = _detector_settings(
        exposure, params.profiles_file
    )
    result = motion_job.run_motion(
        exposure.movie_path,
        task.project_path / params.job,
        pixel_size_a=exposure.optics.pixel_size_a,
        dose_per_frame_e_per_a2=exposure.dose_per_frame_e_per_a2,
        voltage_kv=exposure.optics.voltage_kv,
        pre_exposure_e_per_a2=0.0,
        gain_path=exposure.gain_reference_path,
        gain_rotation_deg=rotation_deg,
        gain_flip=flip,
        eer_group_dose_e_per_a2=eer_group_dose,
        patches=patches,
        bfactor_px2=params.bfactor_px2,
        float32=params.float32,
        save_no_dw=params.save_no_dw,
        workers=params.fft_workers,
        # RELION's names: through the project's Movies link when it leads there
        movie_name=movie_name(task.project_path, exposure.movie_path),
        gain_name=None
        if exposure.gain_reference_path is None
        else movie_name(task.project_path, exposure.gain_reference_path),
    )
    motion_result = _from_pipeline(
        task,
        result,
        figure_names=MOTION_FIGURES,
        inputs=("movie_path",),
    )
    optics = exposure.optics
    figures = dict(motion_result.figures)
    figures.update(  # the optics, for the job's corrected_micrographs.star
        original_pixel_size_a=optics.pixel_size_a,
        voltage_kv=optics.voltage_kv,
        cs_mm=cs_mm_of(optics),
        amplitude_contrast=optics.amplitude_contrast,
    )
    return StageResult(stage=task.stage, outputs=motion_result.outputs, figures=figures)


MOTION_FIGURES = ("total_motion_a", "early_motion_a", "late_motion_a", "pixel_size_a")
CTF_FIGURES = (
    "defocus_u_a",
    "defocus_v_a",
    "astigmatism_angle_deg",
    "fit_resolution_a",
    "figure_of_merit",
    "astigmatism_a",
    "phase_shift_deg",
    "pixel_size_a",
)


def run_ctf(task: StageTask, params: CtfParams) -> StageResult:
    """CTF estimation with :func:`pipelines.ctf.job.run_ctf`."""
    source = task.previous.get(params.source_stage)
    micrograph = None if source is None else source.outputs.get("micrograph")
    if source is None or micrograph is None:
        raise StageInputError(
            task.project_path,
            f"{params.source_stage}.outputs.micrograph",
            None,
            "the CTF stage needs a motion-corrected micrograph from an earlier stage",
        )
    optics = task.exposure.optics
    cs_mm = cs_mm_of(optics) if params.cs_mm is None else params.cs_mm
    amplitude = (
        optics.amplitude_contrast
        if params.amplitude_contrast is None
        else params.amplitude_contrast
    )
    result = ctf_job.run_ctf(
        task.project_path / micrograph,
        task.project_path / params.job,
        pixel_size_a=source.figures.get("pixel_size_a", optics.pixel_size_a),
        voltage_kv=optics.voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude,
    )
    ctf_result = _from_pipeline(
        task, result, figure_names=CTF_FIGURES, inputs=("micrograph_path",)
    )
    figures = dict(ctf_result.figures)
    figures.update(  # the CTF model's constants, for extraction and the index
        voltage_kv=optics.voltage_kv,
        cs_mm=cs_mm,
        amplitude_contrast=amplitude,
    )
    return StageResult(stage=task.stage, outputs=ctf_result.outputs, figures=figures)


def _fields(record: Any) -> dict[str, Any]:
    names = getattr(record, "__dataclass_fields__", None)
    return {} if names is None else {name: getattr(record, name) for name in names}


def _from_pipeline(
    task: StageTask,
    result: Any,
    *,
    figure_names: tuple[str, ...],
    inputs: tuple[str, ...],
) -> StageResult:
    """A pipelines result record -> output paths relative to the project + figures.

    Path fields become outputs (minus the ``inputs``); number fields named in
    ``figure_names`` become figures, also one level down (``CtfOutputs.fit``).
    """
    outputs: dict[str, str] = {}
    figures: dict[str, float] = {}
    project = task.project_path.resolve()
    items = _fields(result)
    for nested in list(items.values()):
        items.update({k: v for k, v in _fields(nested).items() if k in figure_names})
    for name, value in items.items():
        if isinstance(value, Path) and name not in inputs:
            role = name.removesuffix("_path")
            resolved = value.resolve()
            outputs[role] = str(
                resolved.relative_to(project)
                if resolved.is_relative_to(project)
                else resolved
            )
        elif name in figure_names and isinstance(value, int | float):
            figures[name] = float(value)
    if {"defocus_u_a", "defocus_v_a"} <= figures.keys():
        figures["defocus_a"] = 0.5 * (figures["defocus_u_a"] + figures["defocus_v_a"])
    return StageResult(stage=task.stage, outputs=outputs, figures=figures)
