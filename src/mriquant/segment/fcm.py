"""Fuzzy c-means with an optional spatial term, FCM_S (``--method fcm``).

Fuzzy c-means (Bezdek 1981) minimises ``sum_i sum_k u_ik^m (x_i - v_k)^2`` over memberships
``u_ik`` (summing to 1 over the classes) and centres ``v_k``. FCM_S (Ahmed et al. 2002) adds
``alpha / N_R sum_{r in N_i} u_ik^m (x_r - v_k)^2``, pulling each voxel's membership towards
what its neighbours' intensities say. Writing the neighbourhood sum with the local mean
``xbar_i`` and variance ``var_i`` of the ``N_R`` neighbours turns it into a per-voxel distance

    ``D_ik = (x_i - v_k)^2 + alpha ((xbar_i - v_k)^2 + var_i)``

so both updates stay closed-form and vectorised:
``u_ik = D_ik^(-1/(m-1)) / sum_j D_ij^(-1/(m-1))`` and
``v_k = sum_i u_ik^m (x_i + alpha xbar_i) / ((1 + alpha) sum_i u_ik^m)``.

The neighbourhood is the 26 voxels around each voxel (3x3x3 minus the centre), counting only
voxels inside the mask. ``spatial_weight`` is ``alpha``; 0 gives plain FCM, which then runs on
the in-mask histogram. The centres start at the k-means centres; the memberships are the
output probabilities (after mapping the intensity-sorted classes to tissues by contrast).

References
----------
Bezdek, J. C. (1981). Pattern Recognition with Fuzzy Objective Function Algorithms. Plenum.
Ahmed, M. N., Yamany, S. M., Mohamed, N., Farag, A. A., Moriarty, T. (2002). A modified fuzzy
c-means algorithm for bias field estimation and segmentation of MRI data. IEEE Trans. Med.
Imaging 21(3), 193-199.
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
    box_sum,
    check_choice,
    class_means,
    order_to_tissues,
    resolve_contrast,
)
from mriquant.segment.base import Segmentation, Segmenter, register
from mriquant.segment.kmeans import kmeans_1d

__all__ = ["FCMOptions", "FCMSegmenter", "Samples", "fcm", "local_stats"]

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class FCMOptions:
    """Options of ``fcm``."""

    contrast: ContrastName = field(default="T1", metadata={"help": CONTRAST_HELP})
    m: float = field(default=2.0, metadata={"help": "Fuzziness exponent m > 1 (2 is the usual choice)"})
    spatial_weight: float = field(
        default=0.0, metadata={"help": "FCM_S neighbourhood weight alpha (0 = plain fuzzy c-means)"}
    )
    max_iter: int = field(default=100, metadata={"help": "Most iterations"})
    tol: float = field(default=1e-4, metadata={"help": "Stop when no centre moves more than tol x intensity range"})

    def __post_init__(self) -> None:
        check_choice("contrast", self.contrast, (*CONTRAST_ORDER, "auto"))
        if not (self.m > 1.0 and self.spatial_weight >= 0.0 and self.max_iter >= 1 and self.tol > 0):
            raise InputError(
                f"Expected m > 1, spatial_weight >= 0, max_iter >= 1 and tol > 0, found m={self.m}, "
                f"spatial_weight={self.spatial_weight}, max_iter={self.max_iter}, tol={self.tol}; fix the fcm options."
            )


@dataclass(frozen=True)
class Samples:
    """What FCM_S clusters: values, neighbourhood means and variances, and sample weights (all (S,))."""

    x: F32
    xbar: F32
    var: F32
    weight: F32

    @classmethod
    def plain(cls, hist: Histogram) -> Samples:
        """Histogram samples for plain FCM (no neighbourhood)."""
        x = hist.centres.astype(np.float32)
        return cls(x, x, np.zeros_like(x), hist.counts.astype(np.float32))


def local_stats(region: Region) -> tuple[F32, F32]:
    """Mean and variance of the in-mask 26-neighbours of every in-mask voxel, each (N,) float32.

    A voxel without in-mask neighbours gets its own value and variance 0.
    """
    vol = region.scatter(region.values.astype(np.float64))
    count = box_sum(region.inside.astype(np.float32))[region.inside].astype(np.float64)
    total = box_sum(vol)[region.inside]
    total_sq = box_sum(vol * vol)[region.inside]
    has = count > 0
    safe = np.maximum(count, 1.0)
    mean = np.where(has, total / safe, region.values)
    var = np.where(has, np.maximum(total_sq / safe - mean**2, 0.0), 0.0)
    return mean.astype(np.float32), var.astype(np.float32)


def memberships(s: Samples, centres: F64, m: float, alpha: float) -> F32:
    """FCM_S memberships (S, k) of the samples for ``centres``."""
    v = centres.astype(np.float32)[None, :]
    dist = (s.x[:, None] - v) ** 2
    if alpha > 0:
        dist += np.float32(alpha) * ((s.xbar[:, None] - v) ** 2 + s.var[:, None])
    dist += np.float32(1e-12) * (1.0 + np.abs(v))  # a voxel exactly on a centre
    inv = dist ** np.float32(-1.0 / (m - 1.0)) if m != 2.0 else np.reciprocal(dist, out=dist)
    inv /= inv.sum(axis=1, keepdims=True)
    return np.asarray(inv, dtype=np.float32)


def _centres(s: Samples, u: F32, m: float, alpha: float) -> F64:
    um = (u**2 if m == 2.0 else u ** np.float32(m)) * s.weight[:, None]
    target = s.x + np.float32(alpha) * s.xbar if alpha > 0 else s.x
    num = target.astype(np.float64) @ um.astype(np.float64)
    return np.asarray(num / ((1.0 + alpha) * np.maximum(um.sum(axis=0, dtype=np.float64), 1e-300)), np.float64)


def fcm(s: Samples, init: F64, *, m: float = 2.0, alpha: float = 0.0, max_iter: int = 100,
        tol: float = 1e-4) -> tuple[F64, int, bool]:
    """Run FCM_S from centres ``init``.

    Returns
    -------
    centres : numpy.ndarray, shape (k,)
        Final centres (sorted).
    iterations : int
        Iterations run.
    converged : bool
        Whether the centres moved less than ``tol`` times the value range.
    """
    centres = np.sort(init.astype(np.float64))
    scale = tol * float(s.x.max() - s.x.min())
    for iteration in range(1, max_iter + 1):
        new = _centres(s, memberships(s, centres, m, alpha), m, alpha)
        moved = float(np.max(np.abs(new - centres)))
        centres = np.sort(new)
        if moved <= scale:
            return centres, iteration, True
    return centres, max_iter, False


@register
class FCMSegmenter(Segmenter):
    """Fuzzy c-means (Bezdek) with Ahmed's FCM_S neighbourhood term; memberships as probabilities."""

    name = "fcm"
    kind = "tissue"
    description = "Fuzzy c-means with an optional FCM_S spatial term; memberships as probabilities"
    reference = "Bezdek 1981 (FCM); Ahmed et al. 2002, IEEE TMI 21:193 (FCM_S)"
    options_type = FCMOptions

    def run(self, image: Image, mask: LabelImage | None) -> Segmentation:
        """Cluster the in-mask voxels and return tissue map and memberships."""
        opts: FCMOptions = self.options
        region = Region.from_inputs(image, mask)
        hist = Histogram.of(region.values)
        init = kmeans_1d(hist, 3).centres
        voxels = Samples.plain(hist)
        if opts.spatial_weight > 0:
            xbar, var = local_stats(region)
            voxels = Samples(region.values, xbar, var, np.ones_like(region.values))
        centres, iterations, converged = fcm(voxels, init, m=opts.m, alpha=opts.spatial_weight,
                                             max_iter=opts.max_iter, tol=opts.tol)
        if opts.spatial_weight == 0:
            voxels = Samples(region.values, region.values, np.zeros_like(region.values), np.ones_like(region.values))
        sorted_u = memberships(voxels, centres, opts.m, opts.spatial_weight)
        contrast = resolve_contrast(opts.contrast, image, sorted_u.mean(axis=0))
        probs = order_to_tissues(sorted_u, contrast)
        info = {"method": self.name, "contrast": contrast, "iterations": iterations, "converged": converged,
                "centres": [float(c) for c in centres], "means": class_means(region.values, probs)}
        return assemble(image, region, probs, info)
