"""livestream: the live service that runs beside a cryo-EM microscope."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("livestream")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
