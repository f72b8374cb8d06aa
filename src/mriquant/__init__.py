"""mriquant: MRI segmentation and quantification, offline on a CPU.

The public Python API mirrors the command line: read an image with
:func:`mriquant.io.read_image`, wrap it in a :class:`mriquant.core.case.Case`,
run steps on it, and write outputs in the input's native grid with
:func:`mriquant.io.write_image`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mriquant")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
