"""Shared reader types: what every format reader returns and how it is checked."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mriquant.core.errors import FormatError, InputError

log = logging.getLogger(__name__)


@dataclass
class ReadOptions:
    """Options every reader understands.

    Attributes
    ----------
    volume : int or None
        Index of the volume to take from a 4D file (0-based); None requires 3D.
    series : str or None
        DICOM series to read from a folder holding several: a SeriesInstanceUID,
        a SeriesNumber, or a 1-based index into the listing.

    """

    volume: int | None = None
    series: str | None = None


@dataclass
class RawVolume:
    """A reader's result before the common checks.

    Attributes
    ----------
    array : numpy.ndarray, shape (I, J, K) or (I, J, K, T)
        Voxel values with any rescaling already applied.
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-RAS+ mm.
    meta : dict
        ``format``, ``source`` and format-specific entries; ``sidecar`` holds
        non-identifying acquisition parameters for the JSON sidecar.

    """

    array: npt.NDArray[Any]
    affine: npt.NDArray[np.float64]
    meta: dict[str, Any] = field(default_factory=dict)


def check_file(path: Path) -> None:
    """Raise a clear :class:`InputError` unless ``path`` is an existing, non-empty file or folder."""
    if not path.exists():
        raise InputError(f"Expected an image file or DICOM folder, found no such path: {path}; check the path.")
    if path.is_file() and path.stat().st_size == 0:
        raise FormatError(f"Expected an image file, found an empty file (0 bytes): {path}; re-export the scan.")


def select_volume(array: npt.NDArray[Any], options: ReadOptions, source: str) -> npt.NDArray[Any]:
    """Return the 3D volume to use from a 2D, 3D or 4D array.

    A 4D array with a single volume is squeezed; otherwise ``options.volume`` picks one.
    Trailing singleton dimensions beyond the fourth are dropped.

    Raises
    ------
    InputError
        For 2D data, 4D data without ``--volume``, an out-of-range volume, or 5D+ data.

    """
    while array.ndim > 4 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 2:
        raise InputError(
            f"Expected a 3D image, found a 2D image of shape {tuple(array.shape)} in {source}; pass a 3D volume."
        )
    if array.ndim == 3:
        if options.volume not in (None, 0):
            raise InputError(
                f"Expected a 4D image for --volume {options.volume}, found a 3D image in {source}; drop --volume."
            )
        return array
    if array.ndim == 4:
        n = array.shape[3]
        if n == 1 and options.volume in (None, 0):
            return array[..., 0]
        if options.volume is None:
            raise InputError(
                f"Expected a 3D image, found shape {tuple(array.shape)} ({n} volumes) in {source}; "
                f"pass --volume N (0..{n - 1}) to pick one."
            )
        if not 0 <= options.volume < n:
            raise InputError(f"Expected --volume between 0 and {n - 1}, found {options.volume} for {source}.")
        return array[..., options.volume]
    raise InputError(
        f"Expected a 3D image, found {array.ndim} dimensions (shape {tuple(array.shape)}) in {source}; "
        "convert it to a 3D volume first."
    )


def check_values(array: npt.NDArray[np.float32], source: str) -> npt.NDArray[np.float32]:
    """Check the voxel values of a float32 volume; replace a few NaN/inf by 0 with a warning.

    Raises
    ------
    InputError
        If every voxel is NaN/inf, or every voxel is zero (or one constant value).

    """
    finite = np.isfinite(array)
    n_bad = int(array.size - np.count_nonzero(finite))
    if n_bad == array.size:
        raise InputError(f"Expected finite voxel values, found only NaN/inf in {source}; the scan holds no data.")
    if n_bad:
        log.warning("%s: %d non-finite voxels (NaN/inf) set to 0.", source, n_bad)
        array = np.where(finite, array, np.float32(0.0)).astype(np.float32)
    lo, hi = float(array.min()), float(array.max())
    if lo == hi:
        what = "all-zero" if lo == 0 else f"constant ({lo:g})"
        raise InputError(
            f"Expected an image with contrast, found {what} voxel values in {source}; "
            "the scan holds no signal - check the export."
        )
    return array
