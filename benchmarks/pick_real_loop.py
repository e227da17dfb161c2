"""The service's blob -> 2D -> template loop on a labelled real data set
(``bench_pick_real.py --pickers blob-2d-template``).

A sibling module of the benchmark (imported as ``pick_real_loop``).  What the
service does with the exposures of a session, with the service's own functions
and defaults, on the micrographs of one data set:

1. the live pick stage's blob picker (``pick_blob`` with ``PickParams()``'s
   threshold, downscale, and the micrograph's CTF where the data set has one);
2. the extract stage's extraction (``run_extract`` into a scratch project, the
   stage's box from the largest diameter, RELION-it's downscaled box, inverted
   contrast, float16 stacks), all in one ``particles.star`` as the job index
   keeps it;
3. the online 2D actor (``Class2dActor`` with ``actor_settings(Class2dSection())``,
   the service's seed), fed every micrograph's particles, stepped and snapshotted
   every ``snapshot_every`` mini-batches as the service does; the ranker's
   selection of each snapshot goes through the template loop's ``choose_classes``
   (``TemplatesSection()``), and the first snapshot that makes a set gives
   template set 1 (the service's first set; ``--loop-set last`` runs the actor to
   its pass budget and takes the last snapshot's selection instead);
4. ``write_template_stack`` (the set's MRC stack), read back as the pick stage
   reads it, and the template picker with the pick stage's arguments (its
   per-micrograph threshold: ``TemplatesSection().threshold_sd = None``) on every
   micrograph of the set.

Without a CTF (the labelled PNGs and JPEGs carry none) the particles are
extracted with a flat CTF (1 at every frequency: no defocus, no Cs, a 90° phase
shift with no amplitude contrast), so 2D classifies the images as they are, and
the template picker gets ``ctf=None`` as the other rows do.  The service always
has a CTF; this is the one place the benchmark cannot follow it.

Caveat, as in the service: the 2D classes are built from the blob picks of the
same micrographs that are then template-picked (no micrograph is left out).
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Literal

import mrcfile
import numpy as np
from pick_real_labels import Micrograph, Picker  # a sibling module
from PIL import Image, ImageDraw

from livestream.class2d.actor import Class2dActor
from livestream.class2d.live import actor_settings
from livestream.config import Class2dSection, TemplatesSection
from livestream.stages.params import ExtractParams, PickParams
from livestream.templates.live import choose_classes
from livestream.templates.store import template_stack_path, write_template_stack
from pipelines.ctf.model import CtfParams
from pipelines.extraction.extract import default_box_px, downscaled_box_px
from pipelines.extraction.job import run_extract
from pipelines.extraction.particles_star import append_particles_star
from pipelines.io.outputs import write_mrc
from pipelines.picking.blob import pick_blob
from pipelines.picking.template import pick_template

# CTF = -sin(chi) = 1 everywhere: chi = -(phase shift) = -90°, no defocus, no Cs
FLAT_CTF = CtfParams(
    defocus_u_a=0.0,
    defocus_v_a=0.0,
    cs_mm=0.0,
    amplitude_contrast=0.0,
    phase_shift_deg=90.0,
)
MONTAGE_TILE_PX = 64

LoopSet = Literal["first", "last"]


@dataclass(slots=True, kw_only=True)
class TemplateLoop:
    """One data set's template set and what it took."""

    dataset: str
    templates: np.ndarray  # (n, box, box), as the pick stage reads the stack
    template_pixel_size_a: float
    classes: tuple[int, ...]
    n_particles: int  # behind the selected classes
    iteration: int  # the snapshot's mini-batch
    n_blob_picks: int
    n_extracted: int
    box_px: int
    selected_classes: int
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _extract_all(
    micrographs: list[Micrograph], project: Path, loop: dict[str, float]
) -> tuple[Path, int, int, int]:
    """Blob-pick and extract every micrograph as the live stages do; the
    session's particle STAR (all of them), blob picks, particles extracted and the box."""
    pick, extract = PickParams(), ExtractParams()
    star = project / extract.job / "particles.star"
    n_picks = n_extracted = box_px = 0
    for mic in micrographs:
        start = time.perf_counter()
        picks = pick_blob(
            mic.image,
            pixel_size_a=mic.pixel_size_a,
            diameter_range_a=mic.diameter_range_a,
            threshold_sd=pick.threshold_sd,
            edge_px=pick.edge_px,
            downscale_to_a=pick.downscale_to_a,
            ctf=mic.ctf,
        )
        loop["blob"] += time.perf_counter() - start
        n_picks += len(picks)
        start = time.perf_counter()
        path = project / "MotionCorr" / "job002" / "Movies" / f"{mic.name}.mrc"
        write_mrc(path, mic.image.astype(np.float32), pixel_size_a=mic.pixel_size_a)
        # the extract stage's box: 1.5 x the picker's largest diameter, then
        # RELION-it's downscaled box
        diameter_a = mic.diameter_range_a[1]
        box_px = default_box_px(diameter_a, mic.pixel_size_a)
        small = downscaled_box_px(box_px, mic.pixel_size_a)
        result = run_extract(
            path,
            picks,
            project_dir=project,
            job_dir=extract.job,
            pixel_size_a=mic.pixel_size_a,
            ctf=mic.ctf or FLAT_CTF,
            box_px=box_px,
            diameter_a=diameter_a,
            downscale_box_px=small if small != box_px else None,
            invert_contrast=extract.invert_contrast,
            float16=extract.float16,
        )
        path.unlink()  # the stacks are what 2D reads
        n_extracted += result.n_extracted
        if result.n_extracted:  # the session's particles.star, as the job index has it
            append_particles_star(star, result.optics, result.particles)
        loop["extract"] += time.perf_counter() - start
    return star, n_picks, n_extracted, box_px


def build_template_loop(
    micrographs: list[Micrograph],
    *,
    which: LoopSet = "first",
    montage: Path | None = None,
) -> TemplateLoop | None:
    """Template set 1 of the service's loop over ``micrographs`` (one data set);
    ``None`` when 2D selects too little for a set (printed)."""
    dataset = micrographs[0].dataset
    seconds = {"blob": 0.0, "extract": 0.0, "class2d": 0.0}
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="loop_") as tmp:
        project = Path(tmp)
        star, n_picks, n_extracted, box_px = _extract_all(micrographs, project, seconds)
        section = Class2dSection()
        settings = actor_settings(section)
        if n_extracted < settings.min_pool:
            # the service would wait for more exposures: 2D would not start yet
            notes.append(
                f"{n_extracted} particles < min_pool {settings.min_pool}: "
                "the service's 2D would not start; run here with min_pool = "
                f"{n_extracted}"
            )
            settings = replace(settings, min_pool=max(2, n_extracted))
        start = time.perf_counter()
        actor = Class2dActor(
            project / "Class2D" / "job007", settings, seed=section.seed, project=project
        )
        actor.feed(star)
        templates = TemplatesSection()
        chosen = info = None
        while actor.step():
            if actor.state is not None and actor.state.minibatch_index % 5 == 0:
                print(
                    f"{dataset}: 2D mini-batch {actor.state.minibatch_index}, "
                    f"{time.perf_counter() - start:.0f} s",
                    flush=True,
                )
            if actor.minibatches_since_snapshot >= settings.snapshot_every:
                info = actor.snapshot()
                chosen = choose_classes(info.payload, templates)
                _print_snapshot(dataset, info.payload, chosen)
                if chosen is not None and which == "first":
                    break
        unfinished = chosen is None or which == "last"
        if actor.state is not None and unfinished and actor.minibatches_since_snapshot:
            info = actor.snapshot()
            chosen = choose_classes(info.payload, templates)
            _print_snapshot(dataset, info.payload, chosen)
        seconds["class2d"] = time.perf_counter() - start
        if info is None or chosen is None:
            print(f"{dataset}: no template set (2D selected too little)", *notes)
            if info is not None and montage is not None:  # the ranked classes
                _write_small(montage, Path(info.payload["montage_png"]))
            return None
        classes, n_particles = chosen
        stack = project / template_stack_path(PickParams().job, 1)
        write_template_stack(info.payload["classes_mrcs"], classes, stack)
        with mrcfile.open(stack, permissive=True) as mrc:  # as the pick stage reads it
            averages = np.asarray(mrc.data, dtype=np.float32)
            pixel_a = float(mrc.voxel_size.x)
        if montage is not None:
            write_template_montage(montage, averages, classes, info.payload)
    return TemplateLoop(
        dataset=dataset,
        templates=averages,
        template_pixel_size_a=pixel_a,
        classes=classes,
        n_particles=n_particles,
        iteration=int(info.payload["iteration"]),
        n_blob_picks=n_picks,
        n_extracted=n_extracted,
        box_px=box_px,
        selected_classes=len(info.payload["selected_classes"]),
        seconds=seconds,
        notes=notes,
    )


def _print_snapshot(
    dataset: str, payload: dict[str, object], chosen: object | None
) -> None:
    selected, scores = payload["selected_classes"], payload["class_scores"]
    assert isinstance(selected, list)
    assert isinstance(scores, list)
    print(
        f"{dataset}: 2D mini-batch {payload['iteration']}: {len(selected)} classes "
        f"selected, {payload['selected_particles']} particles (best class scores "
        f"{sorted(scores)[-3:]}, threshold {payload['score_threshold']}); "
        f"set: {chosen}"
    )


def _write_small(path: Path, montage_png: Path) -> None:
    """The actor's own montage (every class, ranked; green frames: selected),
    halved."""
    with Image.open(montage_png) as picture:
        small = picture.resize((picture.width // 2, picture.height // 2))
    path.parent.mkdir(parents=True, exist_ok=True)
    small.save(path, optimize=True)


def write_template_montage(
    path: Path,
    averages: np.ndarray,
    classes: tuple[int, ...],
    payload: dict[str, object],
) -> None:
    """A small PNG: the set's averages in a row, each captioned with its class
    and particle count."""
    counts = payload["class_counts"]
    assert isinstance(counts, list)
    tile = MONTAGE_TILE_PX
    columns = min(len(classes), 8)
    rows = math.ceil(len(classes) / columns)
    canvas = Image.new("L", (columns * (tile + 2), rows * (tile + 14)), 0)
    draw = ImageDraw.Draw(canvas)
    for slot, (cls, image) in enumerate(zip(classes, averages, strict=True)):
        low, high = np.percentile(image, [1.0, 99.0])
        grey = np.clip((image - low) / max(high - low, 1e-12), 0, 1) * 255
        picture = Image.fromarray(grey.astype(np.uint8)).resize((tile, tile))
        x0, y0 = (slot % columns) * (tile + 2), (slot // columns) * (tile + 14)
        canvas.paste(picture, (x0, y0))
        draw.text((x0 + 2, y0 + tile + 1), f"#{cls} n={counts[cls - 1]}", fill=255)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path, optimize=True)


def make_loop_picker(
    micrographs: list[Micrograph],
    *,
    which: LoopSet = "first",
    montage_dir: Path | None = None,
    sets_dir: Path | None = None,
    built: dict[str, TemplateLoop | None] | None = None,
) -> Picker:
    """The loop's template picker: template set 1 of each data set, built here
    (before any micrograph is timed; ``built`` receives them), then the template
    picker per micrograph.  With ``sets_dir`` a set built before for the same
    micrographs is read from there (and a new one saved), so that the template
    picker can be measured again without running 2D again."""
    loops: dict[str, TemplateLoop | None] = {} if built is None else built
    pick, section = PickParams(), TemplatesSection()
    for dataset in dict.fromkeys(m.dataset for m in micrographs):
        slug = "".join(c if c.isalnum() else "_" for c in dataset).lower().strip("_")
        mine = [m for m in micrographs if m.dataset == dataset]
        saved = None
        if sets_dir is not None:
            saved = sets_dir / f"{slug}_{len(mine)}_{which}.npz"
            if saved.exists():
                loops[dataset] = read_loop(saved)
                print(f"{dataset}: template set read from {saved}")
                continue
        montage = None
        if montage_dir is not None:
            montage = montage_dir / f"picking_loop_{slug}.png"
        loops[dataset] = loop = build_template_loop(mine, which=which, montage=montage)
        if saved is not None and loop is not None:
            save_loop(saved, loop)

    def picker(mic: Micrograph) -> tuple[np.ndarray, np.ndarray | None]:
        loop = loops[mic.dataset]
        if loop is None:
            return np.zeros((0, 2)), np.zeros(0)
        picks = pick_template(
            mic.image,
            loop.templates,
            pixel_size_a=mic.pixel_size_a,
            # the stage's: the middle of the pick range
            diameter_a=float(np.mean(mic.diameter_range_a)),
            ctf=mic.ctf,
            template_pixel_size_a=loop.template_pixel_size_a,
            threshold_sd=section.threshold_sd,
            downscale_to_a=pick.downscale_to_a,
        )
        return np.column_stack([picks.x_px, picks.y_px]), picks.score

    return picker


def save_loop(path: Path, loop: TemplateLoop) -> None:
    """``loop`` as an ``.npz`` (the averages and a JSON record of the rest)."""
    record = {f.name: getattr(loop, f.name) for f in fields(loop)}
    del record["templates"]
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, templates=loop.templates, record=json.dumps(record))


def read_loop(path: Path) -> TemplateLoop:
    with np.load(path) as saved:
        record = json.loads(str(saved["record"]))
        record["classes"] = tuple(record["classes"])
        return TemplateLoop(templates=saved["templates"], **record)


def print_loops(loops: dict[str, TemplateLoop | None]) -> None:
    """What each data set's loop made and how long each part took."""
    for dataset, loop in loops.items():
        if loop is None:
            print(f"{dataset}: no template set")
            continue
        times = ", ".join(f"{k} {v:.0f} s" for k, v in loop.seconds.items())
        print(
            f"{dataset}: {loop.n_blob_picks} blob picks, {loop.n_extracted} "
            f"extracted (box {loop.box_px}); 2D mini-batch {loop.iteration}: "
            f"{loop.selected_classes} classes selected, {loop.n_particles} "
            f"particles; templates {list(loop.classes)} at "
            f"{loop.template_pixel_size_a:.2f} A/px; {times}",
            *loop.notes,
        )
