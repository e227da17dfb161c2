"""The template picker's score variants and the guard's statistic on a kept
``livestream demo`` project (the simulator's coordinates replayed from its seed).

    .venv/bin/python benchmarks/template_score_demo.py PROJECT [--variants ncc:1 ...]
        [-- DEMO ARGS]

``PROJECT`` is a ``livestream demo --project DIR`` run that made a template set;
anything after ``--`` are the demo's own arguments that run used (the seed, the
exposure count), so the micrographs' truth is replayed as the demo scores it
(``livestream/demo/accuracy.py``: a match within half the smallest diameter, one
to one).  For each variant (``score:whitening``, the pick stage's
``template_score`` / ``template_whitening``): the blob picker and the template
picker with the newest set, both through the pick stage's own code
(``livestream.templates.guard.trial_picks``), recall and precision over the
exposures curation accepted, and the guard's verdict
(``judge_trial``: the counts and ``blob_recovered``) on all of them and on the
last ``guard_exposures`` (what the service would have measured).
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from livestream.config import TemplatesSection
from livestream.demo import command
from livestream.demo.accuracy import PickScore, match_picks
from livestream.demo.microscope import SimulatedMicroscope
from livestream.ledger.store import Ledger
from livestream.stages.params import PickParams
from livestream.templates.guard import done_results, judge_trial, trial_picks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--variants", nargs="*", default=["ncc:1", "correlation:0"])
    argv = sys.argv[1:]
    demo_argv = argv[argv.index("--") + 1 :] if "--" in argv else []
    args = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    demo_parser = argparse.ArgumentParser()
    command.add_args(demo_parser)
    demo = demo_parser.parse_args(["--project", str(args.project), *demo_argv])
    with tempfile.TemporaryDirectory() as tmp:
        session, movies, microscope = command._microscope(demo, Path(tmp))
        replayed = [microscope.acquire(i) for i in range(demo.exposures)]
        config = command.demo_config(demo, session, movies)
        microscope.close()
    assert isinstance(microscope, SimulatedMicroscope)
    db = sqlite3.connect(args.project / "livestream.sqlite")
    ids = [
        r[0]
        for r in db.execute(
            "SELECT exposure_id FROM exposures ORDER BY acquired_unix_s"
        )
    ]
    version, path = db.execute(
        "SELECT version, path FROM template_sets ORDER BY version DESC LIMIT 1"
    ).fetchone()
    db.close()
    ledger = Ledger(config.ledger_path, read_only=True)
    exposures = []
    truth = []
    for eid, exposure in zip(ids, replayed, strict=True):
        done = done_results(ledger, eid)
        pick = done.get("pick")
        if pick is None or pick.skipped:
            continue
        exposures.append((replace(exposure, exposure_id=eid), done))
        truth.append(microscope.truth[exposure.exposure_id])
    ledger.close()
    blob = config.stages.table_of("pick")
    assert isinstance(blob, PickParams)
    section = TemplatesSection()
    last = section.guard_exposures
    for text in args.variants:
        score, whitening = text.split(":")
        params = PickParams.model_validate(
            {
                **blob.model_dump(),
                "picker": "template",
                "templates_path": args.project / path,
                "template_set": version,
                "template_score": score,
                "template_whitening": float(whitening),
            }
        )
        start = time.perf_counter()
        found = trial_picks("pick", exposures, args.project, blob, params)
        seconds = (time.perf_counter() - start) / max(len(found), 1)
        scores = [PickScore(), PickScore()]
        for (b, t), xy in zip(found, truth, strict=True):
            tolerance_px = 0.5 * blob.diameter_min_a / b.pixel_size_a
            for slot, picks in enumerate((b, t)):
                scores[slot] += match_picks(
                    xy,
                    np.column_stack([picks.x_px, picks.y_px]),
                    tolerance_px=tolerance_px,
                )
        diameter_a = 0.5 * (blob.diameter_min_a + blob.diameter_max_a)
        verdicts = [
            judge_trial(
                part,
                diameter_a=diameter_a,
                min_pick_ratio=section.min_pick_ratio,
                min_blob_recovered=section.min_blob_recovered,
            )
            for part in (found, found[-last:])
        ]
        b, t = scores
        print(
            f"{text:16s} set {version}: {len(found)} exposures; templates "
            f"{t.n_picks} picks R {t.recall:.2f} P {t.precision:.2f}; blob "
            f"{b.n_picks} picks R {b.recall:.2f} P {b.precision:.2f}; guard on all:"
            f" ratio {verdicts[0].ratio:.2f} blob_recovered "
            f"{verdicts[0].blob_recovered:.2f}; on the last {last}: ratio "
            f"{verdicts[1].ratio:.2f} blob_recovered "
            f"{verdicts[1].blob_recovered:.2f} accepted {verdicts[1].accepted}; "
            f"{seconds:.1f} s per exposure (both pickers)",
            flush=True,
        )


if __name__ == "__main__":
    main()
