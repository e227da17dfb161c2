"""One bad-input error: StageInputError and MetadataError share InputFieldError."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from mdcatch import MetadataError
from mdcatch.errors import InputFieldError
from pipelines import PipelineError, StageInputError


@pytest.mark.parametrize("cls", [StageInputError, MetadataError])
def test_bad_input_errors_keep_class_fields_and_message_across_pickle(
    cls: type[InputFieldError],
) -> None:
    error = cls("/s/job/a.star", "rlnSphericalAberration", None, "missing")
    back = pickle.loads(pickle.dumps(error))
    assert type(back) is cls
    assert isinstance(back, InputFieldError)
    assert isinstance(back, ValueError)
    assert (back.path, back.field, back.value, back.reason) == (
        Path("/s/job/a.star"),
        "rlnSphericalAberration",
        None,
        "missing",
    )
    assert (
        str(back)
        == str(error)
        == ("/s/job/a.star: field 'rlnSphericalAberration' has value None: missing")
    )


def test_stage_input_error_stays_a_pipeline_error() -> None:
    error = StageInputError("<array>", "grids", (2, 3), "must be 3D")
    assert isinstance(error, PipelineError)
    assert not isinstance(error, MetadataError)
    assert not isinstance(MetadataError("x.xml", "f", 1, "r"), PipelineError)
