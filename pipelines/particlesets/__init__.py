"""Particle-set files converted and divided: RELION 3.1+ STAR down to 3.0, Dynamo
tables to STAR, reproducible random subsets and half sets.

Its own room (not :mod:`pipelines.io`, which holds images in and crash-safe files
out, nor :mod:`pipelines.reconstruct`, which needs images and poses): these are
metadata-only operations on particle tables that come from outside, read strictly
so that a bad row is named by file, line and column.

Public API:

- :func:`read_star_tables`, :class:`StarTable`, :func:`write_star_tables`,
  :func:`main_table_name`: a STAR file as text tables with line numbers
- :func:`downgrade_to_relion30`, :class:`Downgraded`: RELION 3.0's single table
- :func:`read_dynamo_table`, :func:`dynamo_table_to_star`,
  :func:`dynamo_to_relion_angles`, :func:`read_dynamo_volume_list`
- :func:`random_subset`, :func:`split_halves`
"""

from __future__ import annotations

from pipelines.particlesets.downgrade import Downgraded, downgrade_to_relion30
from pipelines.particlesets.dynamo import (
    dynamo_table_to_star,
    dynamo_to_relion_angles,
    read_dynamo_table,
    read_dynamo_volume_list,
)
from pipelines.particlesets.subsets import random_subset, split_halves
from pipelines.particlesets.table import (
    StarTable,
    main_table_name,
    read_star_tables,
    relion30_labels,
    relion_label_types,
    write_star_tables,
)

__all__ = [
    "Downgraded",
    "StarTable",
    "downgrade_to_relion30",
    "dynamo_table_to_star",
    "dynamo_to_relion_angles",
    "main_table_name",
    "random_subset",
    "read_dynamo_table",
    "read_dynamo_volume_list",
    "read_star_tables",
    "relion30_labels",
    "relion_label_types",
    "split_halves",
    "write_star_tables",
]
