"""Image input and output.

:func:`read_image` reads any supported format into an :class:`~mriquant.core.image.Image`
(float32, RAS+ affine, native grid); :func:`write_image` writes NIfTI atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.io.base import RawVolume, ReadOptions, check_file, check_values, select_volume
from mriquant.io.registry import FORMAT_NAMES, detect_format
from mriquant.io.write import output_folder, write_image, write_json

__all__ = [
    "FORMAT_NAMES",
    "ReadOptions",
    "detect_format",
    "output_folder",
    "read_image",
    "read_labels",
    "read_raw",
    "write_image",
    "write_json",
]

#: Fewest voxels along every axis for the analysis commands (segmentation needs a volume).
MIN_ANALYSIS_VOXELS = 8


def read_raw(path: str | Path, options: ReadOptions | None = None) -> RawVolume:
    """Read ``path`` with the reader its content and ending call for, before any checks."""
    path = Path(path)
    check_file(path)
    fmt = detect_format(path)
    if fmt == "dicom":
        from mriquant.io.dicom import read_dicom

        return read_dicom(path, options or ReadOptions())
    if fmt in ("nrrd", "metaimage"):
        from mriquant.io.itk import read_sitk

        return read_sitk(path, fmt)
    from mriquant.io.nifti import read_nibabel

    return read_nibabel(path, fmt)


def read_image(
    path: str | Path,
    *,
    volume: int | None = None,
    series: str | None = None,
    min_voxels: int = 1,
) -> Image:
    """Read a scan into a float32 :class:`Image` in its native grid.

    Parameters
    ----------
    path : str or pathlib.Path
        NIfTI, MGH/MGZ, MINC1, NRRD, MetaImage file, or DICOM folder/zip/file.
    volume : int, optional
        Volume to take from a 4D file (0-based).
    series : str, optional
        DICOM series to take from a folder holding several.
    min_voxels : int
        Fewest voxels required along every axis; 1 accepts single slices (for
        conversion), the analysis commands use :data:`MIN_ANALYSIS_VOXELS`.

    Returns
    -------
    Image
        Voxel values as float32 (rescaling applied), 4x4 RAS+ affine in mm.

    Raises
    ------
    MriquantError
        With a one-line message for every kind of unusable input.

    Examples
    --------
    >>> img = read_image("scan.nii.gz")  # doctest: +SKIP
    >>> img.shape, img.spacing  # doctest: +SKIP
    ((188, 256, 190), (0.88, 0.88, 0.88))

    """
    raw = read_raw(path, ReadOptions(volume=volume, series=series))
    source = Path(path).name
    array = select_volume(raw.array, ReadOptions(volume=volume, series=series), source)
    array = check_values(np.asarray(array, dtype=np.float32), source)
    image = Image(np.ascontiguousarray(array), raw.affine, raw.meta)
    if min(image.shape) < min_voxels:
        raise InputError(
            f"Expected a 3D volume with at least {min_voxels} voxels along every axis, found shape "
            f"{image.shape} in {source}; pass a 3D scan, not a single slice or a thin slab."
        )
    return image


def read_labels(path: str | Path) -> LabelImage:
    """Read a label map (integer values) in its native grid.

    Raises
    ------
    InputError
        If the file is not 3D or holds non-integer values.

    """
    raw = read_raw(path)
    array = select_volume(raw.array, ReadOptions(), Path(path).name)
    if not np.all(np.isfinite(array)):
        raise InputError(f"Expected integer labels, found NaN/inf in {Path(path).name}; pass a label map.")
    rounded = np.rint(array)
    if np.any(np.abs(array - rounded) > 1e-3):
        raise InputError(
            f"Expected integer labels, found non-integer values in {Path(path).name}; pass a label map, "
            "not an intensity image."
        )
    return LabelImage(rounded.astype(np.int32), raw.affine, raw.meta)
