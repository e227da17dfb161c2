"""The progress bar of the long commands: on a terminal only, never with --json."""

from __future__ import annotations

import io
import sys

import pytest

from livestream.cli.console import Progress
from tests.livestream.cli.terminal import FakeTerminal


def test_progress_draws_on_a_terminal_and_keeps_results_on_stdout(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Progress(3, label="motion", unit="movie", json_output=False) as progress:
        assert progress.enabled
        for i in range(3):
            progress.advance()
            progress.write(f"result {i}")
    drawn = terminal.getvalue()
    assert "motion" in drawn
    assert "3/3" in drawn
    assert "result" not in drawn
    assert capsys.readouterr().out.splitlines() == ["result 0", "result 1", "result 2"]


def test_progress_follows_an_on_progress_callback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    terminal = FakeTerminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with Progress(10, label="class2d", unit="mini-batch", json_output=False) as bar:
        bar.update(4, 8)  # the loop knows its own total
    assert "4/8" in terminal.getvalue()


@pytest.mark.parametrize(
    ("stderr", "json_output"),
    [(FakeTerminal(), True), (io.StringIO(), False)],
    ids=["json-on-a-terminal", "not-a-terminal"],
)
def test_progress_is_silent_with_json_or_off_a_terminal(
    stderr: io.StringIO,
    json_output: bool,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(sys, "stderr", stderr)
    with Progress(2, label="ctf", unit="micrograph", json_output=json_output) as bar:
        assert not bar.enabled
        bar.advance()
        bar.update(2, 2)
        bar.write("a result")
        bar.warn("a failure")
    assert capsys.readouterr().out == "a result\n"
    assert stderr.getvalue() == "a failure\n"
