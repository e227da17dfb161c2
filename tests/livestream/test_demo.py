"""The demo: simulated microscope + service with real motion and CTF stages,
and ``livestream status`` reading what it left."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from livestream.cli.main import main

pytestmark = pytest.mark.slow


def test_demo_processes_every_exposure_and_status_reads_the_project(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "demo-project"
    result = subprocess.run(
        [
            sys.executable, "-m", "livestream.cli.main", "demo",
            "--exposures", "2", "--interval-s", "0.2", "--size-px", "512",
            "--workers", "1", "--metrics-port", "0", "--project", str(project),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "metrics:" in result.stdout
    assert result.stdout.count("[  ") == 2
    assert main(["status", "--project", str(project), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["exposures"]["import"] == {"done": 2}
    assert status["exposures"]["motion"] == {"done": 2}
    assert sum(status["exposures"]["ctf"].values()) == 2
    assert status["newest_exposure_age_s"] >= 0
    assert status["exposures_per_hour"] > 0
    assert len(list((project / "MotionCorr" / "job002").glob("*_Fractions.mrc"))) == 2
    assert main(["status", "--project", str(project)]) == 0
    table = capsys.readouterr().out
    assert "motion" in table
    assert "exposures done" in table


def test_status_of_a_folder_without_ledger_fails_clearly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--project", str(tmp_path)]) == 2
    assert "livestream.sqlite: ledger does not exist" in capsys.readouterr().err
