"""pipelines: the numerical stages and the image-formation simulator.

Pure functions over arrays, records and explicit file paths.  No asyncio, no global
state, no metrics, no messaging.
"""

from pipelines.errors import PipelineError, StageInputError

__all__ = ["PipelineError", "StageInputError"]
