"""The particle pool of the online 2D and 3D actors: every particle fed so far,
its rows in append-only files in the actor's job folder.

- :mod:`.particles`: :class:`ParticlePool` (feed, retire, read images, checkpoint);
- :mod:`.files`: the append-only files (``index.bin``, ``rows.txt``,
  ``stacks.jsonl``, ``retired.bin``) and their fsync/cut-back;
- :mod:`.star`: reading the rows of a particles STAR and the stacks' MRC headers;
- :mod:`.legacy`: checkpoints of the layouts before the pool's files.
"""

from livestream.class2d.pool.files import POOL_FOLDER
from livestream.class2d.pool.particles import (
    MAX_OPEN_STACKS,
    POOL_FORMAT,
    ParticlePool,
)

__all__ = ["MAX_OPEN_STACKS", "POOL_FOLDER", "POOL_FORMAT", "ParticlePool"]
