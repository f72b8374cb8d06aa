"""Geometry: orientation codes, reorientation and resampling in world coordinates.

All affines map voxel indices to RAS+ mm. Resampling is done by world
coordinates, so two images of the same anatomy on different grids (other
orientation, spacing or field of view) can be compared voxel by voxel after
:func:`resample_to`.
"""

from __future__ import annotations

from typing import Any, TypeVar

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage

ImageT = TypeVar("ImageT", bound=Image)
#: A box of voxels: one slice per axis.
Box = tuple[slice, slice, slice]


def orientation_of(affine: npt.NDArray[np.float64]) -> str:
    """Return the three-letter RAS+ orientation code of ``affine`` (e.g. ``"LIA"``)."""
    return "".join(str(c) for c in nib.aff2axcodes(affine))


def reorient(image: ImageT, codes: str = "RAS") -> ImageT:
    """Return ``image`` with its array axes permuted/flipped to orientation ``codes``.

    No interpolation happens: voxel values are only reordered, and the affine is
    updated so every voxel keeps its world position.

    Parameters
    ----------
    image : Image or LabelImage
        Image to reorient.
    codes : str
        Target orientation, three letters from ``RL``, ``AP``, ``SI``.

    Returns
    -------
    Image or LabelImage
        Same type as ``image``.

    """
    current = nib.orientations.io_orientation(image.affine)
    target = nib.orientations.axcodes2ornt(tuple(codes))
    transform = nib.orientations.ornt_transform(current, target)
    array = nib.orientations.apply_orientation(image.array, transform)
    inv = nib.orientations.inv_ornt_aff(transform, image.shape)
    affine = image.affine @ inv
    return type(image)(np.ascontiguousarray(array), affine, dict(image.meta))


def world_to_voxel(affine: npt.NDArray[np.float64], points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Map world points ``(N, 3)`` in RAS+ mm to (fractional) voxel indices ``(N, 3)``."""
    inv = np.linalg.inv(affine)
    return np.asarray(points @ inv[:3, :3].T + inv[:3, 3], dtype=np.float64)


def resample_to(
    image: ImageT,
    shape: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
    *,
    order: int | None = None,
    fill: float = 0.0,
) -> ImageT:
    """Resample ``image`` onto the grid ``(shape, affine)`` by world coordinates.

    Parameters
    ----------
    image : Image or LabelImage
        Source image.
    shape : tuple of int
        Target grid shape ``(I, J, K)``.
    affine : numpy.ndarray, shape (4, 4)
        Target voxel-to-RAS+ affine in mm.
    order : int, optional
        Spline order. Defaults to 1 (linear) for :class:`Image` and 0 (nearest
        neighbour) for :class:`LabelImage`; label images are always nearest.
    fill : float
        Value for target voxels outside the source field of view: those whose centre lies outside the
        source voxels' extent (index -0.5 to n - 0.5 on some axis). Inside it, interpolation uses the edge
        values beyond the outer voxel centres (ITK's convention), so a grid that shares its outer voxel
        centres with the source, up to rounding, keeps its outer slices.

    Returns
    -------
    Image or LabelImage
        Same type as ``image`` on the target grid. Labels keep an integer dtype.

    """
    is_label = isinstance(image, LabelImage)
    spline = 0 if is_label else (1 if order is None else order)
    # target voxel -> world -> source voxel, as one affine
    mapping = np.linalg.inv(image.affine) @ np.asarray(affine, dtype=np.float64)
    if np.allclose(mapping, np.eye(4), atol=1e-6) and tuple(shape) == image.shape:
        return type(image)(image.array.copy(), np.asarray(affine, np.float64), dict(image.meta))
    src = image.array
    grid: dict[str, Any] = {"matrix": mapping[:3, :3], "offset": mapping[:3, 3], "output_shape": tuple(shape)}
    if spline == 0:  # nearest: a centre rounding to a source voxel takes its value, the rest ``fill``
        out = ndimage.affine_transform(src, order=0, mode="grid-constant", cval=fill,
                                       output=src.dtype if is_label else np.float32, **grid)  # fmt: skip
        return type(image)(out, np.asarray(affine, np.float64), dict(image.meta))
    out = ndimage.affine_transform(src.astype(np.float32, copy=False), order=spline, mode="nearest",
                                   output=np.float32, prefilter=spline > 1, **grid)  # fmt: skip
    if not _inside_source(mapping, shape, src.shape):  # some target centres fall outside: find which
        inside = ndimage.affine_transform(np.ones(src.shape, np.uint8), order=0, mode="grid-constant", cval=0,
                                          output=np.uint8, **grid)  # fmt: skip
        out[inside == 0] = fill
    return type(image)(out, np.asarray(affine, np.float64), dict(image.meta))


def _inside_source(mapping: npt.NDArray[np.floating[Any]], shape: tuple[int, ...], source: tuple[int, ...]) -> bool:
    """Whether every target voxel centre maps inside the source voxels' extent (-0.5 to n - 0.5 per axis).

    The target grid's image is a parallelepiped, so checking its 8 corner centres is enough.
    """
    corners = np.array(np.meshgrid(*[[0, n - 1] for n in shape], indexing="ij"), dtype=np.float64).reshape(3, -1)
    points = mapping[:3, :3] @ corners + mapping[:3, 3:4]
    upper = np.asarray(source, dtype=np.float64)[:, None] - 0.5
    return bool(np.all(points >= -0.5) and np.all(points < upper))


def smooth_to(image: Image, spacing: float) -> npt.NDArray[np.float32]:
    """Gaussian prefilter so resampling to ``spacing`` mm averages noise like a block average would.

    Each axis is smoothed by ``sqrt(spacing² - native²) / 2.355`` mm (FWHM to SD); axes already at
    ``spacing`` or coarser are left alone, and when every axis would get less than 0.2 voxel the array is
    returned as is. Returns the (float32) array on ``image``'s own grid; resample it afterwards.
    """
    native = np.asarray(image.spacing)
    sigma_mm = np.sqrt(np.clip(spacing**2 - native**2, 0.0, None)) / 2.355
    data = image.array.astype(np.float32, copy=False)
    if np.all(sigma_mm < 0.2 * native):
        return data
    return np.asarray(ndimage.gaussian_filter(data, sigma_mm / native, mode="nearest"), dtype=np.float32)


def resample_like(image: ImageT, reference: Image, **kwargs: Any) -> ImageT:
    """Resample ``image`` onto ``reference``'s grid; see :func:`resample_to`."""
    return resample_to(image, reference.shape, reference.affine, **kwargs)


def isotropic_grid(image: Image, spacing: float = 1.0) -> tuple[tuple[int, int, int], npt.NDArray[np.float64]]:
    """Return a RAS-ordered grid of ``spacing`` mm covering ``image``'s field of view.

    Returns
    -------
    shape : tuple of int
        Grid shape.
    affine : numpy.ndarray, shape (4, 4)
        Axis-aligned RAS+ affine with the given spacing.

    """
    corners = np.array(np.meshgrid(*[[-0.5, n - 0.5] for n in image.shape], indexing="ij"))
    corners = corners.reshape(3, -1).T
    world = corners @ image.affine[:3, :3].T + image.affine[:3, 3]
    lo, hi = world.min(axis=0), world.max(axis=0)
    shape = tuple(int(np.ceil((h - lo_) / spacing - 1e-6)) for lo_, h in zip(lo, hi, strict=True))
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = lo + spacing / 2.0
    return (shape[0], shape[1], shape[2]), affine


def bounding_box(mask: npt.NDArray[np.bool_], margin: int | tuple[int, int, int] | npt.NDArray[np.int_] = 0) -> Box:
    """Slices of the smallest box holding ``mask`` (grown by ``margin`` voxels per axis, clipped)."""
    margins = np.broadcast_to(np.asarray(margin, dtype=int), (3,))
    found = ndimage.find_objects(mask.astype(np.uint8))
    if not found or found[0] is None:
        raise InputError("Expected a non-empty region, found an empty one; check the mask and seeds.")
    box = found[0]
    return (
        slice(max(box[0].start - margins[0], 0), min(box[0].stop + margins[0], mask.shape[0])),
        slice(max(box[1].start - margins[1], 0), min(box[1].stop + margins[1], mask.shape[1])),
        slice(max(box[2].start - margins[2], 0), min(box[2].stop + margins[2], mask.shape[2])),
    )


#: Mask area on a grid's faces (mm²) from which the field of view counts as cutting the brain: 1 cm², so a few
#: stray voxels on an edge are not a cut (QC's ``fov_cut`` flag, the skull strip's note).
FOV_CUT_MM2 = 100.0
#: Anatomical side each orientation letter points to (the high-index face of an axis coded with that letter).
_SIDE = {"R": "right", "L": "left", "A": "anterior", "P": "posterior", "S": "superior", "I": "inferior"}
_OPPOSITE = {"R": "L", "L": "R", "A": "P", "P": "A", "S": "I", "I": "S"}


def border_contact_mm2(mask: Image) -> dict[str, float]:
    """Area (mm²) of ``mask``'s non-zero voxels on each face of its grid, keyed by anatomical side.

    A brain mask that reaches the edge of the field of view has been cut by it: its volumes are partial.
    Only sides with contact are returned (``{}`` for a mask inside the grid). The side follows the grid's
    orientation, e.g. on an LIA grid the last voxel along the first axis is on the ``"left"``.
    """
    inside = mask.array != 0
    codes = orientation_of(mask.affine)
    spacing = mask.spacing
    out: dict[str, float] = {}
    for axis, code in enumerate(codes):  # a loop over the 3 axes, each face summed at once
        face_mm2 = float(np.prod([s for a, s in enumerate(spacing) if a != axis]))
        low = int(np.count_nonzero(np.take(inside, 0, axis=axis)))
        high = int(np.count_nonzero(np.take(inside, -1, axis=axis)))
        for letter, count in ((_OPPOSITE[code], low), (code, high)):
            if count:
                out[_SIDE[letter]] = out.get(_SIDE[letter], 0.0) + count * face_mm2
    return out


def describe_contact(contact: dict[str, float]) -> str:
    """``border_contact_mm2``'s result in words, e.g. ``"inferior (3.1 cm²), superior (12.0 cm²)"``."""
    return ", ".join(f"{side} ({area / 100.0:.1f} cm²)" for side, area in sorted(contact.items()))
