"""The MNI152 2009a nonlinear symmetric template and its tissue priors.

The template (``mni_icbm152_t1_tal_nlin_sym_09a``, 1 mm, 197 x 233 x 189 voxels, RAS) and
its GM and WM probability maps ship inside nilearn (``nilearn/datasets/data``), so nothing
is downloaded at run time. The files hold uint8 values 0-255; they are returned as float32
in [0, 1].

The T1 nilearn ships is already brain-extracted (skull, scalp and neck are zero): there is
no whole-head 2009a template offline. :func:`template_brain_mask` rebuilds a clean brain
mask from the priors (see its docstring); ``mni_template(brain=True)`` is the T1 multiplied
by that mask, which also drops the few mL of non-brain tissue left around the brainstem
and orbits.

Downsampled versions (``resolution_mm`` > 1) are made by Gaussian pre-filtering and linear
resampling onto an axis-aligned grid covering the same field of view; they are cached in
memory (:func:`functools.cache`) because registration asks for the 2 mm template often.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.geometry import isotropic_grid, resample_to
from mriquant.core.image import Image, LabelImage

ImageT = TypeVar("ImageT", bound=Image)

__all__ = ["BRAIN_THRESHOLD", "CLOSING_RADIUS_MM", "downsample", "mni_priors", "mni_template", "template_brain_mask"]

#: GM + WM probability above which a voxel seeds the template brain mask.
BRAIN_THRESHOLD = 0.25
#: Half-width (mm) of the cubic closing that adds sulcal CSF between the GM folds to the brain mask.
CLOSING_RADIUS_MM = 3.0
_NAME = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"


def _data_folder() -> Path:
    """Return nilearn's bundled data folder (holds the MNI152 2009a files)."""
    import nilearn.datasets

    return Path(nilearn.datasets.__file__).parent / "data"


def _check_resolution(resolution_mm: float) -> float:
    value = float(resolution_mm)
    if not (np.isfinite(value) and 1.0 <= value <= 8.0):
        raise InputError(
            f"Expected a template resolution between 1 and 8 mm, found {resolution_mm!r}; pass e.g. 1.0 or 2.0."
        )
    return value


@functools.cache
def _read_map(name: str) -> Image:
    """Read one bundled 1 mm map (``"t1"``, ``"gm"``, ``"wm"``) as float32 in [0, 1] (read-only, cached)."""
    from mriquant.io import read_image

    path = _data_folder() / _NAME.format(name)
    if not path.is_file():
        raise InputError(
            f"Expected the MNI152 2009a {name.upper()} map at {path}, found no file; reinstall nilearn (>= 0.10.3)."
        )
    image = read_image(path)
    array = np.clip(image.array / np.float32(255.0), 0.0, 1.0).astype(np.float32)
    array.flags.writeable = False
    return Image(array, image.affine, {"source": path.name, "space": "MNI152NLin2009aSym"})


def downsample(image: ImageT, resolution_mm: float) -> ImageT:
    """Resample ``image`` to an axis-aligned (RAS) isotropic grid covering its field of view.

    A Gaussian pre-filter first widens each axis's resolution to ``resolution_mm`` FWHM
    (axes already coarser are not smoothed), then linear resampling follows.

    Parameters
    ----------
    image : Image
        Intensity image, any orientation and spacing.
    resolution_mm : float
        Target isotropic voxel size in mm.

    Returns
    -------
    Image
        Same type, float32, on the new grid.

    """
    spacing = np.asarray(image.spacing)
    fwhm_vox = np.sqrt(np.maximum(resolution_mm**2 - spacing**2, 0.0)) / spacing
    smooth = ndimage.gaussian_filter(image.array.astype(np.float32), sigma=fwhm_vox / 2.3548)
    shape, affine = isotropic_grid(image, spacing=resolution_mm)
    return resample_to(image.with_array(smooth), shape, affine)


@functools.cache
def _cached_map(name: str, resolution_mm: float) -> Image:
    """Map ``name`` at ``resolution_mm`` (read-only, cached); ``"brain"`` is the brain probability mask."""
    if name == "brain":
        like = _read_map("gm")
        image = Image(_brain_mask_1mm().astype(np.float32), like.affine, {"source": "template brain mask"})
    else:
        image = _read_map(name)
    if resolution_mm != 1.0:
        image = downsample(image, resolution_mm)
    image.array.flags.writeable = False
    return image


@functools.cache
def _brain_mask_1mm() -> npt.NDArray[np.bool_]:
    """Boolean 1 mm brain mask (see :func:`template_brain_mask`); cached, read-only."""
    tissue = _read_map("gm").array + _read_map("wm").array
    width = 2 * round(CLOSING_RADIUS_MM) + 1  # the 1 mm grid: voxels = mm
    # pad so the mask may touch the field-of-view edge without being eroded there
    seed = np.pad(tissue >= BRAIN_THRESHOLD, width)
    # closing by a cube, as separable max/min filters (a ball is ~10x slower for the same effect)
    closed = ndimage.minimum_filter(ndimage.maximum_filter(seed, size=width), size=width)
    closed = closed[width:-width, width:-width, width:-width]
    mask = ndimage.binary_fill_holes(closed)
    labels, count = ndimage.label(mask)
    if count > 1:  # keep the largest connected part
        sizes = ndimage.sum_labels(mask, labels, index=np.arange(1, count + 1))
        mask = labels == (1 + int(np.argmax(sizes)))
    mask.flags.writeable = False
    return np.asarray(mask, dtype=np.bool_)


def template_brain_mask(*, resolution_mm: float = 1.0) -> LabelImage:
    """Brain mask of the MNI152 2009a template (1 = brain incl. CSF, 0 = outside).

    Built from the bundled priors: voxels with GM + WM probability >= :data:`BRAIN_THRESHOLD`,
    closed with a cube of half-width :data:`CLOSING_RADIUS_MM` (adds the sulcal CSF between folds), holes
    filled (adds the ventricles), largest connected part kept. Downsampled masks are the
    resampled 1 mm mask thresholded at 0.5.

    Parameters
    ----------
    resolution_mm : float
        Isotropic voxel size in mm, 1 (native) to 8.

    Returns
    -------
    LabelImage
        int32 array, shape (197, 233, 189) at 1 mm, RAS+ affine in MNI mm. About 1.87 L.

    """
    resolution_mm = _check_resolution(resolution_mm)
    probability = _cached_map("brain", resolution_mm)
    array = (probability.array >= 0.5).astype(np.int32)
    return LabelImage(array, probability.affine.copy(), {"source": "MNI152NLin2009aSym brain mask"})


def mni_template(*, resolution_mm: float = 1.0, brain: bool = False) -> Image:
    """The MNI152 2009a nonlinear symmetric T1 template.

    Parameters
    ----------
    resolution_mm : float
        Isotropic voxel size in mm: 1 is the shipped grid (197 x 233 x 189); larger values
        give a smoothed, downsampled copy (2 mm: 99 x 117 x 95), cached after the first call.
    brain : bool
        If True, multiply by :func:`template_brain_mask`. The shipped T1 is already
        skull-stripped, so the difference is small (a few mL of leftover non-brain voxels).

    Returns
    -------
    Image
        float32 intensities in [0, 1], RAS+ affine in MNI mm; a fresh copy the caller may modify.

    Examples
    --------
    >>> t1 = mni_template(resolution_mm=2.0, brain=True)  # doctest: +SKIP
    >>> t1.shape, t1.spacing  # doctest: +SKIP
    ((99, 117, 95), (2.0, 2.0, 2.0))

    """
    resolution_mm = _check_resolution(resolution_mm)
    t1 = _cached_map("t1", resolution_mm)
    array = t1.array.copy()
    if brain:
        array *= template_brain_mask(resolution_mm=resolution_mm).array.astype(np.float32)
    return Image(array, t1.affine.copy(), {"source": t1.meta["source"], "space": "MNI152NLin2009aSym"})


def mni_priors(*, resolution_mm: float = 1.0) -> dict[str, Image]:
    """Tissue probability maps of the MNI152 2009a template.

    ``"gm"`` and ``"wm"`` are the shipped maps; ``"csf"`` is ``clip(1 - gm - wm, 0, 1)``
    inside :func:`template_brain_mask` and 0 outside. All three are 0 outside the mask.

    Parameters
    ----------
    resolution_mm : float
        Isotropic voxel size in mm (see :func:`mni_template`).

    Returns
    -------
    dict of str to Image
        Keys ``"csf"``, ``"gm"``, ``"wm"``; float32 in [0, 1] on the template grid.

    """
    resolution_mm = _check_resolution(resolution_mm)
    mask = template_brain_mask(resolution_mm=resolution_mm)
    inside = mask.array.astype(bool)
    out: dict[str, Image] = {}
    for name in ("gm", "wm"):
        prior = _cached_map(name, resolution_mm)
        out[name] = Image(np.where(inside, prior.array, 0.0).astype(np.float32), prior.affine.copy(), {"tissue": name})
    csf = np.clip(1.0 - out["gm"].array - out["wm"].array, 0.0, 1.0) * inside
    out["csf"] = Image(csf.astype(np.float32), mask.affine.copy(), {"tissue": "csf"})
    return {key: out[key] for key in ("csf", "gm", "wm")}
