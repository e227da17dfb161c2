"""The one exception family of :mod:`pipelines`.

The live scheduler decides what to do with a failure by its class:
:class:`StageInputError` means the input itself is bad (quarantine at once, retrying
cannot help); any other exception is treated as possibly transient and retried with
backoff up to the configured number of attempts.
"""

from __future__ import annotations

from mdcatch.errors import InputFieldError

__all__ = ["PipelineError", "StageInputError"]


class PipelineError(Exception):
    """Base class of every error a pipelines stage raises on purpose."""


class StageInputError(PipelineError, InputFieldError):
    """An input file or parameter that no retry can fix.

    Names the file, the field and the value (``path``, ``field``, ``value``,
    ``reason``), like :class:`mdcatch.MetadataError`: both are
    :class:`mdcatch.errors.InputFieldError`, which defines the message and pickling.
    """
