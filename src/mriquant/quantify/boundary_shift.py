"""Edge-profile boundary shift: brain volume change from the sub-voxel motion of tissue edges (SIENA-class).

Two images of one head on one grid (the halfway space of :mod:`mriquant.quantify.longitudinal`) and the
baseline's brain-tissue fraction ``w`` (GM + WM, in [0, 1]) on that grid. Following the edge-motion
formulation of SIENA (Smith et al. 2002, NeuroImage 17:479), written from the published description:

1. **Edge points**: voxels with ``w >= 0.5`` that have a face neighbour with ``w < 0.5`` (tissue/CSF and
   tissue/background edges). The outward normal is ``-grad(w)`` after Gaussian smoothing (1 voxel).
   Each point stands for the edge area ``1 / max_i |n_i|`` (voxel faces): a plane with unit normal ``n``
   has ``max_i |n_i|`` boundary voxels per unit area.
2. **Profiles**: both images are sampled along the normal, ``+-`` a few voxels, every 0.25 voxel
   (cubic B-spline). The edge motion ``s`` (voxels, outward positive: tissue grows) is the shift that
   maximises the normalised cross-correlation of the two *derivative* profiles (so a different gain or
   offset of the two scans does not move the edge). The two profiles are shifted in opposite directions
   by half the shift each, so swapping the scans negates ``s`` exactly; the correlation peak is
   refined by a parabola through its three highest samples.
3. **Measured edges**: an edge whose outward normal leaves either brain mask within 1 voxel faces the
   mask boundary, not CSF: its motion would be the skull stripping's, so it counts as not moving.
4. **Volume**: ``dV = k / g * sum(area * s)`` over the measured edges and ``PBVC = 100 dV / sum(w)``.
   Two factors, both measured on the pair itself (never fitted to a benchmark):

   - ``k`` (edge geometry): by the divergence theorem the flux of ``x - c`` through the closed tissue
     surface is three times the enclosed volume, so ``k = 3 sum(w) / sum_all(area * (x - c) . n)``
     over all edge points; it corrects the per-point areas (noisy normals inflate ``1 / max|n_i|``).
   - ``g`` (estimator gain, SIENA's self-calibration): the follow-up is re-sampled scaled by
     ``1 +- delta`` about the edge centroid ``c`` (``delta = 0.5 %``), which moves every follow-up edge
     ``y + s n`` by the known ``+-delta (y + s n - c) . n``; ``g`` is the measured change of
     ``sum(area * s)`` divided by the known one.

Known limits (measured in ``tests/test_longitudinal.py`` and ``bench/longitudinal_results/latest.md``):
the volume is first order in the edge motion (the second-order curvature term is left out: on a convex
object a shrink by a fraction ``e`` of its size is overestimated by about ``e``, a growth underestimated);
and the correlation peak of partial-volume edge profiles locks partly to the voxel grid, which the
self-calibration cannot see (it resamples the follow-up, moving its voxel grid with it): on a synthetic
ellipsoid a shrink of 0.14 voxel is measured within 1 % and a growth of 0.14 voxel about 8 % low;
at 3 mm a 0.5 mm thinning of the whole cortex is mostly missed (sulci are not resolved).

Examples
--------
>>> result = boundary_shift(baseline, followup, tissue, masks=(mask_a, mask_b))  # doctest: +SKIP
>>> result.pbvc_percent, result.gain  # doctest: +SKIP
(-0.83, 0.87)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError

__all__ = [
    "BoundaryShift",
    "EdgePoints",
    "boundary_shift",
    "edge_points",
    "profile_shifts",
    "sample_profiles",
]

Float64 = npt.NDArray[np.float64]
Bool = npt.NDArray[np.bool_]

#: Profile sampling step (voxels).
PROFILE_STEP = 0.25
#: Relative length scaling of the self-calibration (the follow-up is re-sampled at ``1 +- delta``).
CALIBRATION_SCALE = 0.005
#: An edge whose outward normal leaves a brain mask within this many voxels is not measured.
MASK_REACH = 1.0
#: Fewest edge points the measurement needs.
MIN_EDGE_POINTS = 500
#: Edge points processed at once (bounds the memory of the profiles: about 100 MB per block).
BLOCK = 100_000


@dataclass(frozen=True)
class EdgePoints:
    """Tissue edge points on a voxel grid.

    Attributes
    ----------
    points : ndarray, shape (N, 3)
        Voxel coordinates (float64) of the edge voxels (tissue side).
    normals : ndarray, shape (N, 3)
        Outward unit normals (from tissue towards non-tissue), in voxel axes.
    area : ndarray, shape (N,)
        Edge area each point stands for (voxel faces; ``1 / max_i |n_i|``, between 1 and sqrt(3)).

    """

    points: Float64
    normals: Float64
    area: Float64

    def __len__(self) -> int:
        return len(self.points)

    def subset(self, keep: Bool | slice) -> EdgePoints:
        """The points selected by ``keep`` (a boolean mask or a slice)."""
        return EdgePoints(self.points[keep], self.normals[keep], self.area[keep])

    def flux(self, centre: Float64) -> Float64:
        """Per point ``area * (y - centre) . n`` (voxels^3): the edge motion of a unit scaling about ``centre``.

        ``y`` is the point on the surface: a tissue-side edge voxel of a plane with unit normal ``n`` lies
        between 0 and ``max_i |n_i|`` voxels inside it, so on average ``y = x + max_i |n_i| / 2 * n`` and
        ``area * (y - x) . n = 1 / 2``.
        """
        return np.asarray(self.area * np.einsum("ij,ij->i", self.points - centre, self.normals) + 0.5,
                          dtype=np.float64)  # fmt: skip


@dataclass(frozen=True)
class BoundaryShift:
    """Result of :func:`boundary_shift`.

    Attributes
    ----------
    pbvc_percent : float
        Percentage brain-tissue volume change, ``100 k dV_raw / (g V)``.
    raw_percent : float
        ``100 sum(area * s) / V`` before the two factors.
    area_factor : float
        ``k``, the edge-geometry factor (0.90 on simulated 1 mm BrainWeb brains, 1.04 on a smooth ball).
    gain : float
        ``g``, the estimator gain from the self-calibration (0.87-0.88 on simulated 1 mm BrainWeb pairs).
    edge_points : int
        All edge points.
    measured_points : int
        Edge points whose motion was measured (not facing a mask boundary).
    mean_shift_voxels : float
        Area-weighted mean edge motion over the measured points (voxels, outward positive).

    """

    pbvc_percent: float
    raw_percent: float
    area_factor: float
    gain: float
    edge_points: int
    measured_points: int
    mean_shift_voxels: float

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (rounded)."""
        return {k: (round(v, 5) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def edge_points(tissue: npt.NDArray[np.floating[Any]], *, sigma_voxels: float = 1.0) -> EdgePoints:
    """Tissue-side edge voxels of ``tissue >= 0.5`` (face neighbours), outward normals and areas.

    Parameters
    ----------
    tissue : ndarray, shape (I, J, K)
        Tissue fraction in [0, 1].
    sigma_voxels : float
        Gaussian smoothing (voxels) of ``tissue`` before its gradient gives the normals.

    Returns
    -------
    EdgePoints
        Points whose smoothed gradient vanishes are dropped.

    Examples
    --------
    >>> w = np.zeros((9, 9, 9)); w[2:7, 2:7, 2:7] = 1.0
    >>> edges = edge_points(w)
    >>> len(edges), round(float(edges.area.sum()))
    (98, 124)

    """
    inside = np.asarray(tissue) >= 0.5
    face = ndimage.generate_binary_structure(3, 1)
    edge = inside & ~ndimage.binary_erosion(inside, face, border_value=1)
    smooth = ndimage.gaussian_filter(np.asarray(tissue, dtype=np.float32), sigma_voxels)
    outward = -np.stack([g[edge] for g in np.gradient(smooth)], axis=1).astype(np.float64)
    length = np.linalg.norm(outward, axis=1)
    keep = length > 1e-6
    normals = outward[keep] / length[keep, None]
    points = np.argwhere(edge)[keep].astype(np.float64)
    return EdgePoints(points, normals, 1.0 / np.abs(normals).max(axis=1))


def sample_profiles(
    coefficients: Float64,
    edges: EdgePoints,
    offsets: Float64,
    *,
    centre: Float64 | None = None,
    scale: float = 1.0,
) -> Float64:
    """Cubic B-spline samples at ``points + t * normals`` for every offset ``t`` (voxels).

    Parameters
    ----------
    coefficients : ndarray, shape (I, J, K)
        Output of :func:`scipy.ndimage.spline_filter` (order 3) of the image.
    edges : EdgePoints
        Where the profiles start and their directions.
    offsets : ndarray, shape (T,)
        Positions along the normal (voxels).
    centre, scale : optional
        Sample the image scaled by ``scale`` about ``centre`` (voxel coordinates): the position ``x``
        reads the image at ``centre + (x - centre) / scale``, so structures appear ``scale`` times larger.

    Returns
    -------
    ndarray, shape (N, T)

    """
    where = edges.points[:, None, :] + offsets[None, :, None] * edges.normals[:, None, :]
    if centre is not None:
        where = centre + (where - centre) / scale
    values = ndimage.map_coordinates(coefficients, where.reshape(-1, 3).T, order=3, prefilter=False, mode="nearest")
    return np.asarray(values.reshape(where.shape[:2]), dtype=np.float64)


def profile_shifts(baseline: Float64, followup: Float64, *, step: float, window: float, max_shift: float) -> Float64:
    """Edge motion (voxels, + outward) from the cross-correlation of derivative profiles.

    Parameters
    ----------
    baseline, followup : ndarray, shape (N, T)
        Profiles along the outward normal, ``T`` odd, centred on the edge point, spacing ``step``.
    step : float
        Sample spacing (voxels).
    window : float
        Half-length (voxels) of the correlated part of each derivative profile.
    max_shift : float
        Largest motion searched (voxels); ``T`` must cover ``window + max_shift / 2 + step``.

    Returns
    -------
    ndarray, shape (N,)
        The shift ``s`` maximising ``ncc(d_baseline(t - s/2), d_followup(t + s/2))``, refined by a
        parabola through the peak and its neighbours; an edge moving outward by ``s`` gives ``s``.

    Raises
    ------
    InputError
        If the profiles are too short for ``window`` and ``max_shift``.

    Examples
    --------
    >>> t = np.arange(-16, 17) * 0.25
    >>> base = -np.tanh(t)[None]
    >>> round(float(profile_shifts(base, -np.tanh(t - 0.4)[None], step=0.25, window=2, max_shift=2)[0]), 2)
    0.4

    """
    half_window, shifts = round(window / step), round(max_shift / step)
    centre = baseline.shape[1] // 2
    if centre - half_window - (shifts + 1) // 2 - 1 < 0:
        raise InputError(f"Expected profiles of at least {2 * (half_window + (shifts + 1) // 2 + 1) + 1} samples for "
                         f"a window of {window} and shifts up to {max_shift} voxels, found {baseline.shape[1]}; "
                         "sample longer profiles.")  # fmt: skip
    with np.errstate(all="raise", under="ignore"):
        d_base, d_follow = np.gradient(baseline, axis=1), np.gradient(followup, axis=1)
        score = np.stack([_ncc(d_base, d_follow, centre, half_window, k) for k in range(-shifts, shifts + 1)], 1)
        peak = np.clip(score.argmax(axis=1), 1, 2 * shifts - 1)
        rows = np.arange(len(peak))
        before, at, after = score[rows, peak - 1], score[rows, peak], score[rows, peak + 1]
        curvature = before - 2.0 * at + after
        safe = np.where(curvature < -1e-12, curvature, -1.0)
        offset = np.where(curvature < -1e-12, np.clip(0.5 * (before - after) / safe, -0.5, 0.5), 0.0)
    return np.asarray((peak - shifts + offset) * step, dtype=np.float64)


def _ncc(a: Float64, b: Float64, centre: int, half: int, shift: int) -> Float64:
    """Normalised cross-correlation of ``a`` moved back by ``shift // 2`` samples and ``b`` forward by the rest."""
    back = -(shift // 2)
    ahead = shift + back
    x = a[:, centre - half + back : centre + half + 1 + back]
    y = b[:, centre - half + ahead : centre + half + 1 + ahead]
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    norm = np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return np.asarray((x * y).sum(axis=1) / np.maximum(norm, 1e-12), dtype=np.float64)


def _facing_masks(edges: EdgePoints, masks: tuple[Bool, ...]) -> Bool:
    """True where the outward normal leaves one of ``masks`` within :data:`MASK_REACH` voxels."""
    both = np.logical_and.reduce([np.asarray(m, dtype=bool) for m in masks]).astype(np.float32)
    reach = np.arange(0.5, MASK_REACH + 1e-9, 0.5)
    where = edges.points[:, None, :] + reach[None, :, None] * edges.normals[:, None, :]
    inside = ndimage.map_coordinates(both, where.reshape(-1, 3).T, order=1, mode="constant", cval=0.0)
    return np.asarray((inside.reshape(where.shape[:2]) < 0.5).any(axis=1), dtype=np.bool_)


def _motion_sums(
    coefficients: tuple[Float64, Float64], edges: EdgePoints, *, window: float, max_shift: float, centre: Float64
) -> Float64:
    """``sum(area * s)`` for the follow-up as is, scaled by ``1 + delta`` and by ``1 - delta`` (shape (3,))."""
    reach = round(window / PROFILE_STEP) + (round(max_shift / PROFILE_STEP) + 1) // 2 + 1
    offsets = np.arange(-reach, reach + 1, dtype=np.float64) * PROFILE_STEP
    scales = (1.0, 1.0 + CALIBRATION_SCALE, 1.0 - CALIBRATION_SCALE)
    sums = np.zeros(len(scales))
    for start in range(0, len(edges), BLOCK):
        block = edges.subset(slice(start, start + BLOCK))
        base = sample_profiles(coefficients[0], block, offsets)
        for i, scale in enumerate(scales):
            follow = sample_profiles(coefficients[1], block, offsets, centre=centre, scale=scale)
            motion = profile_shifts(base, follow, step=PROFILE_STEP, window=window, max_shift=max_shift)
            sums[i] += float((block.area * motion).sum())
    return sums


def boundary_shift(
    baseline: npt.NDArray[np.floating[Any]],
    followup: npt.NDArray[np.floating[Any]],
    tissue: npt.NDArray[np.floating[Any]],
    *,
    masks: tuple[Bool, Bool],
    window: float = 2.0,
    max_shift: float = 2.0,
) -> BoundaryShift:
    """Percentage brain-tissue volume change from the edge motion between two aligned images.

    Parameters
    ----------
    baseline, followup : ndarray, shape (I, J, K)
        The two scans on one grid (same contrast; any gain and offset).
    tissue : ndarray, shape (I, J, K)
        Baseline brain-tissue fraction in [0, 1] (GM + WM) on that grid; ``sum(tissue)`` is the volume
        the change is relative to.
    masks : tuple of two bool arrays, shape (I, J, K)
        The brain masks of both scans on that grid.
    window : float
        Half-length (voxels) of the correlated derivative profiles.
    max_shift : float
        Largest edge motion searched (voxels).

    Returns
    -------
    BoundaryShift

    Raises
    ------
    InputError
        If there are fewer than :data:`MIN_EDGE_POINTS` edge points or measured points, or the
        self-calibration finds no response to a known scaling (``g <= 0``).

    """
    shapes = {np.shape(baseline), np.shape(followup), np.shape(tissue), *(np.shape(m) for m in masks)}
    if len(shapes) != 1 or len(np.shape(tissue)) != 3:
        raise InputError(f"Expected the two scans, the tissue fraction and both masks on one 3D grid, found shapes "
                         f"{sorted(shapes)}; resample them into one space first.")  # fmt: skip
    if not (np.isfinite(baseline).all() and np.isfinite(followup).all() and np.isfinite(tissue).all()):
        raise InputError("Expected finite intensities and tissue fractions, found NaN or infinity; check the inputs.")
    if not (window > 0 and max_shift > 0):
        raise InputError(f"Expected window > 0 and max_shift > 0 voxels, found {window} and {max_shift}.")
    edges = edge_points(tissue)
    measured = edges.subset(~_facing_masks(edges, masks))
    if len(measured) < MIN_EDGE_POINTS:
        raise InputError(f"Expected at least {MIN_EDGE_POINTS} brain-tissue edge points inside both brain masks, "
                         f"found {len(measured)} (of {len(edges)}); check the brain masks and the tissue "
                         "segmentation of the baseline.")  # fmt: skip
    volume = float(np.sum(tissue))
    centre = edges.points.mean(axis=0)
    area_factor = 3.0 * volume / float(edges.flux(centre).sum())
    coefficients = (ndimage.spline_filter(np.asarray(baseline, dtype=np.float64), order=3),
                    ndimage.spline_filter(np.asarray(followup, dtype=np.float64), order=3))  # fmt: skip
    sums = _motion_sums(coefficients, measured, window=window, max_shift=max_shift, centre=centre)
    delta = CALIBRATION_SCALE
    # scaling by 1 +- delta about c moves a follow-up edge at y' by +-delta (y' - c) . n, and y' = y + s n lies the
    # measured motion s beyond the baseline's edge y: sum(area * (y' - c) . n) = flux + sum(area * s)
    known = 2.0 * delta * (float(measured.flux(centre).sum()) + float(sums[0]))
    gain = float(sums[1] - sums[2]) / known
    if not gain > 0:
        raise InputError(f"Expected the edge motion to follow a known {100 * delta:.1f} % scaling of the follow-up, "
                         f"found a gain of {gain:.3g}; the scans are probably not of the same contrast or not "
                         "aligned.")  # fmt: skip
    return BoundaryShift(
        pbvc_percent=100.0 * area_factor * float(sums[0]) / (gain * volume),
        raw_percent=100.0 * float(sums[0]) / volume,
        area_factor=area_factor,
        gain=gain,
        edge_points=len(edges),
        measured_points=len(measured),
        mean_shift_voxels=float(sums[0]) / float(measured.area.sum()),
    )
