"""The parameter models of the built-in stage kinds (one ``[stages.<name>]`` table each).

They live apart from the stage implementations so that :mod:`livestream.config` can
validate every stage table when the configuration loads (a pydantic union
discriminated on ``kind``) without importing numerical code.  Each model names its
kind in the literal default of ``kind``; :mod:`livestream.stages.registry` pairs
every model here with the function that runs it.  Job folders default to
:mod:`livestream.project.jobs`.

A ``kind`` of the form ``"package.module:function"`` names a stage from elsewhere
(the one plugin point): its table is a :class:`PluginParams` here, and the function's
own ``params_model`` checks it when the chain is built.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from livestream.project.jobs import AUTO_PICK, CTF_FIND, EXTRACT, MOTION_CORR, SELECT

__all__ = [
    "BUILTIN_PARAMS",
    "DEFAULT_DIAMETER_MAX_A",
    "DEFAULT_DIAMETER_MIN_A",
    "DEFAULT_EXTRACT_DIAMETER_A",
    "CtfParams",
    "CurateParams",
    "ExtractParams",
    "IndexRole",
    "MotionParams",
    "NoopParams",
    "PickParams",
    "PluginParams",
    "StageParams",
    "kind_of_model",
]


class IndexRole(enum.Enum):
    """Which job index file a stage's results feed (:mod:`livestream.project.job_index`)."""

    MOTION = "motion"  # MotionCorr/.../corrected_micrographs.star
    CTF = "ctf"  # CtfFind/.../micrographs_ctf.star
    CURATE = "curate"  # Select/.../micrographs.star
    PICK = "pick"  # AutoPick/.../autopick.star (the coordinate files)
    EXTRACT = "extract"  # Extract/.../particles.star (the particle pool)


class StageParams(BaseModel):
    """Base of every stage's parameter model; ``kind`` names the implementation."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    kind: str = ""


class NoopParams(StageParams):
    """Writes a small file atomically (tests, benchmarks)."""

    kind: Literal["noop"] = "noop"
    sleep_s: float = 0.0
    payload_bytes: int = 64
    fail_attempts: int = 0  # raise a transient error on attempts 1..n
    crash_attempts: int = 0  # kill the worker process on attempts 1..n


class MotionParams(StageParams):
    kind: Literal["motion"] = "motion"
    job: str = MOTION_CORR.folder
    patches_x: int = 5
    patches_y: int = 5
    bfactor_px2: float | None = None  # None: the motion default (dose-aware)
    float32: bool = False
    save_no_dw: bool = False  # <stem>_noDW.mrc (RELION's --save_noDW); unread here
    fft_workers: int = 1  # parallelism comes from running several exposures at once
    profiles_file: Path | None = (
        None  # site detector profiles (mdcatch.profiles.detectors)
    )


class CtfParams(StageParams):
    kind: Literal["ctf"] = "ctf"
    job: str = CTF_FIND.folder
    # None: the exposure's (mdcatch.crosscheck.reconcile decided it)
    cs_mm: float | None = None
    amplitude_contrast: float | None = None  # None: the exposure's
    source_stage: str = "motion"


class CurateParams(StageParams):
    kind: Literal["curate"] = "curate"
    job: str = SELECT.folder
    motion_stage: str = "motion"
    ctf_stage: str = "ctf"
    max_ctf_resolution_a: float | None = Field(default=6.0, gt=0)
    min_defocus_a: float | None = Field(default=3000.0, ge=0)
    max_defocus_a: float | None = Field(default=40000.0, gt=0)
    max_astigmatism_a: float | None = Field(default=1000.0, ge=0)
    max_total_motion_a: float | None = Field(default=100.0, ge=0)
    max_early_motion_a: float | None = Field(default=30.0, ge=0)
    min_ctf_figure_of_merit: float | None = Field(default=0.02)


DEFAULT_DIAMETER_MIN_A = 100.0
DEFAULT_DIAMETER_MAX_A = 160.0
DEFAULT_EXTRACT_DIAMETER_A = 150.0


class PickParams(StageParams):
    kind: Literal["pick"] = "pick"
    job: str = AUTO_PICK.folder
    motion_stage: str = "motion"
    ctf_stage: str = "ctf"
    curate_stage: str = "curate"
    # "learned": blob candidates, then a classifier self-trained on this exposure's
    # own candidates (pipelines/picking/learned.py; no CTF, no threshold_sd)
    picker: Literal["blob", "template", "learned"] = "blob"
    diameter_min_a: float = Field(default=DEFAULT_DIAMETER_MIN_A, gt=0)
    diameter_max_a: float = Field(default=DEFAULT_DIAMETER_MAX_A, gt=0)
    # robust SDs of the picker's score map; None (the default, as `livestream
    # pick`): the blob and the template picker choose it per micrograph from
    # their own peak scores (docs/picking.md)
    threshold_sd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    templates_path: Path | None = None  # MRC stack (n, box, box), template picker
    # the version of a live template set (livestream.templates) the templates are;
    # recorded as the pick's figure ``template_set``
    template_set: int | None = Field(default=None, ge=1)
    template_pixel_size_a: float | None = Field(default=None, gt=0)
    # the template picker's score (docs/picking.md, *Template*): "ncc", each
    # position's correlation over its own SD under the disc, in [-1, 1];
    # "correlation", over the micrograph's mean local SD (the NCC times the square
    # root of the power score).  template_whitening: the exponent of the whitening
    # filter, 1 / power ** (0.5 * w): 1 the full matched filter, 0 none
    template_score: Literal["ncc", "correlation"] = "correlation"
    template_whitening: float = Field(default=0.0, ge=0.0, le=1.0)
    edge_px: int = Field(default=32, ge=0)
    downscale_to_a: float | None = Field(default=None, gt=0)
    thumbnail_px: int = Field(default=256, ge=32, le=2048)
    fft_workers: int = Field(default=1, ge=1)

    @field_validator("diameter_max_a")
    @classmethod
    def _max_not_below_min(cls, value: float, info: ValidationInfo) -> float:
        minimum = info.data.get("diameter_min_a")
        if minimum is not None and value < minimum:
            raise ValueError(f"must be >= diameter_min_a ({minimum})")
        return value


class ExtractParams(StageParams):
    kind: Literal["extract"] = "extract"
    job: str = EXTRACT.folder
    motion_stage: str = "motion"
    ctf_stage: str = "ctf"
    curate_stage: str = "curate"
    pick_stage: str = "pick"
    box_px: int | None = Field(default=None, ge=8)  # None: 1.5 x the diameter
    diameter_a: float | None = Field(default=None, gt=0)  # None: picker's max
    # with diameter_a None, when the pick stage reports no diameter_max_a
    fallback_diameter_a: float = Field(default=DEFAULT_EXTRACT_DIAMETER_A, gt=0)
    downscale_box_px: int | None = Field(default=None, ge=8)  # None: RELION-it's
    relion_it_downscale: bool = True
    invert_contrast: bool = True
    # MRC mode 12 halves the stacks (RELION 4's "Write output in float16?"); RELION
    # 3.1 and older cannot read it: false writes float32 (mode 2)
    float16: bool = True


class PluginParams(StageParams):
    """The table of a ``"package.module:function"`` stage: the function's own
    ``params_model`` checks the other keys when the chain is built; ``index`` says
    which job index its results feed."""

    model_config = ConfigDict(extra="allow", frozen=True)
    kind: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    index: IndexRole | None = None


BUILTIN_PARAMS: tuple[type[StageParams], ...] = (
    NoopParams,
    MotionParams,
    CtfParams,
    CurateParams,
    PickParams,
    ExtractParams,
)


def kind_of_model(model: type[StageParams]) -> str:
    """The kind a built-in parameter model belongs to (its ``kind`` default)."""
    return str(model.model_fields["kind"].default)
