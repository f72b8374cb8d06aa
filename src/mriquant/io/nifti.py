"""NIfTI-1/2, Analyze, MGH/MGZ and MINC1 through nibabel."""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mriquant.core.errors import FormatError, GeometryError, InputError
from mriquant.io.base import RawVolume

log = logging.getLogger(__name__)

_READ_ERRORS = (OSError, EOFError, zlib.error, gzip.BadGzipFile, ValueError, nib.filebasedimages.ImageFileError)


def _nifti_geometry_meta(img: Any, source: str) -> dict[str, Any]:
    """Record which header transform gave the affine; warn when none is set."""
    header = img.header
    meta: dict[str, Any] = {}
    if isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        sform_code = int(header["sform_code"])
        qform_code = int(header["qform_code"])
        meta["sform_code"], meta["qform_code"] = sform_code, qform_code
        if sform_code == 0 and qform_code == 0:
            meta["geometry_warning"] = "no qform/sform: orientation taken from pixdim only"
            log.warning(
                "%s has neither qform nor sform; assuming the voxel axes are RAS with pixdim spacing.",
                source,
            )
        pixdim = np.asarray(header["pixdim"][1:4], dtype=np.float64)
        if np.any(~np.isfinite(pixdim)) or (np.any(pixdim <= 0) and sform_code == 0):
            raise GeometryError(
                f"Expected positive voxel sizes, found pixdim {pixdim.tolist()} in {source}; fix the header's pixdim."
            )
    return meta


def read_nibabel(path: Path, fmt: str) -> RawVolume:
    """Read any nibabel-supported volume into float32, scaling applied.

    Parameters
    ----------
    path : pathlib.Path
        File to read.
    fmt : str
        Format name recorded in the metadata (``"nifti"``, ``"mgh"``, ``"minc"``).

    Raises
    ------
    FormatError
        If the file is not a readable image (corrupt, truncated, wrong type).

    """
    source = str(path)
    try:
        img: Any = nib.load(source)
        if 0 in img.shape:
            raise InputError(
                f"Expected a non-empty 3D image, found a zero-length axis (shape {tuple(img.shape)}) "
                f"in {path.name}; the file holds no voxels - re-export the scan."
            )
        array = np.asarray(img.dataobj, dtype=np.float32) if img.get_data_dtype().kind != "V" else None
    except MemoryError:
        raise
    except _READ_ERRORS as exc:
        raise FormatError(
            f"Expected a readable {fmt.upper()} image, found a corrupt or truncated file {path.name} "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else 'no detail'}); "
            "re-export or re-download the scan."
        ) from None
    if array is None:
        raise FormatError(
            f"Expected scalar voxels, found structured/RGB data in {path.name}; convert to a scalar image."
        )
    meta: dict[str, Any] = {"format": fmt, "source": source, "header_dtype": str(img.get_data_dtype())}
    meta.update(_nifti_geometry_meta(img, source))
    return RawVolume(array, np.asarray(img.affine, dtype=np.float64), meta)
