"""The live 3D classification: with ``[class3d] classes = K > 1``, once the
initial model's schedule has run (its snapshot iteration reaches
``n_minibatches``), the whole 2D selection is classified against the model's K
class maps, and again whenever the selection has grown by ``reclassify_growth``
(a fraction) since the last classification.

It runs ``livestream class3d`` (EM over every particle, K references: RELION's
Class3D, :mod:`pipelines.class3d.classify`) as a child process
(:mod:`livestream.class3d.children`) on a frozen copy of the selection
(``run_input.star``) and the model's newest class maps resampled to the particles'
box (``run_ref_classKKK.mrc``), for ``classify_iterations`` EM iterations, seeded
by ``[class3d] seed``.  A finished run's files (``run_itNNN_classKKK.mrc``, their
slices PNGs, ``run_itNNN_data.star`` with every particle's class and pose,
``run_itNNN_model.star``, ``run.out``, ``run.err``) replace the previous run's in
the ``Class3D`` job folder, which ``default_pipeline.star`` lists as
``relion.class3d``; ``run_classes.json`` is the marker and the body of a
``refine3d`` event with ``step: "classify"`` (``class_fractions``,
``class_counts``, the maps).  It is checked at start and after each 3D snapshot
by the task of :class:`livestream.class3d.refinement.LiveRefinement` (a
refinement request waits while a classification runs); at drain a
classification still running is killed at once and runs again after the next
start.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livestream.class3d.children import ChildJobs, work_folder
from livestream.config import Class3dSection
from livestream.telemetry.reporting import Reporter
from pipelines.extraction.particles_star import read_particles_star
from pipelines.io.outputs import write_star

__all__ = ["CLASSES_NAME", "LiveClassification"]

log = logging.getLogger(__name__)

CLASSES_NAME = "run_classes.json"  # the newest finished classification (marker)
MODEL_SUMMARY_NAME = "run_class3d.json"  # livestream.class3d.live's snapshot body


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads(path.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return body if isinstance(body, dict) else None


class LiveClassification:
    """Classifies the selection against the initial model's K maps (module
    docstring); :meth:`run_if_due` after each 3D snapshot."""

    def __init__(
        self,
        section: Class3dSection,
        project: Path,
        selected_star: Path,
        reporter: Reporter,
        children: ChildJobs,
        *,
        on_done: Callable[[], object] | None = None,
    ) -> None:
        self.section = section
        self.project = project
        self.selected_star = selected_star
        self.reporter = reporter
        self.children = children
        self.on_done = on_done
        self.folder = project / section.classify_job
        self.model_folder = project / section.job

    def _due(self) -> tuple[dict[str, Any], int] | None:
        """The model's snapshot body and the selection's size when a
        classification is due, else ``None``."""
        if self.section.classes < 2:
            return None
        model = _read_json(self.model_folder / MODEL_SUMMARY_NAME)
        if model is None or int(model["iteration"]) < self.section.n_minibatches:
            return None  # no map yet, or the VDAM schedule has not run through
        if not self.selected_star.is_file():
            return None
        _, table = read_particles_star(self.selected_star)
        marker = _read_json(self.folder / CLASSES_NAME)
        if marker is not None:
            grown = len(table) - int(marker["n_particles"])
            growth = self.section.reclassify_growth
            if growth <= 0 or grown < growth * int(marker["n_particles"]):
                return None
        return model, len(table)

    def _prepare(self, work: Path, model: dict[str, Any]) -> list[Path]:
        """The frozen selection and the class maps at the particles' box."""
        # the map helpers' packages load the 3D and 2D numerics (numba, scipy, pandas):
        # only when a run is prepared, not when the service imports this module
        from pipelines.reconstruct.mask import resample_map  # deferred: numerics
        from pipelines.reconstruct.outputs import write_map  # deferred: numerics
        from pipelines.simulate.volumes import load_map  # deferred: numerics

        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        optics, table = read_particles_star(self.selected_star)
        write_star(work / "run_input.star", {"optics": optics, "particles": table})
        box = int(optics["rlnImageSize"].iloc[0])
        pixel_size_a = float(optics["rlnImagePixelSize"].iloc[0])
        refs = []
        for k, path in enumerate(model["maps"], start=1):  # a loop over classes
            volume, _ = load_map(path)
            refs.append(
                write_map(
                    work / f"run_ref_class{k:03d}.mrc",
                    resample_map(volume, box),
                    pixel_size_a=pixel_size_a,
                )
            )
        return refs

    async def run_if_due(self) -> None:
        """Classify when due (see the module docstring)."""
        due = await asyncio.to_thread(self._due)
        if due is None:
            return
        model, n_particles = due
        work = work_folder(self.folder)
        refs = await asyncio.to_thread(self._prepare, work, model)
        relative = [str(p.relative_to(self.project)) for p in refs]
        args = [
            "livestream.cli.class3d",
            str((work / "run_input.star").relative_to(self.project)),
            "--refs",
            *relative,
            "--classes",
            str(len(refs)),
            "--out",
            str(work.relative_to(self.project)),
            "--iterations",
            str(self.section.classify_iterations),
            "--seed",
            str(self.section.seed),
            "--json",
        ]
        if self.section.particle_diameter_a is not None:
            args += ["--particle-diameter-a", str(self.section.particle_diameter_a)]
        log.info(
            "class3d: classifying %d particles against the %d maps of model "
            "iteration %s",
            n_particles,
            len(refs),
            model["iteration"],
        )
        started = time.perf_counter()
        outcome = await self.children.run(args, work)
        seconds = round(time.perf_counter() - started, 3)
        ending: dict[str, Any] = {
            "step": "classify",
            "trigger": "snapshot",
            "request_id": None,
            "job": self.section.classify_job,
            "seconds": seconds,
        }
        if outcome is None or isinstance(outcome, str):
            status = "abandoned" if outcome is None else "failed"
            reason = outcome or "the drain time limit was reached"
            log.warning("class3d classification %s: %s", status, reason)
            if outcome is None:
                shutil.rmtree(work, ignore_errors=True)
            self.reporter.refine3d({**ending, "status": status, "reason": reason})
            return
        payload = {
            **ending,
            "status": "done",
            "model_iteration": int(model["iteration"]),
            "n_particles": n_particles,
            "classes": len(refs),
            "iterations": outcome["iterations"],
            "class_fractions": outcome["class_fractions"],
            "class_counts": outcome["class_counts"],
            "class_resolution_a": outcome["resolution_a"],
            "maps": [str(self.folder / Path(p).name) for p in outcome["maps"]],
            "data_star": str(self.folder / Path(outcome["data_star"]).name),
            "model_star": str(self.folder / Path(outcome["model_star"]).name),
            "finished_utc": dt.datetime.now(dt.UTC).isoformat(),
        }
        await asyncio.to_thread(self._finish, work, payload)
        self.reporter.refine3d(payload)

    def _finish(self, work: Path, payload: dict[str, Any]) -> None:
        ChildJobs.finish(work, self.folder, CLASSES_NAME, payload)
        if self.on_done is not None:  # the pipeline lists the job with its files
            self.on_done()
