"""Core objects: images, label images, cases, label tables and errors."""

from mriquant.core.case import Case, Step
from mriquant.core.errors import (
    DicomError,
    FormatError,
    GeometryError,
    InputError,
    MriquantError,
    OutputError,
)
from mriquant.core.image import Image, LabelImage

__all__ = [
    "Case",
    "DicomError",
    "FormatError",
    "GeometryError",
    "Image",
    "InputError",
    "LabelImage",
    "MriquantError",
    "OutputError",
    "Step",
]
