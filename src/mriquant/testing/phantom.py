"""A synthetic head phantom with known truth, sampled on any voxel grid.

The anatomy lives in a continuous world frame (RAS+ mm, brain centred near the
origin): nested, smoothly deformed shells for skin, fat, skull and CSF; a cortex
whose surface folds inwards along radial sulci (plus an interhemispheric
fissure); white matter; two lateral ventricles; and thalamus, caudate and
putamen in each hemisphere; optionally a neck below the skull. Every region is
an approximate signed distance in mm (negative inside), so the same anatomy can
be sampled on any grid: any shape, spacing, one of the 48 axis orientations, a
small oblique rotation, and float or integer voxels.

Truth labels hold the region at each voxel centre. The image blends the tissue
means by how much of each voxel a region covers (a linear partial-volume ramp
one voxel wide), then applies a smooth multiplicative bias field and Rician or
Gaussian noise.

Examples
--------
>>> from mriquant.testing import make_phantom
>>> ph = make_phantom(spacing=(4.0, 4.0, 4.0), orientation="LIA", seed=1)
>>> ph.image.axcodes, ph.tissue.labels
('LIA', [1, 2, 3])

"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import numpy.typing as npt

from mriquant.core.image import Image, LabelImage
from mriquant.testing.phantom_anatomy import LAYOUT, Anatomy, paint, pv_width
from mriquant.testing.phantom_spec import (
    AXIS_LETTERS,
    DTYPE_SCALE,
    MEANS,
    ORIENTATION_CODES,
    STREAM_NOISE,
    Compartment,
    Floats,
    Index,
    Phantom,
    PhantomError,
    PhantomSpec,
    Points,
    Shape3,
    Vec3,
    rng_stream,
)

__all__ = [
    "DTYPE_SCALE",
    "MEANS",
    "ORIENTATION_CODES",
    "Compartment",
    "Phantom",
    "PhantomError",
    "PhantomSpec",
    "make_phantom",
    "write_phantom",
]

#: Points painted at a time: small enough for the temporaries to stay in cache.
_CHUNK_POINTS = 1 << 16

# Compartment -> tissue class (1 CSF, 2 GM, 3 WM) and FreeSurfer ids (left, right).
_TISSUE_LUT = np.array([0, 0, 0, 0, 0, 1, 2, 3, 2, 2, 2, 1], dtype=np.uint8)
_LEFT_LUT = np.array([0, 0, 0, 0, 0, 24, 3, 2, 10, 11, 12, 4], dtype=np.int16)
_RIGHT_LUT = np.array([0, 0, 0, 0, 0, 24, 42, 41, 49, 50, 51, 43], dtype=np.int16)


# --- Grid and orientation ---


def _rotation_matrix(degrees: Vec3) -> npt.NDArray[np.float64]:
    """Rotation about x, then y, then z (right-handed, degrees)."""
    ax, ay, az = (math.radians(d) for d in degrees)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return np.asarray(rz @ ry @ rx, dtype=np.float64)


@dataclass(frozen=True)
class _Grid:
    """The sampling grid in world axis order: voxel index (x, y, z) -> RAS+ mm."""

    shape: Shape3
    affine: npt.NDArray[np.float64]

    @classmethod
    def from_spec(cls, spec: PhantomSpec) -> _Grid:
        n = np.asarray(spec.world_shape, np.float64)
        linear = _rotation_matrix(spec.rotation) @ np.diag(spec.spacing)
        affine = np.eye(4)
        affine[:3, :3] = linear
        affine[:3, 3] = np.asarray(spec.center) - linear @ ((n - 1) / 2)
        return cls(spec.world_shape, affine)

    @property
    def size(self) -> int:
        """Number of voxels."""
        return int(np.prod(self.shape))

    def coordinate(self, row: int, *, origin: float = 0.0, unit: float = 1.0) -> Floats:
        """World coordinate ``row`` (0 x, 1 y, 2 z) of every voxel as ``(c - origin) / unit``.

        The result broadcasts to the grid shape; axes the coordinate does not
        depend on (no rotation) keep length 1, which keeps whole-grid tests cheap.
        """
        total = np.full((1, 1, 1), (self.affine[row, 3] - origin) / unit, dtype=np.float32)
        for axis, n in enumerate(self.shape):
            if self.affine[row, axis] != 0.0:
                shape = [1, 1, 1]
                shape[axis] = n
                term = np.arange(n) * (self.affine[row, axis] / unit)
                total = total + term.astype(np.float32).reshape(shape)
        return total

    def points(self, ijk: tuple[Index, Index, Index]) -> Points:
        """World positions (3, N) of the voxels with indices ``ijk``."""
        world = np.repeat(self.affine[:3, 3:], len(ijk[0]), axis=1)
        for axis, idx in enumerate(ijk):
            world += self.affine[:3, axis : axis + 1] * idx
        return world.astype(np.float32)


def _inside(grid: _Grid, center: tuple[float, ...], radii: tuple[float, ...]) -> npt.NDArray[np.bool_]:
    """Voxels whose centre lies in the axis-aligned ellipsoid (or ellipse, over x and y)."""
    total = np.zeros(grid.shape, np.float32)
    for row, (c, r) in enumerate(zip(center, radii, strict=True)):
        d = grid.coordinate(row, origin=c, unit=r)
        total += d * d
    return total < 1.0


def _candidates(grid: _Grid, anatomy: Anatomy, spec: PhantomSpec) -> tuple[Index, Index, Index]:
    """Indices of the voxels any region may cover (a conservative bound on the anatomy's ellipsoid distances)."""
    width = pv_width(spec)
    margin = LAYOUT.outer_mm + LAYOUT.deform_mm + width
    axes = anatomy.envelope.axes.astype(np.float64)
    head = tuple(axes * (1.0 + margin / axes.min()))
    mask = _inside(grid, LAYOUT.brain_center, head)
    if spec.neck:
        neck_axes = np.asarray(LAYOUT.neck_axes)
        across = _inside(grid, LAYOUT.neck_center, tuple(neck_axes * (1.0 + width / neck_axes.min())))
        mask |= across & (grid.coordinate(2) < np.float32(LAYOUT.neck_top_mm + width))
    i, j, k = np.nonzero(mask)
    return i, j, k


def _storage(code: str, shape: Shape3) -> tuple[tuple[int, int, int], list[int], npt.NDArray[np.float64]]:
    """Return the axis permutation, flipped axes and 4x4 index map of orientation ``code``.

    The array in ``code`` is ``flip(transpose(world_array, perm), flips)``; the
    returned matrix maps its voxel indices to world-order voxel indices.
    """
    perm = tuple(next(w for w, pair in enumerate(AXIS_LETTERS) if c in pair) for c in code)
    flips = [a for a, c in enumerate(code) if c in "LPI"]
    index_map = np.zeros((4, 4))
    index_map[3, 3] = 1.0
    for a, w in enumerate(perm):
        sign = -1.0 if a in flips else 1.0
        index_map[w, a] = sign
        index_map[w, 3] = shape[w] - 1 if sign < 0 else 0.0
    return (perm[0], perm[1], perm[2]), flips, index_map


def _to_storage(world: npt.NDArray[Any], perm: tuple[int, int, int], flips: list[int]) -> npt.NDArray[Any]:
    stored = np.transpose(world, perm)
    return np.ascontiguousarray(np.flip(stored, axis=flips) if flips else stored)


# --- Sampling ---


@dataclass
class _Sampled:
    """Flat world-order arrays of a sampled grid: compartment, left hemisphere, relative signal."""

    comp: npt.NDArray[np.uint8]
    left: npt.NDArray[np.bool_]
    signal: Floats


def _sample(grid: _Grid, anatomy: Anatomy, spec: PhantomSpec) -> _Sampled:
    """Paint the candidate voxels chunk by chunk (small chunks stay in cache)."""
    out = _Sampled(np.zeros(grid.size, np.uint8), np.zeros(grid.size, bool), np.zeros(grid.size, np.float32))
    i, j, k = _candidates(grid, anatomy, spec)
    flat = np.ravel_multi_index((i, j, k), grid.shape)
    with np.errstate(all="raise", under="ignore"):
        for start in range(0, len(flat), _CHUNK_POINTS):
            part = slice(start, start + _CHUNK_POINTS)
            p = grid.points((i[part], j[part], k[part]))
            canvas = paint(p, anatomy, spec)
            where = flat[part]
            out.comp[where] = canvas.label
            out.signal[where] = canvas.signal * anatomy.bias(p, spec.bias)
            out.left[where] = p[0] < 0
    return out


def _add_noise(signal: Floats, spec: PhantomSpec, brightest: float) -> Floats:
    """Add Rician or Gaussian noise of sd ``spec.noise * brightest`` to the whole grid."""
    if spec.noise == 0:
        return signal
    rng = rng_stream(spec.seed, STREAM_NOISE)
    sigma = np.float32(spec.noise * brightest)
    real = signal + sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    if spec.noise_kind == "gaussian":
        return real
    imag = sigma * rng.standard_normal(signal.shape, dtype=np.float32)
    return np.asarray(np.sqrt(real * real + imag * imag), np.float32)


def _cast(signal: Floats, spec: PhantomSpec) -> npt.NDArray[Any]:
    """Scale the relative signal to ``spec.scale`` and convert to ``spec.dtype`` (round, clip)."""
    scaled = signal * np.float32(spec.scale)
    if spec.dtype == "float32":
        return scaled.astype(np.float32)
    info = np.iinfo(np.dtype(spec.dtype))
    cast: npt.NDArray[Any] = np.clip(np.rint(scaled), info.min, info.max).astype(spec.dtype)
    return cast


def _truth_arrays(sampled: _Sampled, spec: PhantomSpec) -> dict[str, npt.NDArray[Any]]:
    """Image and truth maps (flat, world order) from the painted compartments."""
    tissue = _TISSUE_LUT[sampled.comp]
    structures = np.where(sampled.left, _LEFT_LUT[sampled.comp], _RIGHT_LUT[sampled.comp])
    image = _cast(_add_noise(sampled.signal, spec, max(MEANS[spec.contrast])), spec)
    return {"image": image, "tissue": tissue, "structures": structures,
            "brain_mask": (tissue > 0).astype(np.uint8)}


def make_phantom(spec: PhantomSpec | None = None, **overrides: Any) -> Phantom:
    """Sample the synthetic head phantom and its truth on the grid of ``spec``.

    Parameters
    ----------
    spec : PhantomSpec, optional
        What to sample; the defaults give a 2 mm T1 head (90 x 108 x 100 voxels),
        3 % Rician noise and a +-20 % bias field.
    **overrides
        Fields of :class:`PhantomSpec` to replace, e.g. ``orientation="LIA"``.

    Returns
    -------
    Phantom
        Image and truth maps on one grid, shape ``spec.world_shape`` permuted
        into ``spec.orientation``, affine voxel -> RAS+ mm.

    Examples
    --------
    >>> ph = make_phantom(contrast="T2", spacing=(1.0, 1.0, 3.0), orientation="PSR", noise=0.0)
    >>> ph.image.axcodes, ph.image.spacing
    ('PSR', (1.0, 3.0, 1.0))

    """
    spec = dataclasses.replace(spec or PhantomSpec(), **overrides)
    grid = _Grid.from_spec(spec)
    arrays = _truth_arrays(_sample(grid, Anatomy.from_seed(spec.seed), spec), spec)
    perm, flips, index_map = _storage(spec.orientation, grid.shape)
    affine = grid.affine @ index_map
    stored = {k: _to_storage(v.reshape(grid.shape), perm, flips) for k, v in arrays.items()}
    meta = {"source": f"phantom-seed{spec.seed}", "format": "phantom", "phantom": spec.as_dict()}
    return Phantom(
        image=Image(stored["image"], affine, dict(meta)),
        tissue=LabelImage(stored["tissue"], affine.copy(), dict(meta, truth="tissue")),
        structures=LabelImage(stored["structures"], affine.copy(), dict(meta, truth="structures")),
        brain_mask=LabelImage(stored["brain_mask"], affine.copy(), dict(meta, truth="brain_mask")),
        spec=spec,
    )


def _save_nifti(image: Image, path: Path, *, label: bool) -> Path:
    """Write ``image`` as NIfTI-1 keeping its dtype, with qform and sform both set (code 1)."""
    nii = nib.Nifti1Image(image.array, image.affine)
    nii.header.set_qform(image.affine, code=1)
    nii.header.set_sform(image.affine, code=1)
    nii.header.set_xyzt_units("mm", "sec")
    if label:
        nii.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    nib.save(nii, str(path))
    return path


def write_phantom(phantom: Phantom, folder: str | Path, *, prefix: str = "") -> dict[str, Path]:
    """Write a phantom's image, truth maps and spec to ``folder``.

    Parameters
    ----------
    phantom : Phantom
        What :func:`make_phantom` returned.
    folder : str or pathlib.Path
        Destination folder (created if missing; existing files are replaced).
    prefix : str
        Prepended to every file name.

    Returns
    -------
    dict of str to pathlib.Path
        ``image``, ``tissue``, ``structures``, ``brain_mask`` (``.nii.gz``, the
        image in ``spec.dtype``) and ``spec`` (``.json``).

    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        name: _save_nifti(getattr(phantom, name), folder / f"{prefix}{name}.nii.gz", label=name != "image")
        for name in ("image", "tissue", "structures", "brain_mask")
    }
    spec_path = folder / f"{prefix}phantom.json"
    spec_path.write_text(json.dumps(phantom.spec.as_dict(), indent=2) + "\n", encoding="utf-8")
    paths["spec"] = spec_path
    return paths
