"""``livestream curate`` on a curated ledger: one JSON object, progress on a terminal."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from livestream.cli.curate import STEPS
from livestream.cli.main import main
from tests.livestream.cli.terminal import FakeTerminal
from tests.livestream.curation.test_curation_live import CHAIN, _curated_ledger
from tests.livestream.service_fixtures import service_config, write_config_file


@pytest.fixture
def project(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """A project of 12 curated exposures and a config with strict thresholds."""
    project = tmp_path / "project"
    project.mkdir()
    _curated_ledger(project, rng, 12).close()
    config = service_config(
        tmp_path / "session",
        tmp_path / "movies",
        project,
        stages={"chain": list(CHAIN), "curate": {"max_ctf_resolution_a": 1.0}},
    )
    return project, write_config_file(tmp_path / "live.toml", config)


def test_json_is_one_object_and_no_progress(
    project: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, config = project
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    argv = ["curate", "--project", str(folder), "--config", str(config), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["curation"]["accepted"] == 0
    assert report["curation"]["rejected"] == 12
    assert terminal.getvalue() == ""


def test_progress_on_a_terminal_names_the_steps(
    project: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    folder, config = project
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    assert main(["curate", "--project", str(folder), "--config", str(config)]) == 0
    drawn = terminal.getvalue()
    for step in STEPS:
        assert step in drawn
    assert "12 rejected" in capsys.readouterr().out
