"""Fuzz the mdoc reader: random text and mutated real files.

Nothing but MetadataError may escape, and whatever parses must still satisfy the
record invariants (positive pixel size and exposure time, non-negative dose,
at least one frame, UTC times).
"""

from __future__ import annotations

import functools
import math
import tempfile
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mdcatch import MetadataError
from mdcatch.serialem.mdoc import read_mdoc

TOKENS = ["0", "-1", "1e999", "nan", "", " ", "=", "[", "]", "[ZValue = 1]",
          "[FrameSet = x]", "\x00", "é", "31-Feb-21  10:00:00", "1 2 3", "True",
          "-0.5", "\\\\server\\share\\a.tif", "X:\\a\\b.tif"]  # fmt: skip


def parse_or_metadata_error(text: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fuzz.mdoc"
        path.write_bytes(text)
        failure: MetadataError | None = None
        try:
            _, exposures = read_mdoc(path)
        except MetadataError as error:
            failure = error
    if failure is not None:
        assert failure.path == path
        return
    for e in exposures:
        assert e.optics.pixel_size_a > 0
        assert math.isfinite(e.optics.pixel_size_a)
        assert e.optics.voltage_kv > 0
        assert e.exposure_time_s > 0
        assert e.total_dose_e_per_a2 >= 0
        assert e.n_frames >= 1
        assert e.acquired_utc.utcoffset() == timedelta(0)
        assert e.exposure_id


@functools.cache
def real_texts(folder: Path) -> tuple[bytes, ...]:
    return tuple(p.read_bytes() for p in sorted(folder.rglob("*.mdoc")))


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("[]=TZVaeFrmSt 0123456789.-\n\r:\\"))
        | st.characters(),
        max_size=400,
    )
)
def test_random_text(text: str) -> None:
    parse_or_metadata_error(text.encode("utf-8", "surrogatepass"))


@st.composite
def mutated(draw: st.DrawFn, texts: list[bytes]) -> bytes:
    lines = draw(st.sampled_from(texts)).split(b"\n")
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        op = draw(
            st.sampled_from(["drop", "dup", "value", "garble", "truncate", "swap"])
        )
        if op == "drop":
            del lines[i]
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "value" and b"=" in lines[i]:
            key = lines[i].split(b"=", 1)[0]
            lines[i] = key + b"= " + draw(st.sampled_from(TOKENS)).encode()
        elif op == "garble":
            lines[i] = draw(st.binary(max_size=30))
        elif op == "truncate":
            cut = draw(st.integers(0, len(lines[i])))
            lines = [*lines[:i], lines[i][:cut]]
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[i], lines[j] = lines[j], lines[i]
        if not lines:
            break
    return b"\n".join(lines)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_real_files(data: st.DataObject, shared_data: Path) -> None:
    texts = real_texts(shared_data / "sessions/serialem")
    assert len(texts) == 5
    parse_or_metadata_error(data.draw(mutated(list(texts))))
