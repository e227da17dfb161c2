"""A stand-in for a terminal on stderr, to see what a user at a terminal sees."""

from __future__ import annotations

import io


class FakeTerminal(io.StringIO):
    """A text stream that says it is a terminal (``isatty()`` is true)."""

    def isatty(self) -> bool:
        return True
