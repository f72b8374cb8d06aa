"""Image types: an intensity :class:`Image` and a :class:`LabelImage`.

Both carry a 3D voxel array indexed ``(i, j, k)``, a 4x4 affine that maps
voxel indices to RAS+ world coordinates in millimetres (the NIfTI/nibabel
convention), and a metadata dictionary. The types differ in what a resampler
does with them: intensities are interpolated (linear), labels take the nearest
neighbour, and intensity steps skip label images.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np
import numpy.typing as npt

from mriquant.core.errors import GeometryError, InputError

#: Smallest |det| of the 3x3 part of an affine we accept (mm^3 per voxel).
MIN_VOXEL_VOLUME_MM3 = 1e-6


def check_affine(affine: npt.ArrayLike, *, source: str = "image") -> npt.NDArray[np.float64]:
    """Return ``affine`` as a validated 4x4 float64 array.

    Parameters
    ----------
    affine : array_like, shape (4, 4)
        Voxel-to-RAS+ transform in mm.
    source : str
        Name used in error messages (usually the file name).

    Returns
    -------
    numpy.ndarray, shape (4, 4), float64

    Raises
    ------
    GeometryError
        If the affine is not 4x4, not finite, has a bad last row or is singular.

    """
    a = np.asarray(affine, dtype=np.float64)
    if a.shape != (4, 4):
        raise GeometryError(f"Expected a 4x4 affine, found shape {a.shape} in {source}; fix the header.")
    if not np.all(np.isfinite(a)):
        raise GeometryError(
            f"Expected a finite affine, found NaN/inf in {source}; fix the header's geometry (qform/sform or pixdim)."
        )
    if not np.allclose(a[3], [0.0, 0.0, 0.0, 1.0]):
        raise GeometryError(f"Expected the affine's last row to be [0 0 0 1], found {a[3]} in {source}.")
    det = abs(float(np.linalg.det(a[:3, :3])))
    if det < MIN_VOXEL_VOLUME_MM3:
        raise GeometryError(
            f"Expected an invertible affine (voxel volume > 0), found a singular affine "
            f"(|det| = {det:.3g} mm^3) in {source}; fix the header's voxel sizes or orientation."
        )
    return a


def _check_array(array: npt.NDArray[Any], source: str) -> None:
    if array.ndim != 3:
        raise InputError(
            f"Expected a 3D image, found shape {tuple(array.shape)} in {source}; "
            + ("pass --volume N to pick one volume." if array.ndim == 4 else "use a 3D volume.")
        )
    if min(array.shape) == 0:
        raise InputError(
            f"Expected a non-empty 3D image, found a zero-length axis (shape {tuple(array.shape)}) "
            f"in {source}; the file holds no voxels."
        )


@dataclass(eq=False)
class Image:
    """A 3D intensity image in its native voxel grid.

    Parameters
    ----------
    array : numpy.ndarray, shape (I, J, K)
        Voxel values, float32 by convention (readers convert on purpose).
    affine : numpy.ndarray, shape (4, 4)
        Maps voxel indices ``(i, j, k, 1)`` to RAS+ world coordinates in mm.
    meta : dict
        Free-form metadata (source path, format, acquisition parameters, ...).

    Examples
    --------
    >>> img = Image(np.zeros((4, 5, 6), np.float32), np.eye(4))
    >>> img.spacing
    (1.0, 1.0, 1.0)

    """

    array: npt.NDArray[Any]
    affine: npt.NDArray[np.float64]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        source = str(self.meta.get("source", "image"))
        self.array = np.asarray(self.array)
        _check_array(self.array, source)
        self.affine = check_affine(self.affine, source=source)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Voxel grid shape ``(I, J, K)``."""
        i, j, k = self.array.shape
        return int(i), int(j), int(k)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis, in mm."""
        s = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return float(s[0]), float(s[1]), float(s[2])

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in mL (1 mL = 1000 mm^3)."""
        return abs(float(np.linalg.det(self.affine[:3, :3]))) / 1000.0

    @property
    def axcodes(self) -> str:
        """Orientation of the array axes as a three-letter RAS+ code, e.g. ``"LAS"``."""
        import nibabel as nib

        return "".join(str(c) for c in nib.aff2axcodes(self.affine))

    def with_array(self, array: npt.NDArray[Any], **meta: Any) -> Self:
        """Return an image of the same type and grid holding ``array``.

        Parameters
        ----------
        array : numpy.ndarray, shape (I, J, K)
            New voxel values; must have this image's shape.
        **meta
            Metadata entries to add or replace.

        """
        if tuple(array.shape) != self.shape:
            raise GeometryError(f"Expected shape {self.shape}, found {tuple(array.shape)}.")
        return type(self)(array, self.affine.copy(), {**self.meta, **meta})

    def same_grid(self, other: Image, *, atol: float = 1e-4) -> bool:
        """Whether ``other`` lies on exactly this grid (shape and affine within ``atol`` mm)."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, atol=atol))


@dataclass(eq=False)
class LabelImage(Image):
    """A 3D label map (integer values, 0 = background) in its native voxel grid.

    Resamplers use nearest-neighbour (or label-aware) interpolation for this type,
    and writers store it as an integer type.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        if not np.issubdtype(self.array.dtype, np.integer):
            arr = self.array
            if np.any(arr != np.round(arr)):
                raise InputError(
                    f"Expected integer labels, found non-integer values in "
                    f"{self.meta.get('source', 'label image')}; pass a label map, not an intensity image."
                )
            self.array = arr.astype(np.int32)

    @property
    def labels(self) -> list[int]:
        """Sorted non-zero label values present."""
        return [int(v) for v in np.unique(self.array) if v != 0]
