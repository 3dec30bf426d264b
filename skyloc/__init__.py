"""skyloc: GPS-free drone geolocalization (MSBA cross-view retrieval), from training to the drone.

The repository keeps its stages in top-level folders (training/, export/, calibration/,
runtime/, benchmarks/); they install as subpackages of this one (``skyloc.runtime``, ...), so
nothing generic lands in site-packages.
"""
from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("skyloc")
except _metadata.PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0+unknown"
