"""The internal working grid: RAS-ordered, isotropic, and the exact way back to the native grid.

:func:`to_working_grid` permutes/flips the array axes to RAS (no interpolation) and then changes
the spacing of each axis to ``spacing`` mm, keeping the axes' directions and the field of view's
centre. The working axes are therefore parallel to the native ones (an oblique scan stays
oblique, with a RAS orientation code), so resampling is separable: each axis is interpolated on
its own, and a 1 mm in-plane grid is not touched when only the 5 mm slice axis changes. A
:class:`GridRecord` keeps both grids; :func:`to_native` and :func:`to_native_labels` go back.

Interpolation along an axis (measured on three MICCAI 2012 T1 scans, 1 mm slices averaged in
fives to 5 mm and brought back to 1 mm with this module; RMSE inside the brain, WM ~1400): cubic
B-spline 102-114 versus linear 112-124 (9 % lower), so axes up-sampled by more than :data:`CUBIC_FACTOR` use a cubic
spline (clipped to the input's range, so no ringing overshoot), others linear. Labels use the
nearest voxel. Going back, :func:`to_native` is linear for images (probabilities stay in [0, 1])
and nearest for labels; :func:`to_native_labels` offers a label-aware mode for coarse native grids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import nibabel as nib
import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import GeometryError, InputError
from mriquant.core.geometry import orientation_of, reorient
from mriquant.core.image import Image, LabelImage, check_affine

__all__ = ["CUBIC_FACTOR", "GridRecord", "to_native", "to_native_labels", "to_working_grid", "working_grid"]

ImageT = TypeVar("ImageT", bound=Image)
Shape = tuple[int, int, int]
Matrix = tuple[tuple[float, ...], ...]
#: Resampling along one axis: (spline order 0/1/3, window width in source voxels; > 1 = window mean).
Kernel = tuple[int, float]
#: Axes whose spacing shrinks by more than this factor are interpolated with a cubic spline.
CUBIC_FACTOR = 1.5
#: Grids whose affines agree within this (mm) are the same grid.
GRID_ATOL = 1e-4


def _shape(values: Any) -> Shape:
    i, j, k = (int(v) for v in values)
    return i, j, k


def _matrix(affine: npt.ArrayLike) -> Matrix:
    return tuple(tuple(float(v) for v in row) for row in np.asarray(affine, dtype=np.float64))


@dataclass(frozen=True)
class GridRecord:
    """The native grid of a scan and the working grid it was resampled to.

    Attributes
    ----------
    native_shape : tuple of int
        Native array shape ``(I, J, K)``.
    native_affine : tuple of tuple of float
        Native 4x4 voxel->RAS+ affine (mm), row by row.
    working_shape : tuple of int
        Working array shape.
    working_affine : tuple of tuple of float
        Working 4x4 voxel->RAS+ affine (mm), RAS axis order, isotropic spacing.

    Examples
    --------
    >>> work, record = to_working_grid(scan)  # doctest: +SKIP
    >>> GridRecord.from_dict(json.loads(json.dumps(record.as_dict()))) == record  # doctest: +SKIP
    True

    """

    native_shape: Shape
    native_affine: Matrix
    working_shape: Shape
    working_affine: Matrix

    def __post_init__(self) -> None:
        for name in ("native", "working"):
            shape = tuple(int(n) for n in getattr(self, f"{name}_shape"))
            if len(shape) != 3 or min(shape) < 1:
                raise GeometryError(f"Expected a 3D {name} shape of positive sizes, found {shape}; fix the record.")
            check_affine(getattr(self, f"{name}_affine"), source=f"{name} grid record")
            object.__setattr__(self, f"{name}_shape", shape)
            object.__setattr__(self, f"{name}_affine", _matrix(getattr(self, f"{name}_affine")))

    @property
    def native(self) -> tuple[Shape, npt.NDArray[np.float64]]:
        """Native ``(shape, affine)``."""
        return self.native_shape, np.array(self.native_affine, dtype=np.float64)

    @property
    def working(self) -> tuple[Shape, npt.NDArray[np.float64]]:
        """Working ``(shape, affine)``."""
        return self.working_shape, np.array(self.working_affine, dtype=np.float64)

    def as_dict(self) -> dict[str, Any]:
        """Return the record as a JSON-serialisable dictionary."""
        return {
            "native_shape": list(self.native_shape),
            "native_affine": [list(r) for r in self.native_affine],
            "working_shape": list(self.working_shape),
            "working_affine": [list(r) for r in self.working_affine],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GridRecord:
        """Build a record from :meth:`as_dict` output."""
        try:
            return cls(
                _shape(data["native_shape"]),
                _matrix(data["native_affine"]),
                _shape(data["working_shape"]),
                _matrix(data["working_affine"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise GeometryError(
                f"Expected a grid record with native/working shape and affine, found {sorted(data)}; "
                "pass GridRecord.as_dict() output."
            ) from exc


# --------------------------------------------------------------------------- grids


def _reoriented(shape: Shape, affine: npt.NDArray[np.float64], codes: str) -> tuple[Shape, npt.NDArray[np.float64]]:
    """Shape and affine of the grid after :func:`reorient` to ``codes`` (no array needed)."""
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(tuple(codes))
    )
    new_shape = tuple(int(shape[int(axis)]) for axis in np.argsort(transform[:, 0]))
    affine = affine @ nib.orientations.inv_ornt_aff(transform, shape)
    return (new_shape[0], new_shape[1], new_shape[2]), np.asarray(affine, dtype=np.float64)


def working_grid(shape: Shape, affine: npt.NDArray[np.float64], spacing: float = 1.0) -> tuple[Shape, Any]:
    """Return the working ``(shape, affine)`` of a native grid.

    The axes are those of the native grid reordered to RAS (same directions), each with
    ``spacing`` mm and enough voxels (``ceil(n * s / spacing)``) to cover the native field of
    view, centred on the native field of view's centre.

    Parameters
    ----------
    shape : tuple of int
        Native shape.
    affine : numpy.ndarray, shape (4, 4)
        Native voxel->RAS+ affine in mm.
    spacing : float
        Working voxel size in mm.

    Returns
    -------
    shape : tuple of int
    affine : numpy.ndarray, shape (4, 4)

    """
    if not spacing > 0:
        raise InputError(f"Expected a positive working spacing in mm, found {spacing}; pass e.g. spacing=1.0.")
    ras_shape, ras_affine = _reoriented(shape, affine, "RAS")
    native_spacing = np.sqrt((ras_affine[:3, :3] ** 2).sum(axis=0))
    n = np.asarray(ras_shape, dtype=np.float64)
    m = np.maximum(1, np.ceil(n * native_spacing / spacing - 1e-6))
    step = spacing / native_spacing  # working voxel step in native (RAS-ordered) voxels
    to_ras_index = np.eye(4)
    to_ras_index[:3, :3] = np.diag(step)
    to_ras_index[:3, 3] = (n - 1) / 2 - step * (m - 1) / 2
    out_shape = (int(m[0]), int(m[1]), int(m[2]))
    return out_shape, ras_affine @ to_ras_index


# --------------------------------------------------------------------------- separable resampling


def _axis_map(
    source_affine: npt.NDArray[np.float64], target_affine: npt.NDArray[np.float64]
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Per-axis ``(scale, offset)`` with source index = scale * target index + offset.

    Raises :class:`GeometryError` unless the two grids' axes are parallel and in the same order.
    """
    mapping = np.linalg.inv(source_affine) @ target_affine
    diagonal = np.diag(mapping[:3, :3]).copy()
    if not np.allclose(mapping[:3, :3], np.diag(diagonal), atol=1e-6) or np.any(diagonal <= 0):
        raise GeometryError(
            "Expected grids with parallel axes in the same order, found a rotation between them; "
            "pass an image on the grid its GridRecord describes."
        )
    return diagonal, mapping[:3, 3].copy()


def _cubic_bspline(t: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """The cubic B-spline kernel at offsets ``t``."""
    a = np.abs(t)
    inner = 2.0 / 3.0 - a**2 + a**3 / 2.0
    outer = (2.0 - a) ** 3 / 6.0
    return np.asarray(np.where(a < 1.0, inner, np.where(a < 2.0, outer, 0.0)))


def _taps(coords: npt.NDArray[np.float64], n: int, order: int) -> list[tuple[npt.NDArray[np.intp], Any]]:
    """Indices and weights of the samples each output value is made of (edge values extend outwards)."""
    if order == 0:
        return [(np.clip(np.rint(coords), 0, n - 1).astype(np.intp), None)]
    x = np.clip(coords, 0.0, n - 1.0)
    base = np.floor(x)
    if order == 1:
        return [(np.clip(base + k, 0, n - 1).astype(np.intp), 1.0 - np.abs(x - base - k)) for k in (0, 1)]
    return [(np.clip(base + k, 0, n - 1).astype(np.intp), _cubic_bspline(x - base - k)) for k in (-1, 0, 1, 2)]


def _resample_axis(array: npt.NDArray[Any], axis: int, coords: npt.NDArray[np.float64], order: int) -> npt.NDArray[Any]:
    """Sample ``array`` along ``axis`` at fractional indices ``coords`` with spline ``order`` (0, 1 or 3).

    The cubic spline's coefficients are computed along ``axis`` only; its output is clipped to
    the input's range (no ringing overshoot), so probabilities stay in [0, 1].
    """
    taps = _taps(coords, array.shape[axis], order)
    if order == 0:
        return np.take(array, taps[0][0], axis=axis)
    source = ndimage.spline_filter1d(array, order=3, axis=axis, mode="nearest") if order == 3 else array
    shape = [1, 1, 1]
    shape[axis] = coords.size
    out = np.zeros([coords.size if a == axis else n for a, n in enumerate(array.shape)], dtype=np.float32)
    with np.errstate(all="raise", under="ignore"):
        for index, weight in taps:
            out += np.take(source, index, axis=axis) * weight.astype(np.float32).reshape(shape)
    if order == 3:
        np.clip(out, array.min(), array.max(), out=out)
    return out


def _box_axis(array: npt.NDArray[Any], axis: int, coords: npt.NDArray[np.float64], width: float) -> Any:
    """Mean of the voxel-wise constant signal over ``[c - width/2, c + width/2]`` along ``axis``.

    Exact for a piecewise-constant signal: the running integral (cumulative sum, one value per
    voxel edge) is interpolated linearly at both ends of each window. Parts of a window outside
    the array do not count.
    """
    n = array.shape[axis]
    pad = [(0, 0)] * 3
    pad[axis] = (1, 0)
    integral = np.pad(np.cumsum(array, axis=axis, dtype=np.float32), pad)  # value at edge e: e - 0.5
    lo = np.clip(coords - width / 2.0 + 0.5, 0.0, float(n))
    hi = np.clip(coords + width / 2.0 + 0.5, 0.0, float(n))
    shape = [1, 1, 1]
    shape[axis] = coords.size
    span = np.maximum(hi - lo, 1e-6).astype(np.float32).reshape(shape)
    return (_resample_axis(integral, axis, hi, 1) - _resample_axis(integral, axis, lo, 1)) / span


def _resample_separable(
    array: npt.NDArray[Any],
    scale: npt.NDArray[np.float64],
    offset: npt.NDArray[np.float64],
    shape: Shape,
    kernels: tuple[Kernel, Kernel, Kernel],
) -> npt.NDArray[Any]:
    """Resample axis by axis; axes that map onto themselves exactly are left alone.

    ``kernels[axis]`` is ``(order, width)``: spline order 0, 1 or 3, or when ``width > 1`` the
    mean over a window of ``width`` source voxels.
    """
    out = array
    for axis, (order, width) in enumerate(kernels):
        coords = scale[axis] * np.arange(shape[axis]) + offset[axis]
        same = shape[axis] == out.shape[axis] and np.allclose(coords, np.arange(shape[axis]), atol=1e-6)
        if width > 1.0 + 1e-6:
            out = _box_axis(out, axis, coords, width)
        elif not same:
            out = _resample_axis(out, axis, coords, order)
    return out


def _check_on_grid(image: Image, shape: Shape, affine: npt.NDArray[np.float64], what: str) -> None:
    if image.shape != shape or not np.allclose(image.affine, affine, atol=GRID_ATOL):
        raise GeometryError(
            f"Expected an image on the {what} grid {shape}, found shape {image.shape} with another affine in "
            f"{image.meta.get('source', 'image')}; pass an image produced on that grid (or its GridRecord)."
        )


# --------------------------------------------------------------------------- public API


def to_working_grid(image: ImageT, *, spacing: float = 1.0) -> tuple[ImageT, GridRecord]:
    """Put ``image`` on the working grid: RAS axis order, isotropic ``spacing`` mm.

    Parameters
    ----------
    image : Image or LabelImage
        Scan or label map in its native grid.
    spacing : float
        Working voxel size in mm.

    Returns
    -------
    image : Image or LabelImage
        Same type on the working grid (see :func:`working_grid`). Images: linear along axes
        whose spacing changes little, cubic spline (clipped to the input range) along axes
        up-sampled by more than :data:`CUBIC_FACTOR` (thick slices); float32. Labels: nearest.
        A native grid that is already ``spacing`` mm is only permuted (no interpolation).
    record : GridRecord
        Native and working grids, for :func:`to_native`.

    Examples
    --------
    >>> work, record = to_working_grid(read_image("t2_1x1x5.nii.gz"))  # doctest: +SKIP
    >>> work.spacing, work.axcodes  # doctest: +SKIP
    ((1.0, 1.0, 1.0), 'RAS')

    """
    shape, affine = working_grid(image.shape, image.affine, spacing)
    record = GridRecord(image.shape, _matrix(image.affine), shape, _matrix(affine))
    ras = reorient(image, "RAS")
    scale, offset = _axis_map(ras.affine, affine)
    is_label = isinstance(image, LabelImage)
    orders = [0 if is_label else (3 if s < 1 / CUBIC_FACTOR else 1) for s in scale]
    data = ras.array if is_label else ras.array.astype(np.float32, copy=False)
    out = _resample_separable(data, scale, offset, shape, ((orders[0], 0.0), (orders[1], 0.0), (orders[2], 0.0)))
    return type(image)(np.ascontiguousarray(out), affine, dict(image.meta)), record


def _to_native_array(image: Image, record: GridRecord, *, order: int, box: bool = False) -> npt.NDArray[Any]:
    """Array of ``image`` (on the working grid) resampled onto the native grid.

    With ``box``, axes along which a native voxel spans more than one working voxel take the
    mean over the native voxel's extent instead of a point sample.
    """
    _check_on_grid(image, *record.working, "working")
    native_shape, native_affine = record.native
    back = reorient(image, orientation_of(native_affine))
    scale, offset = _axis_map(back.affine, native_affine)
    widths = scale if box else np.zeros(3)  # a native voxel spans ``scale`` working voxels
    data = back.array if order == 0 else back.array.astype(np.float32, copy=False)
    kernels = ((order, float(widths[0])), (order, float(widths[1])), (order, float(widths[2])))
    return _resample_separable(data, scale, offset, native_shape, kernels)


def to_native(image: ImageT, record: GridRecord) -> ImageT:
    """Bring ``image`` from the working grid back onto the exact native grid.

    Parameters
    ----------
    image : Image or LabelImage
        On ``record``'s working grid.
    record : GridRecord
        From :func:`to_working_grid`.

    Returns
    -------
    Image or LabelImage
        Same type with exactly the native shape and affine. Images are linearly interpolated
        (values stay within the input's range, so probabilities stay in [0, 1]); labels take
        the nearest voxel (see :func:`to_native_labels` for a label-aware alternative).

    """
    order = 0 if isinstance(image, LabelImage) else 1
    out = _to_native_array(image, record, order=order)
    return type(image)(np.ascontiguousarray(out), record.native[1], dict(image.meta))


def _native_window(
    box: tuple[slice, ...], scale: npt.NDArray[np.float64], offset: npt.NDArray[np.float64], shape: Shape
) -> tuple[slice, ...] | None:
    """Native index ranges whose voxel centres map inside the working ``box`` (None if empty)."""
    window = []
    for axis, part in enumerate(box):
        lo = max(0, int(np.ceil((part.start - offset[axis]) / scale[axis] - 1e-9)))
        hi = min(shape[axis], int(np.floor((part.stop - 1 - offset[axis]) / scale[axis] + 1e-9)) + 1)
        if hi <= lo:
            return None
        window.append(slice(lo, hi))
    return tuple(window)


def _label_boxes(array: npt.NDArray[Any], margin: int) -> dict[int, tuple[slice, ...]]:
    """Bounding box (grown by ``margin``) of every label; the background's is the whole array."""
    boxes: dict[int, tuple[slice, ...]] = {0: tuple(slice(0, n) for n in array.shape)}
    values = np.unique(array)
    if values.min() < 0:  # find_objects needs non-negative labels
        return {int(v): boxes[0] for v in values}
    for value, found in enumerate(ndimage.find_objects(array), start=1):
        if found is not None:
            grown = zip(found, array.shape, strict=True)
            boxes[value] = tuple(slice(max(0, f.start - margin), min(n, f.stop + margin)) for f, n in grown)
    return boxes


def _label_aware(labels: LabelImage, record: GridRecord) -> npt.NDArray[Any]:
    """For each native voxel, the label covering the largest part of it (one cropped pass per label)."""
    native_shape, native_affine = record.native
    back = reorient(labels, orientation_of(native_affine))
    scale, offset = _axis_map(back.affine, native_affine)
    kernels = ((1, float(scale[0])), (1, float(scale[1])), (1, float(scale[2])))
    best = np.full(native_shape, -1.0, dtype=np.float32)
    winner = np.zeros(native_shape, dtype=labels.array.dtype)
    for value, box in _label_boxes(back.array, int(np.ceil(scale.max())) + 2).items():
        window = _native_window(box, scale, offset, native_shape)
        if window is None:
            continue
        start = np.array([w.start for w in window]) * scale + offset - np.array([b.start for b in box])
        onehot = (back.array[box] == value).astype(np.float32)
        shape = (window[0].stop - window[0].start, window[1].stop - window[1].start, window[2].stop - window[2].start)
        fraction = _resample_separable(onehot, scale, start, shape, kernels)
        target = best[window]
        better = fraction > target
        target[better] = fraction[better]
        winner[window][better] = value
    return winner


def to_native_labels(
    labels: LabelImage, record: GridRecord, *, method: Literal["nearest", "label-aware"] = "nearest"
) -> LabelImage:
    """Bring a label map from the working grid back onto the native grid.

    Parameters
    ----------
    labels : LabelImage
        On ``record``'s working grid.
    record : GridRecord
        From :func:`to_working_grid`.
    method : {"nearest", "label-aware"}
        ``"nearest"``: the working voxel nearest each native voxel centre. ``"label-aware"``:
        the fraction of each native voxel each label covers is computed from the label's
        one-hot map (the exact mean over the native voxel's extent along axes where it spans
        more than one working voxel, linear interpolation along the others) and the label with
        the largest fraction wins: the majority label of a thick native voxel rather than the
        label at its centre. One vectorised pass per label.

    Returns
    -------
    LabelImage
        Exactly the native shape and affine, the input's dtype.

    """
    if method == "nearest":
        return to_native(labels, record)
    if method != "label-aware":
        raise InputError(f"Expected method 'nearest' or 'label-aware', found {method!r}; pick one of them.")
    _check_on_grid(labels, *record.working, "working")
    return type(labels)(_label_aware(labels, record), record.native[1], dict(labels.meta))
