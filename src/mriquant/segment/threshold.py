"""Multi-level Otsu thresholding of the in-mask intensities (``--method otsu``).

Otsu's method picks the ``k - 1`` thresholds that maximise the between-class variance of the
in-mask histogram (``nbins`` equal bins; :func:`skimage.filters.threshold_multiotsu`). The
classes, sorted by intensity, become tissues by the contrast's order; with ``k > 3`` the sorted
class ``j`` joins sorted tissue ``rint(2 j / (k - 1))`` (k = 4: CSF, GM, GM, WM on T1).

Soft memberships
----------------
A threshold rule has no probabilities, so we define an interval membership: with ``d_j(x)`` the
distance from ``x`` to class ``j``'s interval ``[t_{j-1}, t_j]`` (0 inside it),
``p_j(x) ∝ exp(-d_j(x)^2 / (2 s^2))`` where ``s = softness`` times the pooled within-class
standard deviation. A voxel deep inside an interval belongs to its class with probability
near 1, a voxel on a threshold is split evenly between the two classes, and the arg-max is
exactly Otsu's hard classification.

References
----------
Otsu, N. (1979). A threshold selection method from gray-level histograms. IEEE Trans. Syst.
Man Cybern. 9(1), 62-66.
Liao, P.-S., Chen, T.-S., Chung, P.-C. (2001). A fast algorithm for multilevel thresholding.
J. Inf. Sci. Eng. 17(5), 713-727.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.segment._tissue import (
    CONTRAST_HELP,
    CONTRAST_ORDER,
    ContrastName,
    Region,
    assemble,
    check_choice,
    class_means,
    order_to_tissues,
    resolve_contrast,
    softmax_rows,
)
from mriquant.segment.base import Segmentation, Segmenter, register

__all__ = ["OtsuOptions", "OtsuSegmenter", "interval_membership", "otsu_thresholds"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class OtsuOptions:
    """Options of ``otsu``."""

    contrast: ContrastName = field(default="T1", metadata={"help": CONTRAST_HELP})
    classes: int = field(default=3, metadata={"help": "Number of Otsu classes (3 to 5; more than 3 are merged)"})
    nbins: int = field(default=256, metadata={"help": "Histogram bins for the threshold search"})
    softness: float = field(
        default=0.5, metadata={"help": "Width of the soft memberships, in pooled within-class standard deviations"}
    )

    def __post_init__(self) -> None:
        check_choice("contrast", self.contrast, (*CONTRAST_ORDER, "auto"))
        check_choice("classes", self.classes, (3, 4, 5))
        if self.nbins < 16 or not self.softness > 0:
            raise InputError(f"Expected nbins >= 16 and softness > 0, found {self.nbins} and {self.softness}; "
                             "fix the otsu options.")


def otsu_thresholds(values: F32, classes: int, nbins: int) -> F64:
    """The ``classes - 1`` multi-Otsu thresholds of ``values`` (N,), ascending.

    Raises
    ------
    InputError
        When the histogram has too few occupied levels for ``classes`` classes.
    """
    from skimage.filters import threshold_multiotsu

    counts, edges = np.histogram(values, bins=nbins)
    centres = 0.5 * (edges[:-1] + edges[1:])
    try:
        thresholds = threshold_multiotsu(classes=classes, hist=(counts, centres))
    except ValueError as exc:
        raise InputError(f"Expected at least {classes} distinct intensity levels inside the mask, found "
                         f"{int(np.count_nonzero(counts))} occupied bins; {exc}") from exc
    return np.sort(np.asarray(thresholds, dtype=np.float64))


def interval_membership(values: F32, thresholds: F64, width: float) -> F32:
    """Soft membership (N, k) of ``values`` in the ``k = len(thresholds) + 1`` threshold intervals.

    ``p_j ∝ exp(-d_j^2 / (2 width^2))`` with ``d_j`` the distance to interval ``j`` (0 inside).
    """
    t = thresholds.astype(np.float32)
    lower = np.concatenate([[-np.inf], t]).astype(np.float32)
    upper = np.concatenate([t, [np.inf]]).astype(np.float32)
    x = values[:, None]
    dist = np.maximum(np.maximum(lower[None, :] - x, x - upper[None, :]), np.float32(0.0))
    logits = dist * dist
    logits *= np.float32(-0.5 / max(width, 1e-12) ** 2)
    return softmax_rows(logits)


def _within_sd(values: F32, thresholds: F64) -> float:
    """Pooled within-class standard deviation of the hard Otsu classes."""
    labels = np.searchsorted(thresholds, values, side="left")
    n = np.bincount(labels, minlength=thresholds.size + 1).astype(np.float64)
    s = np.bincount(labels, weights=values, minlength=thresholds.size + 1)
    ss = np.bincount(labels, weights=values.astype(np.float64) ** 2, minlength=thresholds.size + 1)
    within = ss - s**2 / np.maximum(n, 1.0)
    return float(np.sqrt(max(within.sum(), 0.0) / values.size))


def merge_sorted(probs: F32) -> F32:
    """Merge k >= 3 intensity-sorted class columns into 3 sorted tissue columns (``rint(2 j / (k - 1))``)."""
    k = probs.shape[1]
    target = np.rint(2.0 * np.arange(k) / (k - 1)).astype(int)
    out = np.zeros((probs.shape[0], 3), dtype=np.float32)
    for j, t in enumerate(target):
        out[:, t] += probs[:, j]
    return out


@register
class OtsuSegmenter(Segmenter):
    """Multi-level Otsu thresholds on the in-mask histogram, with soft interval memberships."""

    name = "otsu"
    kind = "tissue"
    description = "Multi-level Otsu thresholds on the in-mask histogram; CSF/GM/WM with soft memberships"
    reference = "Otsu 1979, A threshold selection method from gray-level histograms, IEEE Trans SMC 9:62"
    options_type = OtsuOptions

    def run(self, image: Image, mask: LabelImage | None) -> Segmentation:
        """Threshold the in-mask intensities and return tissue map and memberships."""
        opts: OtsuOptions = self.options
        region = Region.from_inputs(image, mask)
        thresholds = otsu_thresholds(region.values, opts.classes, opts.nbins)
        width = opts.softness * _within_sd(region.values, thresholds)
        sorted_probs = merge_sorted(interval_membership(region.values, thresholds, width))
        contrast = resolve_contrast(opts.contrast, image, sorted_probs.mean(axis=0))
        probs = order_to_tissues(sorted_probs, contrast)
        info = {"method": self.name, "contrast": contrast, "thresholds": [float(t) for t in thresholds],
                "width": width, "means": class_means(region.values, probs)}
        return assemble(image, region, probs, info)
