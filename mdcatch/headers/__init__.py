"""Movie headers (MRC, TIFF, EER): format, frame count, sizes and completeness, each checked against the file size before anything is allocated."""

from mdcatch.headers.movie import (
    check_movie_complete,
    check_movie_header,
    detect_movie_format,
    movie_is_complete,
    read_movie_header,
)

__all__ = [
    "check_movie_complete",
    "check_movie_header",
    "detect_movie_format",
    "movie_is_complete",
    "read_movie_header",
]
