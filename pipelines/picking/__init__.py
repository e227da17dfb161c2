"""Particle picking: the blob (LoG/DoG) and template pickers, non-maximum suppression and edge filters, and coordinate files."""

from pipelines.picking.blob import pick_blob
from pipelines.picking.picks import (
    Picks,
    filter_picks,
    read_picks_star,
    suppress_non_maxima,
    write_picks_star,
)
from pipelines.picking.template import (
    pick_template,
    prepare_templates,
)

__all__ = [
    "Picks",
    "filter_picks",
    "pick_blob",
    "pick_template",
    "prepare_templates",
    "read_picks_star",
    "suppress_non_maxima",
    "write_picks_star",
]
