"""``python -m livestream ...`` is the ``livestream`` command."""

from __future__ import annotations

import sys

from livestream.cli.main import main

if __name__ == "__main__":
    sys.exit(main())
