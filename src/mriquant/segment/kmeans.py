"""K-means tissue classification of the in-mask intensities (``--method kmeans``).

The intensities are one-dimensional, so Lloyd's algorithm runs on their histogram
(:class:`~mriquant.segment._tissue.Histogram`): with the samples sorted, every cluster is a
contiguous run of values between the midpoints of neighbouring centres, and each iteration is
two binary searches plus cumulative sums, independent of the number of voxels. The initial
centres are the weighted quantiles 1/6, 1/2 and 5/6, so the result is deterministic (no random
restarts are needed in 1D with this initialisation; there is no seed).

Probabilities are a softmax of the negative squared distances to the centres,
``p_k(x) ∝ exp(-(x - c_k)^2 / (2 T s^2))``, with ``s^2`` the pooled within-cluster variance and
``T`` the ``temperature`` option: the posterior of an equal-variance, equal-weight Gaussian
mixture centred on the k-means centres. Its arg-max is the k-means assignment.

References
----------
Lloyd, S. P. (1982). Least squares quantization in PCM. IEEE Trans. Inf. Theory 28(2), 129-137.
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
    Histogram,
    Region,
    assemble,
    check_choice,
    class_means,
    order_to_tissues,
    quantile_centres,
    resolve_contrast,
    softmax_rows,
)
from mriquant.segment.base import Segmentation, Segmenter, register

__all__ = ["KMeans1D", "KMeansOptions", "KMeansSegmenter", "kmeans_1d"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class KMeansOptions:
    """Options of ``kmeans``."""

    contrast: ContrastName = field(default="T1", metadata={"help": CONTRAST_HELP})
    max_iter: int = field(default=100, metadata={"help": "Most Lloyd iterations"})
    temperature: float = field(
        default=1.0, metadata={"help": "Softness of the probabilities, in units of the pooled within-class variance"}
    )

    def __post_init__(self) -> None:
        check_choice("contrast", self.contrast, (*CONTRAST_ORDER, "auto"))
        if self.max_iter < 1 or not self.temperature > 0:
            raise InputError(f"Expected max_iter >= 1 and temperature > 0, found {self.max_iter} and "
                             f"{self.temperature}; fix the kmeans options.")


@dataclass(frozen=True)
class KMeans1D:
    """Result of :func:`kmeans_1d`.

    Attributes
    ----------
    centres : numpy.ndarray, shape (k,)
        Sorted cluster centres (intensity units).
    weights : numpy.ndarray, shape (k,)
        Voxels in each cluster.
    variances : numpy.ndarray, shape (k,)
        Within-cluster variances (0 for clusters of one value).
    iterations : int
        Lloyd iterations run.
    converged : bool
        Whether the assignment stopped changing before ``max_iter``.
    """

    centres: F64
    weights: F64
    variances: F64
    iterations: int
    converged: bool

    @property
    def pooled_variance(self) -> float:
        """Within-cluster sum of squares divided by the number of voxels."""
        return float((self.weights * self.variances).sum() / self.weights.sum())


def _cluster_stats(hist: Histogram, cuts: npt.NDArray[np.intp], sums: tuple[F64, F64, F64]) -> tuple[F64, F64, F64]:
    """Weights, means and variances of the runs ``[cuts[j], cuts[j + 1])`` of the sorted samples."""
    cw, cx, cxx = sums
    w = cw[cuts[1:]] - cw[cuts[:-1]]
    sx = cx[cuts[1:]] - cx[cuts[:-1]]
    sxx = cxx[cuts[1:]] - cxx[cuts[:-1]]
    safe = np.maximum(w, 1e-300)
    mean = sx / safe
    var = np.maximum(sxx / safe - mean**2, 0.0)
    return w, mean, var


def kmeans_1d(hist: Histogram, k: int = 3, *, max_iter: int = 100) -> KMeans1D:
    """Lloyd's k-means on weighted 1D samples, initialised at the quantiles ``(2j + 1) / 2k``.

    Parameters
    ----------
    hist : Histogram
        Sorted samples and their counts.
    k : int
        Number of clusters.
    max_iter : int
        Most iterations.

    Returns
    -------
    KMeans1D
        Sorted centres, sizes and variances.

    Examples
    --------
    >>> h = Histogram(np.array([0.0, 1.0, 10.0, 11.0, 20.0, 21.0]), np.ones(6))
    >>> kmeans_1d(h, 3).centres.tolist()
    [0.5, 10.5, 20.5]
    """
    x = hist.centres
    zero = np.zeros(1)
    sums = tuple(np.concatenate([zero, np.cumsum(hist.counts * x**p)]) for p in (0, 1, 2))
    centres = np.sort(quantile_centres(hist, k))
    cuts = np.zeros(k + 1, dtype=np.intp)
    converged, iterations = False, 0
    for iterations in range(1, max_iter + 1):  # noqa: B007 - the count is reported
        bounds = 0.5 * (centres[:-1] + centres[1:])
        new_cuts = np.concatenate([[0], np.searchsorted(x, bounds, side="right"), [x.size]]).astype(np.intp)
        if np.array_equal(new_cuts, cuts):
            converged = True
            break
        cuts = new_cuts
        w, mean, _ = _cluster_stats(hist, cuts, (sums[0], sums[1], sums[2]))
        centres = np.where(w > 0, mean, centres)
    w, _, var = _cluster_stats(hist, cuts, (sums[0], sums[1], sums[2]))
    return KMeans1D(centres, w, var, iterations, converged)


def distance_softmax(values: npt.NDArray[np.float32], centres: F64, variance: float) -> npt.NDArray[np.float32]:
    """``p_k ∝ exp(-(x - c_k)^2 / (2 variance))`` for every voxel, shape (N, k), float32."""
    c = centres.astype(np.float32)
    logits = (values[:, None] - c[None, :]) ** 2
    logits *= np.float32(-0.5 / max(variance, 1e-12))
    return softmax_rows(logits)


@register
class KMeansSegmenter(Segmenter):
    """K-means on the in-mask intensities (3 classes), soft probabilities by distance softmax."""

    name = "kmeans"
    kind = "tissue"
    description = "K-means (Lloyd, 1D, deterministic) on in-mask intensities; CSF/GM/WM"
    reference = "Lloyd 1982, Least squares quantization in PCM, IEEE Trans Inf Theory 28:129"
    options_type = KMeansOptions

    def run(self, image: Image, mask: LabelImage | None) -> Segmentation:
        """Cluster the in-mask intensities and return tissue map and probabilities."""
        opts: KMeansOptions = self.options
        region = Region.from_inputs(image, mask)
        fit = kmeans_1d(Histogram.of(region.values), 3, max_iter=opts.max_iter)
        contrast = resolve_contrast(opts.contrast, image, fit.weights / fit.weights.sum())
        probs = distance_softmax(region.values, fit.centres, opts.temperature * fit.pooled_variance)
        probs = order_to_tissues(probs, contrast)
        info = {"method": self.name, "contrast": contrast, "iterations": fit.iterations,
                "converged": fit.converged, "means": class_means(region.values, probs),
                "centres": [float(c) for c in fit.centres]}
        return assemble(image, region, probs, info)
