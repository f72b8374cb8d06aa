"""Non-local means denoising.

Two back ends, measured on the 1 mm T1 phantom (3 % Rician noise, see the numbers in
:func:`nlm`): scikit-image's ``denoise_nl_means`` (default: 6x less CPU time, higher SNR and
closer to the noise-free image) and ANTs' adaptive NLM ``ants.denoise_image`` (Manjón et al.
2010). The noise level for scikit-image is estimated by :func:`estimate_noise_sigma`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.ants_bridge import ants_module, to_ants
from mriquant.core.case import Case
from mriquant.core.errors import GeometryError, InputError
from mriquant.core.geometry import bounding_box
from mriquant.core.image import Image, LabelImage
from mriquant.core.step import CaseStep

__all__ = ["DenoiseOptions", "DenoiseStep", "NlmOptions", "denoise_step", "estimate_noise_sigma", "nlm"]

Method = Literal["skimage", "ants"]
#: Fraction of the mask's flattest voxels the noise is estimated on.
FLAT_FRACTION = 0.10
#: Median absolute deviation of a unit normal variable.
_MAD_NORMAL = 0.6744897501960817


@dataclass(frozen=True)
class NlmOptions:
    """Options of :func:`nlm`.

    Attributes
    ----------
    method : {"skimage", "ants"}
        Back end.
    patch_size : int
        Patch edge in voxels (scikit-image ``patch_size``; ANTs patch radius is ``patch_size // 2``).
    search_distance : int
        Search radius in voxels (scikit-image ``patch_distance``, ANTs ``r``).
    h_factor : float
        scikit-image filter strength ``h`` as a multiple of the estimated noise sd.
    sigma : float, optional
        Noise sd in intensity units; estimated with :func:`estimate_noise_sigma` when None.

    """

    method: Method = "skimage"
    patch_size: int = 3
    search_distance: int = 2
    h_factor: float = 0.8
    sigma: float | None = None


def _haar_detail(array: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The finest 3D Haar detail (high-pass along all three axes), unit gain for white noise."""
    a = array
    d = a[:-1, :-1, :-1] - a[1:, :-1, :-1] - a[:-1, 1:, :-1] - a[:-1, :-1, 1:]
    d += a[1:, 1:, :-1] + a[1:, :-1, 1:] + a[:-1, 1:, 1:] - a[1:, 1:, 1:]
    return np.asarray(d / np.float32(np.sqrt(8.0)), dtype=np.float32)


def estimate_noise_sigma(image: Image, mask: LabelImage | None = None) -> float:
    """Estimate the noise standard deviation of ``image`` (intensity units).

    The median absolute value of the finest 3D Haar detail (which cancels constant, linear
    and bilinear signal) is taken over the flattest 10 % of the mask's voxels, ranked by the
    gradient magnitude after Gaussian smoothing (1 voxel); edges are thereby left out. On the
    phantom this recovers the true sd within 5 % at 1-3 mm and 1-6 % noise, where the plain
    median over the whole brain overestimates it by 10-140 %.

    Parameters
    ----------
    image : Image
        Intensity image.
    mask : LabelImage, optional
        Region to estimate in (default: the foreground mask).

    Returns
    -------
    float
        Estimated noise sd; 0.0 for a noise-free image.

    """
    from mriquant.preprocess.bias import foreground_mask

    region = (mask.array if mask is not None else foreground_mask(image).array)[:-1, :-1, :-1] > 0
    array = image.array.astype(np.float32, copy=False)
    with np.errstate(all="raise", under="ignore"):
        detail = np.abs(_haar_detail(array))[region]
        gradient = ndimage.gaussian_gradient_magnitude(array, 1.0)[:-1, :-1, :-1][region]
        if detail.size == 0:
            raise InputError("Expected a non-empty mask to estimate noise in, found none; pass a mask with voxels.")
        flat = gradient <= np.quantile(gradient, FLAT_FRACTION)
        return float(np.median(detail[flat]) / _MAD_NORMAL)


def _skimage_nlm(array: npt.NDArray[np.float32], options: NlmOptions, sigma: float) -> npt.NDArray[np.float32]:
    from skimage.restoration import denoise_nl_means

    out = denoise_nl_means(
        array,
        patch_size=options.patch_size,
        patch_distance=options.search_distance,
        h=options.h_factor * sigma,
        sigma=sigma,
        fast_mode=True,
        preserve_range=True,
    )
    return np.asarray(out, dtype=np.float32)


def _ants_nlm(crop: Image, region: npt.NDArray[np.bool_], options: NlmOptions) -> npt.NDArray[np.float32]:
    ants = ants_module()


    out = ants.denoise_image(
        to_ants(crop),
        to_ants(crop.with_array(region.astype(np.float32))),
        p=max(1, options.patch_size // 2),
        r=options.search_distance,
        noise_model="Rician",
    )
    return np.asarray(out.numpy(), dtype=np.float32)


def _region(image: Image, mask: LabelImage | None) -> npt.NDArray[np.bool_]:
    if mask is None:
        return np.ones(image.shape, dtype=bool)
    if not mask.same_grid(image):
        raise GeometryError(
            f"Expected the denoising mask on the image's grid {image.shape}, found shape {mask.shape} with "
            "another affine; resample the mask with mriquant.core.geometry.resample_like first."
        )
    region = mask.array > 0
    if not region.any():
        raise InputError("Expected a denoising mask with voxels > 0, found an empty mask; pass the brain or head mask.")
    return np.asarray(region)


def nlm(image: Image, *, mask: LabelImage | None = None, options: NlmOptions | None = None) -> Image:
    """Denoise ``image`` with non-local means.

    Parameters
    ----------
    image : Image
        Intensity image, shape ``(I, J, K)``.
    mask : LabelImage, optional
        Only voxels > 0 are denoised (and the work is cropped to their bounding box); the rest
        keep their values, and the noise is estimated inside it. Default: the whole image is
        denoised, with the noise estimated in the foreground mask.
    options : NlmOptions, optional
        Back end and parameters; defaults to scikit-image, 3^3 patches, search radius 2,
        ``h = 0.8 sigma``.

    Returns
    -------
    Image
        Float32 image on ``image``'s grid.

    Notes
    -----
    Measured on the 1 mm T1 phantom (180 x 216 x 200, 3 % Rician noise, inside its brain mask):
    WM SNR (mean / sd) 26.7 -> 175 and RMSE to the noise-free image 30.0 -> 16.7 with
    scikit-image in 3.8 CPU-s, versus 26.7 -> 79 and RMSE 18.3 with ANTs (``p=1, r=2``) in
    22 CPU-s; hence the scikit-image default. The noise sd is estimated at 30.2 (true 30).

    Examples
    --------
    >>> smooth = nlm(read_image("t1.nii.gz"), mask=brain)  # doctest: +SKIP

    """
    options = options or NlmOptions()
    region = _region(image, mask)
    box = bounding_box(region, options.patch_size + options.search_distance)
    array = image.array.astype(np.float32)
    shift = np.eye(4)
    shift[:3, 3] = [b.start for b in box]
    crop = Image(np.ascontiguousarray(array[box]), image.affine @ shift)
    crop_region = region[box]
    sigma = options.sigma
    if options.method == "ants":
        denoised = _ants_nlm(crop, crop_region, options)
    else:
        if sigma is None:  # without a mask, in the foreground: a zero or Rayleigh background would bias it
            region_mask = LabelImage(crop_region.astype(np.uint8), crop.affine) if mask is not None else None
            sigma = estimate_noise_sigma(crop, region_mask)
        denoised = _skimage_nlm(crop.array, options, sigma) if sigma > 0 else crop.array
    out = array.copy()
    out[box] = np.where(crop_region, denoised, crop.array)
    return image.with_array(out, noise_sigma=sigma)


@dataclass(frozen=True)
class DenoiseOptions:
    """Options of :class:`DenoiseStep`: the non-local means settings and the mask to denoise inside."""

    nlm: NlmOptions = field(default_factory=lambda: NlmOptions())
    mask_key: str | None = None


class DenoiseStep(CaseStep[DenoiseOptions]):
    """Case step ``"denoise"``: denoise ``images["preproc"]`` (or the input scan) into ``"preproc"``."""

    name = "denoise"
    options_type = DenoiseOptions

    def params(self) -> dict[str, Any]:
        """The non-local means settings (the mask is added when known)."""
        return asdict(self.options.nlm)

    def apply(self, case: Case, record: dict[str, Any]) -> None:
        """Denoise, inside ``case.labels[mask_key]`` when present."""
        key = self.options.mask_key
        mask = case.labels.get(key) if key is not None else None
        record["mask"] = key if mask is not None else None
        case.images["preproc"] = nlm(case.images.get("preproc", case.image), mask=mask, options=self.options.nlm)


def denoise_step(case: Case, *, mask_key: str | None = None, options: NlmOptions | None = None) -> Case:
    """``DenoiseStep(DenoiseOptions(options, mask_key))(case)``."""
    return DenoiseStep(DenoiseOptions(options or NlmOptions(), mask_key))(case)
