"""The extraction stage: particle stacks and a per-micrograph particles STAR.

Runs :func:`pipelines.extraction.job.run_extract` on the motion-corrected micrograph
with the picks of the pick stage and the CTF of the CTF stage, into
``Extract/job006/<stem>.mrcs`` and ``Extract/job006/<stem>_particles.star``.  The
session's particle pool ``Extract/job006/particles.star`` is not touched here (two
workers appending at once would race): :mod:`livestream.project.job_index` rebuilds it in
the daemon from the ledger's done rows.  Figures: ``n_particles`` (extracted) and
``n_skipped_edge``.

Picks made with template set ``N`` (the pick result's ``template_set`` figure,
:mod:`livestream.templates`) are extracted into ``<stem>_tplN.mrcs`` and
``<stem>_tplN_particles.star``: a re-picked exposure gets new files, and the
particle pool retires the rows of its old stack (:mod:`livestream.class2d.pool`).
"""

from __future__ import annotations

from pathlib import Path

from livestream.ledger.schema import StageResult
from livestream.stages.params import ExtractParams
from livestream.stages.post_ctf import (
    ctf_params_of,
    is_rejected,
    job_subfolder,
    micrograph_of,
)
from livestream.stages.task import StageTask
from pipelines.errors import StageInputError
from pipelines.extraction.extract import default_box_px, downscaled_box_px
from pipelines.extraction.job import run_extract
from pipelines.extraction.particles_star import write_particles_star
from pipelines.io.micrographs import read_micrograph
from pipelines.picking.picks import read_picks_star

__all__ = ["run_extract_stage", "template_suffix"]


def template_suffix(template_set: float | None) -> str:
    """``_tplN`` for picks made with template set ``N``; ``""`` otherwise."""
    return "" if template_set is None else f"_tpl{int(template_set)}"


def run_extract_stage(task: StageTask, params: ExtractParams) -> StageResult:
    if is_rejected(task, params.curate_stage):
        return StageResult(
            stage=task.stage,
            figures={"n_particles": 0.0, "n_skipped_edge": 0.0},
            skipped=True,
        )
    path, pixel_size_a = micrograph_of(task, params.motion_stage)
    pick = task.previous.get(params.pick_stage)
    coordinates = None if pick is None else pick.outputs.get("coordinates")
    if pick is None or coordinates is None:
        raise StageInputError(
            task.project_path,
            f"{params.pick_stage}.outputs.coordinates",
            None,
            "extraction needs the picks of an earlier stage",
        )
    ctf = ctf_params_of(task, params.ctf_stage)
    if ctf is None:
        raise StageInputError(
            task.project_path,
            f"{params.ctf_stage}.figures.defocus_u_a",
            None,
            "extraction needs the CTF of an earlier stage",
        )
    image, _ = read_micrograph(path)
    picks = read_picks_star(
        task.project_path / coordinates, pixel_size_a=pixel_size_a, shape=image.shape
    )
    diameter_a = params.diameter_a
    if diameter_a is None:
        # the picker's largest diameter: the same box for every micrograph
        diameter_a = float(
            pick.figures.get("diameter_max_a", params.fallback_diameter_a)
        )
    box_px = params.box_px or default_box_px(diameter_a, pixel_size_a)
    downscale = params.downscale_box_px
    if downscale is None and params.relion_it_downscale:
        downscale = downscaled_box_px(box_px, pixel_size_a)
    ctf_figures = task.previous[params.ctf_stage].figures
    suffix = template_suffix(pick.figures.get("template_set"))
    result = run_extract(
        path,
        picks,
        project_dir=task.project_path,
        job_dir=params.job,
        pixel_size_a=pixel_size_a,
        ctf=ctf,
        box_px=box_px,
        diameter_a=diameter_a,
        downscale_box_px=downscale if downscale != box_px else None,
        ctf_max_resolution_a=ctf_figures.get("fit_resolution_a", float("nan")),
        ctf_figure_of_merit=ctf_figures.get("figure_of_merit", float("nan")),
        invert_contrast=params.invert_contrast,
        stack_suffix=suffix,
        float16=params.float16,
    )
    figures = {
        "n_particles": float(result.n_extracted),
        "n_skipped_edge": float(result.n_skipped_edge),
        "box_px": float(box_px),
    }
    if result.n_extracted == 0:
        return StageResult(stage=task.stage, figures=figures)
    rel = path.resolve().relative_to(task.project_path.resolve())
    star = Path(params.job) / job_subfolder(rel) / f"{path.stem}{suffix}_particles.star"
    write_particles_star(task.project_path / star, result.optics, result.particles)
    stack = result.stack_path.resolve().relative_to(task.project_path.resolve())
    return StageResult(
        stage=task.stage,
        outputs={"particles_star": str(star), "stack": str(stack)},
        figures=figures,
    )
