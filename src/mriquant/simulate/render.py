"""Images rendered from anatomy: a label map or per-class fractions, given one intensity per class.

:func:`render_fractions` is how the atlas skull stripper re-renders a head atlas in the scan's own contrast
(:mod:`mriquant.preprocess.skullstrip_atlas`): each voxel is the sum over classes of the class's fraction in
the voxel times the intensity the scan gives that class. :func:`render_t1` paints a FreeSurfer label map
with rough T1-weighted intensities, only so that label maps without an image can be registered to the T1
template (atlas building, training cases).

Examples
--------
>>> image = render_t1(read_labels("training_seg_01.nii.gz"))  # doctest: +SKIP
>>> float(image.array.max()) <= 1.0  # doctest: +SKIP
True

"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.image import Image, LabelImage

__all__ = ["T1_LIKE", "render_fractions", "render_t1"]

#: Rough T1-weighted intensities (cerebral WM = 1) used to render an image from a FreeSurfer label map,
#: only so that it can be registered to the T1 template; ids not listed (non-brain) render as 0.
T1_LIKE: dict[int, float] = {
    2: 1.0, 41: 1.0, 7: 1.0, 46: 1.0, 16: 0.9, 28: 0.88, 60: 0.88, 10: 0.85, 49: 0.85, 13: 0.9, 52: 0.9,
    12: 0.75, 51: 0.75, 11: 0.72, 50: 0.72, 26: 0.72, 58: 0.72, 17: 0.66, 53: 0.66, 18: 0.68, 54: 0.68,
    3: 0.62, 42: 0.62, 8: 0.66, 47: 0.66, 4: 0.25, 43: 0.25, 5: 0.25, 44: 0.25, 14: 0.25, 15: 0.25, 24: 0.25,
}  # fmt: skip


def render_t1(labels: LabelImage, sigma_mm: float = 0.7) -> Image:
    """A smooth T1-like image of a FreeSurfer label map (for registration only)."""
    lookup = np.zeros(int(labels.array.max()) + 1, np.float32)
    for label, value in T1_LIKE.items():
        if label < lookup.size:
            lookup[label] = value
    rendered = lookup[np.clip(labels.array, 0, None)]
    spacing = np.sqrt((labels.affine[:3, :3] ** 2).sum(axis=0))
    smooth: npt.NDArray[np.float32] = ndimage.gaussian_filter(rendered, sigma_mm / spacing).astype(np.float32)
    return Image(smooth, labels.affine.copy(), {"source": "rendered"})


def render_fractions(
    intensities: npt.NDArray[np.float32], fractions: npt.NDArray[np.float32], affine: npt.NDArray[np.float64]
) -> Image:
    """Image whose voxels are ``sum_c intensities[c] * fractions[c]``: anatomy rendered in a given contrast.

    Parameters
    ----------
    intensities : numpy.ndarray, shape (C,)
        Intensity of each class (e.g. the scan's median in the class).
    fractions : numpy.ndarray, shape (C, X, Y, Z)
        Fraction (0-1) of each class in each voxel.
    affine : numpy.ndarray, shape (4, 4)
        Voxel -> RAS+ mm of the fractions' grid (copied).

    Returns
    -------
    Image
        float32, shape (X, Y, Z).
    """
    return Image(np.tensordot(intensities, fractions, axes=1).astype(np.float32), affine.copy())
