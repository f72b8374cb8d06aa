"""Helpers shared by the classical tissue methods (otsu, kmeans, fcm, gmm, mrf).

Every method works on the voxels of the brain mask inside the mask's bounding box
(:class:`Region`), in float32, and ends with :func:`assemble`, which scatters per-voxel
class probabilities ``(N, 3)`` in tissue order (CSF, GM, WM) back onto the input's grid
and takes the tissue map as their arg-max (so labels and probabilities always agree).

Contrast and class order
------------------------
The intensity-based methods find classes sorted by mean intensity; which tissue each one is
depends on the contrast (:data:`CONTRAST_ORDER`):

- ``"T1"``: CSF < GM < WM;
- ``"T2"`` and ``"PD"``: WM < GM < CSF;
- ``"FLAIR"``: CSF < WM < GM (CSF is nulled; grey matter stays brighter than white matter, as
  in T2 weighting);
- ``"auto"``: the ``"contrast"`` entry of the image's metadata when it names one of the above
  (the BrainWeb simulator sets it); otherwise :func:`auto_contrast`:
  white matter is the larger of the darkest and brightest classes, so a brightest class holding
  more voxels than the darkest means T1 ordering, else T2 ordering. FLAIR cannot be told from T1
  this way; pass it explicitly. ``mrf`` with MNI priors uses the priors instead (see there).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.geometry import bounding_box
from mriquant.core.image import Image, LabelImage
from mriquant.segment.base import Segmentation

__all__ = [
    "CONTRAST_HELP",
    "CONTRAST_ORDER",
    "TISSUES",
    "ContrastName",
    "Histogram",
    "Region",
    "assemble",
    "auto_contrast",
    "check_choice",
    "neighbour_sum",
    "order_to_tissues",
    "quantile_centres",
    "resolve_contrast",
    "softmax_rows",
]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
ContrastName = Literal["T1", "T2", "PD", "FLAIR", "auto"]

#: Output class names in label order (label = index + 1).
TISSUES = ("CSF", "GM", "WM")

#: For each contrast, the tissue index (0 CSF, 1 GM, 2 WM) of the classes sorted by mean intensity.
CONTRAST_ORDER: dict[str, tuple[int, int, int]] = {
    "T1": (0, 1, 2),
    "T2": (2, 1, 0),
    "PD": (2, 1, 0),
    "FLAIR": (0, 2, 1),
}

CONTRAST_HELP = (
    "Image contrast, which fixes the class order: T1 (CSF<GM<WM), T2/PD (WM<GM<CSF), FLAIR (CSF<WM<GM) "
    "or auto (image metadata, else the brightest class is WM when it outnumbers the darkest)"
)

#: Fewest in-mask voxels a tissue method accepts.
MIN_VOXELS = 27
#: Unique intensities above which values are binned for the 1D fits (see :class:`Histogram`).
MAX_UNIQUE = 65536
#: Bins of the fine histogram used when there are more unique values.
FINE_BINS = 8192


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Raise :class:`InputError` unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise InputError(f"Expected {name} in {', '.join(map(str, choices))}, found {value!r}; pick one of those.")


@dataclass(frozen=True)
class Region:
    """The in-mask voxels of an image, inside the mask's bounding box.

    Attributes
    ----------
    box : tuple of slice
        Bounding box of the mask in the image's array, one voxel of margin where possible.
    inside : numpy.ndarray of bool, shape of the box
        The mask inside the box.
    values : numpy.ndarray of float32, shape (N,)
        Image intensities of the N in-mask voxels (C order of the box).
    spacing : tuple of float
        Voxel size along the array axes, mm.
    """

    box: tuple[slice, slice, slice]
    inside: npt.NDArray[np.bool_]
    values: F32
    spacing: tuple[float, float, float]

    @classmethod
    def from_inputs(cls, image: Image, mask: LabelImage | None) -> Region:
        """Crop ``image`` to ``mask`` (or to its non-zero voxels when no mask is given) and check the values.

        Raises
        ------
        InputError
            Too few voxels, non-finite or constant intensities inside the mask.
        """
        source = image.meta.get("source", "image")
        where = mask.array > 0 if mask is not None else np.isfinite(image.array) & (image.array != 0)
        n = int(np.count_nonzero(where))
        if n < MIN_VOXELS:
            raise InputError(
                f"Expected at least {MIN_VOXELS} voxels in the brain mask, found {n} in {source}; "
                "check the mask (or pass one when the image is not skull-stripped)."
            )
        box = bounding_box(where, 1)
        inside = np.ascontiguousarray(where[box])
        values = np.asarray(image.array[box][inside], dtype=np.float32)
        _check_values(values, str(source))
        return cls(box, inside, values, image.spacing)

    @property
    def n(self) -> int:
        """Number of in-mask voxels."""
        return int(self.values.size)

    def scatter(self, values: npt.NDArray[Any], fill: float = 0.0) -> npt.NDArray[Any]:
        """Put per-voxel ``values`` (N,) into an array of the box's shape, ``fill`` elsewhere."""
        out = np.full(self.inside.shape, fill, dtype=values.dtype)
        out[self.inside] = values
        return out

    def coordinates(self) -> tuple[F32, F32, F32]:
        """Voxel coordinates of the box scaled to [-1, 1] along each axis, as three 1D arrays."""
        axes = []
        for n in self.inside.shape:
            axes.append(np.linspace(-1.0, 1.0, n, dtype=np.float32) if n > 1 else np.zeros(1, np.float32))
        return axes[0], axes[1], axes[2]


def _check_values(values: F32, source: str) -> None:
    bad = int(np.count_nonzero(~np.isfinite(values)))
    if bad:
        raise InputError(
            f"Expected finite intensities inside the brain mask, found {bad} NaN/inf voxels in "
            f"{source}; fix or mask them first."
        )
    lo, hi = float(values.min()), float(values.max())
    if hi - lo <= 1e-6 * max(abs(lo), abs(hi), 1e-30):
        raise InputError(
            f"Expected varying intensities inside the brain mask, found a constant value {lo:g} "
            f"over {values.size} voxels in {source}; check the image and the mask."
        )


@dataclass(frozen=True)
class Histogram:
    """Weighted 1D samples standing for the in-mask intensities.

    The unique values and their counts when there are at most :data:`MAX_UNIQUE` of them
    (integer scans: exact), otherwise :data:`FINE_BINS` equal bins between the minimum and the
    maximum (float scans: bin width 1/8192 of the range, far below the noise).

    Attributes
    ----------
    centres : numpy.ndarray of float64, shape (B,)
        Sorted sample values.
    counts : numpy.ndarray of float64, shape (B,)
        Voxels at each value (all > 0).
    """

    centres: npt.NDArray[np.float64]
    counts: npt.NDArray[np.float64]

    @classmethod
    def of(cls, values: F32) -> Histogram:
        """Build the histogram of ``values`` (N,)."""
        uniq, counts = np.unique(values, return_counts=True)
        if uniq.size <= MAX_UNIQUE:
            return cls(uniq.astype(np.float64), counts.astype(np.float64))
        counts, edges = np.histogram(values, bins=FINE_BINS, range=(float(uniq[0]), float(uniq[-1])))
        keep = counts > 0
        centres = 0.5 * (edges[:-1] + edges[1:])
        return cls(centres[keep], counts[keep].astype(np.float64))

    @property
    def total(self) -> float:
        """Number of voxels."""
        return float(self.counts.sum())

    def quantile(self, q: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Weighted quantiles ``q`` (in [0, 1]) of the samples."""
        cum = np.cumsum(self.counts) / self.total
        idx = np.searchsorted(cum, np.asarray(q, dtype=np.float64), side="left")
        return np.asarray(self.centres[np.clip(idx, 0, self.centres.size - 1)], dtype=np.float64)


def quantile_centres(hist: Histogram, k: int) -> npt.NDArray[np.float64]:
    """Deterministic initial class centres: the weighted quantiles ``(2j + 1) / (2k)``, j = 0..k-1."""
    return hist.quantile((2.0 * np.arange(k) + 1.0) / (2.0 * k))


def softmax_rows(logits: F32) -> F32:
    """Softmax over the last axis of ``logits`` (N, K), in place, float32; rows sum to 1."""
    logits -= logits.max(axis=-1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=-1, keepdims=True)
    return logits


def auto_contrast(fractions: npt.ArrayLike) -> str:
    """Guess T1 versus T2 ordering from the voxel fractions of the intensity-sorted classes.

    White matter is the largest class in an adult brain and CSF the smallest of the extremes,
    so the brightest class outnumbering the darkest means T1 ordering, otherwise T2.
    """
    frac = np.asarray(fractions, dtype=np.float64)
    return "T1" if frac[-1] >= frac[0] else "T2"


def resolve_contrast(contrast: str, image: Image, fractions: npt.ArrayLike) -> str:
    """Return the concrete contrast: ``contrast`` itself, or for ``"auto"`` the metadata or :func:`auto_contrast`."""
    if contrast != "auto":
        return contrast
    meta = str(image.meta.get("contrast", "")).upper()
    return meta if meta in CONTRAST_ORDER else auto_contrast(fractions)


def order_to_tissues(probs_sorted: F32, contrast: str) -> F32:
    """Reorder the columns of intensity-sorted class probabilities (N, 3) into tissue order (CSF, GM, WM)."""
    order = CONTRAST_ORDER[contrast]
    out = np.empty_like(probs_sorted)
    for column, tissue in enumerate(order):
        out[:, tissue] = probs_sorted[:, column]
    return out


def neighbour_sum(volume: F32, weights: tuple[float, float, float]) -> F32:
    """Weighted sum of the 6 face neighbours of every voxel (zero beyond the array), float32.

    ``weights[a]`` multiplies both neighbours along array axis ``a``.
    """
    out = np.zeros_like(volume)
    for axis, w in enumerate(weights):
        lo = [slice(None)] * 3
        hi = [slice(None)] * 3
        lo[axis], hi[axis] = slice(None, -1), slice(1, None)
        a, b = tuple(lo), tuple(hi)
        if w == 1.0:
            out[a] += volume[b]
            out[b] += volume[a]
        else:
            out[a] += np.float32(w) * volume[b]
            out[b] += np.float32(w) * volume[a]
    return out


def box_sum(volume: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Sum over the 26 neighbours of every voxel (3x3x3 box minus the centre; zero beyond the array).

    Keeps the dtype of ``volume`` (float32 or float64).
    """
    total = ndimage.uniform_filter(volume, size=3, mode="constant", cval=0.0) * volume.dtype.type(27.0)
    return np.asarray(total - volume, dtype=volume.dtype)


def class_means(values: F32, probs: F32) -> dict[str, float]:
    """Probability-weighted mean intensity of each tissue (JSON-ready), NaN for an empty class."""
    weight = probs.sum(axis=0, dtype=np.float64)
    sums = values.astype(np.float64) @ probs.astype(np.float64)
    return {name: (float(s / w) if w > 0 else float("nan")) for name, s, w in zip(TISSUES, sums, weight, strict=True)}


def assemble(
    image: Image,
    region: Region,
    probs: F32,
    info: dict[str, Any],
    extras: dict[str, F32] | None = None,
) -> Segmentation:
    """Build the :class:`Segmentation` on ``image``'s grid from in-mask probabilities.

    Parameters
    ----------
    image : Image
        The input (supplies the grid).
    region : Region
        Where the ``N`` voxels lie.
    probs : numpy.ndarray of float32, shape (N, 3)
        Class probabilities in tissue order (CSF, GM, WM); rows are renormalised to sum to 1.
    info : dict
        Method facts; ``voxels`` and ``volume_fraction`` are added.
    extras : dict of str to numpy.ndarray, optional
        Per-voxel maps (N,) to output as images (0 outside the mask), box-shaped arrays (0 outside
        the box) or arrays of the image's shape.

    Returns
    -------
    Segmentation
        ``tissue`` = arg-max + 1 inside the mask (uint8), ``probabilities`` and ``extras`` as float32 images.
    """
    probs = np.clip(probs, 0.0, 1.0, out=probs)
    probs /= probs.sum(axis=1, keepdims=True)
    labels = (np.argmax(probs, axis=1) + 1).astype(np.uint8)
    tissue = LabelImage(_full(image, region, labels), image.affine.copy(), {**image.meta, "kind": "tissue"})
    prob_images = {
        name: image.with_array(_full(image, region, np.ascontiguousarray(probs[:, t])), kind=f"probability:{name}")
        for t, name in enumerate(TISSUES)
    }
    extra_images = {key: image.with_array(_full(image, region, arr), kind=key) for key, arr in (extras or {}).items()}
    counts = np.bincount(labels, minlength=4)[1:]
    info = {
        **info,
        "voxels": region.n,
        "volume_fraction": {n: float(c) / region.n for n, c in zip(TISSUES, counts, strict=True)},
    }
    return Segmentation(tissue=tissue, probabilities=prob_images, extras=extra_images, info=info)


def _full(image: Image, region: Region, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """An array of ``image``'s shape with ``values`` (in-mask (N,) or box-shaped) in the box, 0 elsewhere."""
    dtype = values.dtype if values.dtype == np.uint8 else np.float32
    if values.shape == image.shape:
        return np.asarray(values, dtype=dtype)
    out = np.zeros(image.shape, dtype=dtype)
    if values.shape == region.inside.shape:
        out[region.box] = values
    else:
        out[region.box][region.inside] = values
    return out


# --------------------------------------------------------------------------- MNI priors (built-in registration)

#: Coarse-to-fine levels of the built-in mask registration: (grid spacing mm, Gaussian sigma mm).
REGISTRATION_LEVELS = ((6.0, 8.0), (4.0, 4.0), (3.0, 2.0))
#: Most Levenberg-Marquardt iterations per level.
REGISTRATION_ITERATIONS = 20


@functools.lru_cache(maxsize=1)
def mni_brain() -> Image:
    """The MNI152 2009a brain mask (:func:`mriquant.preprocess.template.template_brain_mask`) as a float 0/1 image."""
    from mriquant.preprocess.template import template_brain_mask

    mask = template_brain_mask(resolution_mm=1.0)
    return Image(mask.array.astype(np.float32), mask.affine.copy(), {"source": "MNI152 2009a brain mask"})


def block_mean(image: Image, spacing: float) -> Image:
    """Average ``image`` over blocks of about ``spacing`` mm (whole voxels per axis); the affine follows."""
    factors = [max(1, round(spacing / s)) for s in image.spacing]
    shape = [max(1, n // f) for n, f in zip(image.shape, factors, strict=True)]
    crop = image.array[: shape[0] * factors[0], : shape[1] * factors[1], : shape[2] * factors[2]]
    blocks = crop.reshape(shape[0], factors[0], shape[1], factors[1], shape[2], factors[2])
    scale = np.diag([float(f) for f in factors] + [1.0])
    scale[:3, 3] = [(f - 1) / 2.0 for f in factors]
    return Image(blocks.mean(axis=(1, 3, 5), dtype=np.float64).astype(np.float32), image.affine @ scale)


def _level(mask: Image, spacing: float, sigma_mm: float) -> Image:
    coarse = block_mean(mask, spacing)
    sigma = [sigma_mm / s for s in coarse.spacing]
    return coarse.with_array(ndimage.gaussian_filter(coarse.array, sigma, mode="constant").astype(np.float32))


@functools.lru_cache(maxsize=4)
def _template_level(spacing: float, sigma_mm: float) -> Image:
    return _level(mni_brain(), spacing / 1.5, sigma_mm)


def _points(image: Image) -> npt.NDArray[np.float64]:
    """World coordinates (V, 3) of every voxel centre of ``image``."""
    ijk = np.indices(image.shape, dtype=np.float64).reshape(3, -1).T
    return np.asarray(ijk @ image.affine[:3, :3].T + image.affine[:3, 3], np.float64)


def _sample(image: Image, world: npt.NDArray[np.float64], arrays: tuple[npt.NDArray[Any], ...] = ()) -> F64:
    """Linear interpolation of ``image`` (or of ``arrays`` on its grid) at world points (V, 3); (V, n) or (V,)."""
    inv = np.linalg.inv(image.affine)
    vox = (world @ inv[:3, :3].T + inv[:3, 3]).T
    sources = arrays or (image.array,)
    out = [ndimage.map_coordinates(a, vox, order=1, mode="constant", cval=0.0, output=np.float64) for a in sources]
    return np.stack(out, axis=1) if arrays else out[0]


@dataclass(frozen=True)
class Affine3:
    """World-to-world affine ``x_template = matrix @ x_subject + offset`` (mm)."""

    matrix: F64
    offset: F64

    def apply(self, world: F64) -> F64:
        """Map points (V, 3)."""
        return np.asarray(world @ self.matrix.T + self.offset, np.float64)


def _initial_affine(subject: Image, template: Image) -> Affine3:
    """Centre-of-mass translation and the isotropic scale that matches the brain volumes."""

    def centre(image: Image) -> F64:
        ijk = np.asarray(ndimage.center_of_mass(image.array), np.float64)
        return np.asarray(image.affine[:3, :3] @ ijk + image.affine[:3, 3], np.float64)

    vol_s = float(subject.array.sum()) * abs(np.linalg.det(subject.affine[:3, :3]))
    vol_t = float(template.array.sum()) * abs(np.linalg.det(template.affine[:3, :3]))
    matrix = np.eye(3) * (vol_t / vol_s) ** (1.0 / 3.0)
    return Affine3(matrix, centre(template) - matrix @ centre(subject))


def _lm_step(
    fixed: F64, points: F64, moving: Image, grads: tuple[F64, F64, F64], tx: Affine3, damping: float
) -> tuple[Affine3, float]:
    """One damped Gauss-Newton step of the sum of squared differences; returns the proposal and the current cost."""
    centre = points.mean(axis=0)
    unit = (points - centre) / 50.0
    world = tx.apply(points)
    sampled = _sample(moving, world, (moving.array, *grads))
    residual = sampled[:, 0] - fixed
    gradient = sampled[:, 1:] @ np.linalg.inv(moving.affine[:3, :3])  # d value / d world (row vectors)
    jac = np.concatenate([(gradient[:, :, None] * unit[:, None, :]).reshape(-1, 9), gradient], axis=1)
    hess = jac.T @ jac
    step = -np.linalg.solve(hess + damping * np.diag(np.diag(hess) + 1e-12), jac.T @ residual)
    scaled = tx.matrix * 50.0 + step[:9].reshape(3, 3)
    matrix = scaled / 50.0
    offset = tx.matrix @ centre + tx.offset + step[9:] - matrix @ centre
    return Affine3(matrix, offset), float(residual @ residual)


def _fit_level(fixed: Image, moving: Image, tx: Affine3) -> Affine3:
    """Levenberg-Marquardt on one pyramid level."""
    support = ndimage.binary_dilation(fixed.array > 1e-3, iterations=2).ravel()
    points, values = _points(fixed)[support], fixed.array.ravel()[support].astype(np.float64)
    grads = tuple(np.asarray(g, np.float64) for g in np.gradient(moving.array.astype(np.float64)))
    damping = 1e-3
    for _ in range(REGISTRATION_ITERATIONS):
        proposal, cost = _lm_step(values, points, moving, (grads[0], grads[1], grads[2]), tx, damping)
        new_residual = _sample(moving, proposal.apply(points)) - values
        new_cost = float(new_residual @ new_residual)
        if new_cost < cost:
            tx, damping = proposal, damping * 0.3
            if cost - new_cost < 1e-3 * cost:
                break
        else:
            damping *= 10.0
            if damping > 1e3:  # no step improves the fit: at a minimum
                break
    return tx


def register_brain_masks(subject_mask: Image) -> Affine3:
    """Affine from a subject's brain mask (float 0/1 image) to the MNI brain, mask to mask.

    Least squares between Gaussian-smoothed masks, coarse to fine (:data:`REGISTRATION_LEVELS`),
    Levenberg-Marquardt on the 12 affine parameters from a centre-of-mass and volume-scale start.
    It uses no intensities, so it works for any contrast, and it is deterministic.
    """
    tx = _initial_affine(subject_mask, mni_brain())
    for spacing, sigma in REGISTRATION_LEVELS:
        tx = _fit_level(_level(subject_mask, spacing, sigma), _template_level(spacing, sigma), tx)
    return tx


def mask_registered_priors(subject: Image, inside: npt.NDArray[np.bool_]) -> dict[str, F32]:
    """MNI GM and WM probabilities at the in-mask voxels (N,) of ``subject`` after :func:`register_brain_masks`.

    The maps are :func:`mriquant.preprocess.template.mni_priors` (1 mm), linearly interpolated.
    """
    from mriquant.preprocess.template import mni_priors

    tx = register_brain_masks(subject.with_array(inside.astype(np.float32)))
    maps = mni_priors(resolution_mm=1.0)
    world = np.eye(4)
    world[:3, :3], world[:3, 3] = tx.matrix, tx.offset
    out = {}
    for key in ("gm", "wm"):
        mapping = np.linalg.inv(maps[key].affine) @ world @ subject.affine  # subject voxel -> template voxel
        warped = ndimage.affine_transform(
            maps[key].array,
            mapping[:3, :3],
            offset=mapping[:3, 3],
            output_shape=subject.shape,
            order=1,
            mode="constant",
            cval=0.0,
            output=np.float32,
        )
        out[key.upper()] = np.clip(warped[inside], 0.0, 1.0)
    return out
