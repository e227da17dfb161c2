"""numba kernel of the EER encoder (private: use :mod:`pipelines.simulate.eer`)."""

from __future__ import annotations

import numba
import numpy as np
from numba import njit
from numpy.typing import NDArray


@njit(cache=True)
def encode_eer_frame(  # pragma: no cover
    flat_index: NDArray[np.int64],
    subpixel: NDArray[np.uint8],
    n_pixels: int,
    out: NDArray[np.uint8],
) -> int:
    """Write one EER frame (7-bit runs, 2+2 sub-pixel bits) into ``out``; return bytes.

    ``flat_index`` is sorted and unique (one event per pixel at most); ``subpixel``
    holds the 4 sub-pixel bits of each event (already in the stored, XOR-ed form).
    The bit stream is least significant bit first.  After the last event, runs of
    127 and a final run reach exactly ``n_pixels``, which ends the frame for the
    decoder; zero bytes pad the stream to an even length with room for one code.
    """
    bitpos = 0
    position = 0
    out[:] = 0
    for e in range(flat_index.shape[0]):
        gap = flat_index[e] - position
        while gap >= 127:
            _put_bits(out, bitpos, 127, 7)
            bitpos += 7
            gap -= 127
        code = gap | (numba.int64(subpixel[e]) << 7)
        _put_bits(out, bitpos, code, 11)
        bitpos += 11
        position = flat_index[e] + 1
    gap = n_pixels - position
    while gap >= 127:
        # a run of exactly the remaining pixels ends the frame
        if gap == 127:
            break
        _put_bits(out, bitpos, 127, 7)
        bitpos += 7
        gap -= 127
    _put_bits(out, bitpos, gap, 7)
    bitpos += 7
    nbytes = (bitpos + 7) // 8 + 2
    if nbytes % 2:
        nbytes += 1
    return nbytes


@njit(cache=True, inline="always")
def _put_bits(  # pragma: no cover
    out: NDArray[np.uint8], bitpos: int, value: int, nbits: int
) -> None:
    for b in range(nbits):
        if (value >> b) & 1:
            pos = bitpos + b
            out[pos >> 3] |= numba.uint8(1 << (pos & 7))
