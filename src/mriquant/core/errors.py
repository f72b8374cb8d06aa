"""The mriquant error hierarchy.

Every error a user can cause is a :class:`MriquantError`. The command line turns
one into a single line on stderr and exit code 2, so messages follow the house
shape: what was expected, what was found, and what to do, for example::

    Expected a 3D image, found shape (256, 256, 176, 2) in scan.nii.gz;
    pass --volume N to pick one.
"""


class MriquantError(Exception):
    """Base class of every error mriquant raises on purpose.

    Attributes
    ----------
    exit_code : int
        Process exit code the command line uses for this error.

    """

    exit_code: int = 2


class InputError(MriquantError):
    """The input cannot be used: missing, empty, wrong dimensionality, bad values."""


class FormatError(InputError):
    """The file exists but is not a readable image of a supported format."""


class GeometryError(InputError):
    """The image geometry (affine, spacing, orientation, slice layout) is invalid."""


class DicomError(InputError):
    """A DICOM file or series cannot be turned into a 3D volume."""


class OutputError(MriquantError):
    """An output cannot be written (exists without --force, would overwrite an input, ...)."""
