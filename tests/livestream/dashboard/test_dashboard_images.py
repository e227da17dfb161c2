"""Pictures the dashboard renders on demand: a micrograph that was never picked
(curation rejected it) is drawn from its MRC, once per file version."""

from __future__ import annotations

import asyncio
import http.client
import io
from pathlib import Path

import numpy as np
from PIL import Image

from livestream.config import load_config
from livestream.dashboard.server import DashboardServer, DashboardSources
from livestream.ledger.store import Ledger, StageResult
from pipelines.io.outputs import write_mrc


def _get(address: tuple[str, int], path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection(*address, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def _ledger_with_micrograph(project: Path, relative: str) -> None:
    ledger = Ledger(project / "livestream.sqlite")
    try:
        ledger.record_discovered("e1", metadata_path=project / "e1.xml")
        ledger.mark_ready(
            "e1",
            chain=["motion"],
            acquired_unix_s=1.0,
            metadata_path=project / "e1.xml",
            movie_path=project / "e1.tiff",
            movie_size_bytes=1,
            movie_mtime_ns=1,
        )
        ledger.mark_running("e1", "motion")
        ledger.mark_done(
            "e1",
            StageResult(stage="motion", outputs={"micrograph": relative}),
            duration_s=1.0,
            last=True,
        )
    finally:
        ledger.close()


async def test_a_micrograph_without_picks_is_rendered_on_demand(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    project = tmp_path / "project"
    relative = "MotionCorr/job002/Movies/e1.mrc"
    write_mrc(
        project / relative,
        rng.standard_normal((300, 400)).astype(np.float32),
        pixel_size_a=1.0,
        float16=False,
    )
    _ledger_with_micrograph(project, relative)
    config = load_config(None, {"project": {"path": project}, "dashboard": {"port": 0}})
    server = await DashboardServer.start(
        config,
        DashboardSources(thresholds=dict, queue=lambda: (0, 0), stopping=bool),
    )
    try:
        status, headers, body = await asyncio.to_thread(
            _get, server.address, "/api/v1/exposures/e1/picks.png"
        )
        assert status == 200
        assert headers["Content-Type"] == "image/png"
        picture = Image.open(io.BytesIO(body))
        assert max(picture.size) <= 256  # binned to a thumbnail
        assert picture.size[0] > picture.size[1]  # (ny, nx) = (300, 400) kept
        again = await asyncio.to_thread(
            _get, server.address, "/api/v1/exposures/e1/picks.png"
        )
        assert again[2] == body  # the cached rendering
        status, _, _ = await asyncio.to_thread(
            _get, server.address, "/api/v1/exposures/e1/ctf.png"
        )
        assert status == 404  # no CTF stage ran
        (project / relative).write_bytes(b"not an MRC file")
        status, _, text = await asyncio.to_thread(
            _get, server.address, "/api/v1/exposures/e1/picks.png"
        )
        assert status == 404
        assert b"e1.mrc" in text  # the error names the file
    finally:
        await server.close()
