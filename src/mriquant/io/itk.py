"""NRRD and MetaImage (MHA/MHD) through SimpleITK.

ITK stores geometry in LPS; mriquant's affines are RAS+, so the first two world
axes are negated.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt

from mriquant.core.errors import FormatError
from mriquant.io.base import RawVolume

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def sitk_affine(direction: npt.ArrayLike, spacing: npt.ArrayLike, origin: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Return the voxel-to-RAS+ affine of an ITK image's LPS direction, spacing and origin."""
    dim = len(np.asarray(spacing))
    d = np.asarray(direction, dtype=np.float64).reshape(dim, dim)[:3, :3]
    lps = np.eye(4)
    lps[:3, :3] = d * np.asarray(spacing, dtype=np.float64)[:3]
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)[:3]
    return LPS_TO_RAS @ lps


def read_sitk(path: Path, fmt: str) -> RawVolume:
    """Read an NRRD or MetaImage file into float32 with a RAS+ affine.

    Raises
    ------
    FormatError
        If SimpleITK cannot read the file, or its pixels are vectors.

    """
    import SimpleITK as sitk

    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first = next((ln for ln in str(exc).splitlines() if ln.strip()), "no detail")
        raise FormatError(
            f"Expected a readable {fmt.upper()} image, found an unreadable file {path.name} ({first.strip()[:120]}); "
            "re-export the scan."
        ) from None
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise FormatError(
            f"Expected scalar voxels, found {img.GetNumberOfComponentsPerPixel()} components per voxel "
            f"in {path.name}; convert to a scalar image."
        )
    dim = img.GetDimension()
    # SimpleITK arrays are indexed (z, y, x) or (t, z, y, x); mriquant uses (i, j, k[, t]).
    # GetArrayFromImage copies: a view would dangle once `img` is freed (thin volumes whose
    # transpose is already contiguous are never copied later).
    array = sitk.GetArrayFromImage(img).astype(np.float32, copy=False).transpose(*range(dim)[::-1])
    spacing, origin, direction = img.GetSpacing(), img.GetOrigin(), img.GetDirection()
    if dim == 2:
        affine = np.diag([-spacing[0], -spacing[1], 1.0, 1.0])
        affine[:2, 3] = [-origin[0], -origin[1]]
    else:
        affine = sitk_affine(direction, spacing, origin)
    meta = {"format": fmt, "source": str(path)}
    return RawVolume(np.ascontiguousarray(array), affine, meta)
