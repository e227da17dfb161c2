"""The processes of a service's RELION pipeline, from its configuration.

``Import/job001`` (the movies), then one process per chain stage that has a RELION
job (motion, CTF, curation as ``relion.select.onvalue``, picking, extraction), then
the online ``Class2D`` job, the online ``InitialModel`` job fed its selection,
the ``Refine3D`` job of its map and the ``External`` job that rebalances the
refined orientations.  Each process's inputs are the nodes of the stages
that feed it; its ``job.star`` options are the stage's validated parameters (or
the ``[session]`` / ``[class2d]`` table) and its ``note.txt`` the command line and
that table.  A plugin stage whose kind has no RELION job is not listed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from livestream.config import ServiceConfig
from livestream.project.job_index import IndexTargets, index_targets
from livestream.project.jobs import (
    CLASS3D,
    IMPORT,
    INITIAL_MODEL,
    REBALANCE,
    REFINE3D,
    RelionJob,
)
from livestream.project.pipeline import (
    IMPORT_MOVIES,
    PipelineJob,
    RelionPipeline,
    job_options,
    pick_process_type,
)
from livestream.stages.params import IndexRole, PickParams
from livestream.stages.registry import Chain, ChainLink

__all__ = ["pipeline_for", "pipeline_jobs"]


def pipeline_for(
    config: ServiceConfig, chain: Chain, command: Sequence[str]
) -> RelionPipeline:
    """The pipeline of a service running ``chain`` (``command``: its argv)."""
    return RelionPipeline(config.project.path, pipeline_jobs(config, chain, command))


def pipeline_jobs(
    config: ServiceConfig, chain: Chain, command: Sequence[str]
) -> list[PipelineJob]:
    """Every process the service may create, in job-number order."""
    targets = index_targets(chain)
    when = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    head = f"++++ livestream, started {when}, with the following command:\n"
    head += " ".join(command) + "\n++++ and this configuration:\n"
    session = config.session.model_dump(mode="json")
    jobs = [
        PipelineJob(
            folder=IMPORT.folder,
            process_type=IMPORT.process_type,
            outputs=IMPORT.outputs,
            options={
                **job_options(session),
                "fn_in_raw": "Movies/*",  # RELION's: the movies, via the link
                "is_multiframe": "Yes",
            },
            note=head + _table("session", session),
        )
    ]
    micrographs = _micrographs_node(targets)
    for link in chain.links:
        job = _job_of(link)
        if job is None or link.job is None:
            continue
        params = link.params.model_dump(mode="json")
        inputs = _inputs(link, targets, micrographs)
        jobs.append(
            PipelineJob(
                folder=link.job,
                process_type=_process_type(link, job),
                outputs=job.outputs,
                inputs=tuple(node for _, node in inputs),
                options=job_options(params) | dict(inputs),
                note=head + _table(f"stages.{link.name}", params),
            )
        )
    if config.class2d.enabled and targets.extract_stage is not None:
        class2d = config.class2d.model_dump(mode="json")
        jobs.append(
            PipelineJob(
                folder=config.class2d.job,
                process_type="relion.class2d.vdam",
                # the ranker's selection, which the InitialModel job reads
                outputs=(("run_selected.star", "ParticleGroupMetadata.star.relion"),),
                inputs=(f"{targets.extract_job}/particles.star",),
                options=job_options(class2d)
                | {  # RELION's names of the input and the run's size
                    "fn_img": f"{targets.extract_job}/particles.star",
                    "nr_classes": str(config.class2d.n_classes),
                    "nr_iter_grad": str(config.class2d.n_minibatches),
                    "do_grad": "Yes",
                },
                note=head + _table("class2d", class2d),
                iterative=True,
            )
        )
        if config.class3d.enabled:
            jobs.append(_initial_model_job(config, head))
            jobs += _refinement_jobs(config, head)
    return sorted(jobs, key=lambda j: j.number)


def _initial_model_job(config: ServiceConfig, head: str) -> PipelineJob:
    """The online initial model, fed the 2D selection (``run_selected.star``;
    RELION would have a Select job between them)."""
    class3d = config.class3d.model_dump(mode="json")
    selected = f"{config.class2d.job}/run_selected.star"
    label = "DensityMap.mrc.relion.initialmodel"
    return PipelineJob(
        folder=config.class3d.job,
        process_type=INITIAL_MODEL.process_type,
        outputs=INITIAL_MODEL.outputs,
        inputs=(selected,),
        options=job_options(class3d)
        | {  # RELION's names of the input and the run
            "fn_img": selected,
            "nr_classes": str(config.class3d.classes),
            "nr_iter": str(config.class3d.n_minibatches),
            "sym_name": config.class3d.symmetry,
            "do_run_C1": "Yes",
        },
        note=head + _table("class3d", class3d),
        iteration_outputs=(
            ("data.star", "ParticleGroupMetadata.star.relion.initialmodel"),
            *(
                (f"class{k:03d}.mrc", label)
                for k in range(1, config.class3d.classes + 1)
            ),
        ),
    )


def _refinement_jobs(config: ServiceConfig, head: str) -> list[PipelineJob]:
    """The refinement of the live map (run on request and at drain), the
    Rebalance Orientations of its particles and the live 3D classification
    (listed once their folders exist)."""
    section = config.class3d
    selected = f"{config.class2d.job}/run_selected.star"
    reference = f"{section.job}/initial_model.mrc"
    refined = f"{section.refine_job}/run_data.star"
    table = _table("class3d", section.model_dump(mode="json"))
    return [
        PipelineJob(
            folder=section.refine_job,
            process_type=REFINE3D.process_type,
            outputs=REFINE3D.outputs,
            inputs=(selected, reference),
            options={  # RELION's names of the Refine3D job's options
                "fn_img": selected,
                "fn_ref": reference,
                "ini_high": str(section.refine_lowpass_a),
                "sym_name": section.symmetry,
                "ref_correct_greyscale": "No",
                "particle_diameter": str(section.particle_diameter_a or ""),
            },
            note=head + table,
        ),
        PipelineJob(
            folder=section.rebalance_job,
            process_type=REBALANCE.process_type,
            outputs=REBALANCE.outputs,
            inputs=(refined,),
            options={"fn_exe": "livestream rebalance", "in_part": refined},
            note=head + table,
        ),
        PipelineJob(  # only with classes > 1 does its folder appear
            folder=section.classify_job,
            process_type=CLASS3D.process_type,
            inputs=(selected,),
            options={  # RELION's names of the Class3D job's options
                "fn_img": selected,
                "fn_ref": f"{section.job}/run_itNNN_classKKK.mrc",
                "nr_classes": str(section.classes),
                "nr_iter": str(section.classify_iterations),
                "sym_name": section.symmetry,
            },
            note=head + table,
            iteration_outputs=(
                ("data.star", "ParticleGroupMetadata.star.relion.class3d"),
                ("model.star", "DensityMapGroupMetadata.star.relion.class3d.model"),
                *(
                    (f"class{k:03d}.mrc", "DensityMap.mrc.relion.class3d")
                    for k in range(1, section.classes + 1)
                ),
            ),
        ),
    ]


def _job_of(link: ChainLink) -> RelionJob | None:
    return link.kind.relion_job


def _process_type(link: ChainLink, job: RelionJob) -> str:
    if isinstance(link.params, PickParams):
        return pick_process_type(link.params.picker)
    return job.process_type


def _micrographs_node(targets: IndexTargets) -> str | None:
    """The micrographs that picking and extraction read: the selection when
    curation runs, else the CTF table."""
    if targets.curate_stage is not None:
        return f"{targets.curate_job}/micrographs.star"
    if targets.ctf_stage is not None:
        return f"{targets.ctf_job}/micrographs_ctf.star"
    return None


def _inputs(
    link: ChainLink, targets: IndexTargets, micrographs: str | None
) -> tuple[tuple[str, str], ...]:
    """(RELION's job option for the input, the input node) of a chain stage."""
    role = link.index
    mics = () if micrographs is None else (micrographs,)
    if role is IndexRole.MOTION:
        return (("input_star_mics", IMPORT_MOVIES),)
    if role is IndexRole.CTF:
        return (
            ("input_star_mics", f"{targets.motion_job}/corrected_micrographs.star"),
        )
    if role is IndexRole.CURATE:
        return (("fn_mic", f"{targets.ctf_job}/micrographs_ctf.star"),)
    if role is IndexRole.PICK:
        return tuple(("fn_input_autopick", m) for m in mics)
    if role is IndexRole.EXTRACT:
        coords = (
            ()
            if targets.pick_stage is None
            else (("coords_suffix", f"{targets.pick_job}/autopick.star"),)
        )
        return coords + tuple(("star_mics", m) for m in mics)
    return ()


def _table(name: str, values: Mapping[str, Any]) -> str:
    lines = [f"[{name}]"]
    lines += [f"{key} = {value!r}" for key, value in values.items()]
    return "\n".join(lines) + "\n"
