"""The phantom's anatomy and painting: seeded smooth fields, signed distances in world mm, partial volume.

Every region is an approximate signed distance in mm (negative inside) in the continuous world frame (RAS+,
brain centred near the origin), so :mod:`mriquant.testing.phantom` can sample the same anatomy on any grid:
nested, smoothly deformed shells for skin, fat, skull and CSF; a cortex folded by radial sulci and the
interhemispheric fissure; white matter; ventricles and deep nuclei; optionally a neck. :func:`paint` labels
points (3, N) and blends the compartment means by voxel coverage.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from mriquant.testing.phantom_spec import (
    MEANS,
    STREAM_ANATOMY,
    STREAM_BIAS,
    Compartment,
    Floats,
    Index,
    PhantomSpec,
    Points,
    Vec3,
    rng_stream,
)

# --- Smooth seeded fields (points are (3, N) arrays: rows x, y, z in RAS+ mm) ---


@dataclass(frozen=True)
class _WaveField:
    """A sum of seeded plane waves in world mm; values lie in [-1, 1]."""

    wavevectors: npt.NDArray[np.float64]  # (K, 3) rad/mm
    phases: npt.NDArray[np.float64]  # (K,)
    weights: npt.NDArray[np.float64]  # (K,), sum of |weights| = 1

    @classmethod
    def random(cls, rng: np.random.Generator, *, waves: int, wavelength_mm: float) -> _WaveField:
        directions = rng.normal(size=(waves, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        lengths = wavelength_mm * rng.uniform(0.8, 1.25, size=waves)
        weights = rng.uniform(0.5, 1.0, size=waves)
        phases = rng.uniform(0.0, 2 * np.pi, size=waves)
        return cls(directions * (2 * np.pi / lengths)[:, None], phases, weights / weights.sum())

    def _phase(self, p: Points, wave: int) -> Floats:
        k = self.wavevectors[wave].astype(np.float32)
        phase: Floats = p[0] * k[0]
        phase += p[1] * k[1]
        phase += p[2] * k[2]
        phase += np.float32(self.phases[wave])
        return phase

    def __call__(self, p: Points) -> Floats:
        total = np.zeros(p.shape[1], np.float32)
        for wave, weight in enumerate(self.weights):
            total += np.float32(weight) * np.sin(self._phase(p, wave))
        return total

    def value_and_gradient(self, p: Points) -> tuple[Floats, Floats]:
        """Return the field (N,) and its gradient (3, N) in 1/mm at ``p``."""
        total = np.zeros(p.shape[1], np.float32)
        grad = np.zeros(p.shape, np.float32)
        for wave, weight in enumerate(self.weights):
            phase = self._phase(p, wave)
            total += np.float32(weight) * np.sin(phase)
            slope = np.cos(phase) * np.float32(weight)
            for axis in range(3):
                grad[axis] += np.float32(self.wavevectors[wave, axis]) * slope
        return total, grad


def _quadratic(u: Points, linear: npt.NDArray[np.float64], quadratic: npt.NDArray[np.float64]) -> Floats:
    """``linear . u + u' Q u`` for points ``u`` (3, N)."""
    total = np.zeros(u.shape[1], np.float32)
    for i in range(3):
        total += np.float32(linear[i]) * u[i]
        for j in range(3):
            total += np.float32(quadratic[i, j]) * u[i] * u[j]
    return total


@dataclass(frozen=True)
class _BiasField:
    """A seeded quadratic in head coordinates, scaled to [-1, 1] over the head's ellipsoid."""

    center: Floats  # (3,)
    radii: Floats  # (3,)
    linear: npt.NDArray[np.float64]  # (3,)
    quadratic: npt.NDArray[np.float64]  # (3, 3) symmetric
    offset: float
    norm: float

    @classmethod
    def random(cls, rng: np.random.Generator, center: Vec3, radii: Vec3) -> _BiasField:
        linear = rng.normal(size=3)
        q = rng.normal(scale=0.6, size=(3, 3))
        quadratic = (q + q.T) / 2
        ball = rng.normal(size=(3, 4096))
        ball *= rng.uniform(size=4096) ** (1 / 3) / np.linalg.norm(ball, axis=0)
        values = _quadratic(ball.astype(np.float32), linear, quadratic)
        lo, hi = float(values.min()), float(values.max())
        return cls(np.asarray(center, np.float32), np.asarray(radii, np.float32),
                   linear, quadratic, (hi + lo) / 2, max((hi - lo) / 2, 1e-6))

    def __call__(self, p: Points, amplitude: float) -> Floats:
        """Return the multiplicative field ``1 + amplitude * f(p)``, f clipped to [-1, 1]."""
        u = (p - self.center[:, None]) / self.radii[:, None]
        f = (_quadratic(u, self.linear, self.quadratic) - np.float32(self.offset)) / np.float32(self.norm)
        return np.asarray(1.0 + amplitude * np.clip(f, -1.0, 1.0), np.float32)


# --- Anatomy: signed distances in world mm, negative inside ---


def _sum_squares(v: Floats) -> Floats:
    """Sum of squares over the first axis of (D, N) -> (N,); faster than ``sum(axis=0)`` for small D."""
    total: Floats = v[0] * v[0]
    for row in v[1:]:
        total += row * row
    return total


def _norm(v: Floats) -> Floats:
    """Euclidean norm over the first axis of (D, N) -> (N,)."""
    return np.sqrt(_sum_squares(v))


def _ellipsoid_sdf(q: Points, axes: Floats) -> Floats:
    """Approximate signed distance (mm) to an axis-aligned ellipsoid centred at 0, any dimension D.

    Uses ``k0 (k0 - 1) / k1`` with ``k0 = |q / a|`` and ``k1 = |q / a^2|``, so
    ``sdf < m`` implies ``k0 < 1 + m / min(a)`` (what the sampler's choice of candidate voxels relies on).
    """
    scaled = q / axes[:, None]
    k0 = _norm(scaled)
    k1 = _norm(scaled / axes[:, None])
    inner = np.full(k0.shape, -float(axes.min()), dtype=np.float32)
    return np.divide(k0 * (k0 - 1.0), k1, out=inner, where=k1 > 1e-12)


@dataclass(frozen=True)
class _Ellipsoid:
    """An ellipsoid; ``bend`` (mm) lowers its ends along y into a banana shape."""

    center: Floats
    axes: Floats
    bend: float = 0.0

    def sdf(self, p: Points) -> Floats:
        q = p - self.center[:, None]
        if self.bend:
            q[2] += np.float32(self.bend) * (q[1] / self.axes[1]) ** 2
        return _ellipsoid_sdf(q, self.axes)


@dataclass(frozen=True)
class _Layout:
    """Fixed anatomy sizes in mm (the seed jitters and deforms them)."""

    brain_center: Vec3 = (0.0, 0.0, 10.0)
    brain_axes: Vec3 = (66.0, 82.0, 58.0)
    csf_mm: float = 3.0
    skull_mm: float = 6.0
    fat_mm: float = 3.5
    skin_mm: float = 2.0
    deform_mm: float = 4.0
    cortex_mm: float = 3.0
    sulcus_depth_mm: float = 17.0
    sulcus_depth_range_mm: float = 5.0
    sulcus_half_width_mm: float = 0.6
    sulcus_wavelength_mm: float = 26.0
    fissure_depth_mm: float = 28.0
    fissure_half_width_mm: float = 1.0
    neck_center: tuple[float, float] = (0.0, -12.0)
    neck_axes: tuple[float, float] = (46.0, 50.0)
    neck_top_mm: float = -20.0

    @property
    def outer_mm(self) -> float:
        """Distance from the brain envelope to the skin surface."""
        return self.csf_mm + self.skull_mm + self.fat_mm + self.skin_mm


LAYOUT = _Layout()

#: Left-hemisphere deep structures: compartment, centre relative to the brain centre, axes, bend (mm).
_DEEP: tuple[tuple[Compartment, Vec3, Vec3, float], ...] = (
    (Compartment.THALAMUS, (-10.0, -16.0, -10.0), (8.0, 16.0, 9.0), 0.0),
    (Compartment.CAUDATE, (-15.0, 14.0, 2.0), (5.0, 15.0, 8.0), 0.0),
    (Compartment.PUTAMEN, (-27.0, 4.0, -10.0), (6.0, 16.0, 11.0), 0.0),
    (Compartment.VENTRICLE, (-7.0, 0.0, 7.0), (5.0, 32.0, 8.0), 8.0),
)


def _deep_structures(rng: np.random.Generator) -> tuple[tuple[Compartment, _Ellipsoid], ...]:
    """Both hemispheres' deep structures, each side jittered on its own (painting order)."""
    base = np.asarray(LAYOUT.brain_center, np.float32)
    out: list[tuple[Compartment, _Ellipsoid]] = []
    for comp, center, axes, bend in _DEEP:
        for side in (1.0, -1.0):
            c = np.asarray(center, np.float32) * np.asarray([side, 1.0, 1.0], np.float32) + base
            c += rng.uniform(-1.0, 1.0, size=3).astype(np.float32)
            a = np.asarray(axes, np.float32) * rng.uniform(0.92, 1.08, size=3).astype(np.float32)
            out.append((comp, _Ellipsoid(c, a, bend)))
    return tuple(out)


@dataclass(frozen=True)
class Anatomy:
    """The seeded anatomy: envelope, its deformation, sulci, deep structures, bias field."""

    envelope: _Ellipsoid
    deform: _WaveField
    sulci: _WaveField
    deep: tuple[tuple[Compartment, _Ellipsoid], ...]
    bias: _BiasField

    @classmethod
    def from_seed(cls, seed: int) -> Anatomy:
        """The anatomy of ``seed``: its shape stream draws the geometry, its bias stream the bias field."""
        shape_rng, bias_rng = rng_stream(seed, STREAM_ANATOMY), rng_stream(seed, STREAM_BIAS)
        axes = (np.asarray(LAYOUT.brain_axes) * shape_rng.uniform(0.97, 1.03, 3)).astype(np.float32)
        head = axes + np.float32(LAYOUT.outer_mm)
        return cls(
            envelope=_Ellipsoid(np.asarray(LAYOUT.brain_center, np.float32), axes),
            deform=_WaveField.random(shape_rng, waves=6, wavelength_mm=110.0),
            sulci=_WaveField.random(shape_rng, waves=24, wavelength_mm=LAYOUT.sulcus_wavelength_mm),
            deep=_deep_structures(shape_rng),
            bias=_BiasField.random(bias_rng, LAYOUT.brain_center,
                                   (float(head[0]), float(head[1]), float(head[2]))),
        )


def _neck_sdf(p: Points) -> Floats:
    """Signed distance (mm) to an elliptic cylinder below ``neck_top_mm``."""
    q = p[:2] - np.asarray(LAYOUT.neck_center, np.float32)[:, None]
    across = _ellipsoid_sdf(q, np.asarray(LAYOUT.neck_axes, np.float32))
    return np.asarray(np.maximum(across, p[2] - np.float32(LAYOUT.neck_top_mm)), np.float32)


def _sulcal_sdf(p: Points, depth: Floats, limit: Floats, anatomy: Anatomy) -> Floats:
    """Signed distance (mm) to the sulcal CSF: thin sheets reaching ``limit`` mm deep.

    The sulcal field is read on a sphere around the brain centre, so its zero
    sheets run radially, roughly normal to the cortical surface; the distance to
    a sheet is estimated as ``|f| / |tangential gradient of f|``.
    """
    rel = p - anatomy.envelope.center[:, None]
    r = np.maximum(_norm(rel), np.float32(1.0))
    u = rel / r
    radius = np.float32(100.0)
    value, grad = anatomy.sulci.value_and_gradient(u * radius)
    radial = grad[0] * u[0] + grad[1] * u[1] + grad[2] * u[2]
    tangential = grad - radial * u
    slope = _norm(tangential) * (radius / r)
    dist = np.abs(value) / np.maximum(slope, np.float32(1e-3))
    return np.asarray(np.maximum(dist - np.float32(LAYOUT.sulcus_half_width_mm), depth - limit), np.float32)


def _pial_sdf(p: Points, envelope: Floats, wobble: Floats, anatomy: Anatomy, width: float) -> Floats:
    """Signed distance (mm) to the pial surface: the envelope minus sulci and the midline fissure."""
    depth = -envelope
    limit = np.float32(LAYOUT.sulcus_depth_mm) + np.float32(LAYOUT.sulcus_depth_range_mm) * wobble
    sulcal = np.full(envelope.shape, np.inf, dtype=np.float32)
    band = depth < limit + np.float32(LAYOUT.cortex_mm + width)
    sulcal[band] = _sulcal_sdf(p[:, band], depth[band], limit[band], anatomy)
    midline = np.abs(p[0] - anatomy.envelope.center[0])
    fissure = np.maximum(midline - np.float32(LAYOUT.fissure_half_width_mm),
                         depth - np.float32(LAYOUT.fissure_depth_mm))
    return np.asarray(np.maximum(envelope, -np.minimum(sulcal, fissure)), np.float32)


# --- Painting: crisp labels at voxel centres, partial-volume signal ---


class _Canvas:
    """Labels and signal of N points, painted region by region (later regions on top)."""

    def __init__(self, n: int, means: tuple[float, ...], width: float | None) -> None:
        self.label = np.zeros(n, dtype=np.uint8)
        self.signal = np.zeros(n, dtype=np.float32)
        self.means = means
        self.width = width

    def paint(self, comp: Compartment, sdf: Floats) -> None:
        """Paint ``comp`` where ``sdf < 0``; blend its mean by the voxel coverage."""
        self.label[sdf < 0] = comp
        if self.width is None:
            cover = (sdf < 0).astype(np.float32)
        else:
            cover = np.clip(np.float32(0.5) - sdf / np.float32(self.width), 0.0, 1.0)
        self.signal += cover * (np.float32(self.means[comp]) - self.signal)

    def take(self, idx: Index) -> _Canvas:
        """Return a canvas holding a copy of points ``idx``."""
        sub = _Canvas(0, self.means, self.width)
        sub.label, sub.signal = self.label[idx], self.signal[idx]
        return sub

    def put(self, idx: Index, sub: _Canvas) -> None:
        """Write ``sub`` (from :meth:`take`) back at points ``idx``."""
        self.label[idx], self.signal[idx] = sub.label, sub.signal


def _paint_head(canvas: _Canvas, p: Points, envelope: Floats, *, neck: bool) -> None:
    """Skin, fat, neck, skull and the CSF layer, outside in."""
    lay = LAYOUT
    canvas.paint(Compartment.SKIN, envelope - np.float32(lay.outer_mm))
    canvas.paint(Compartment.FAT, envelope - np.float32(lay.outer_mm - lay.skin_mm))
    if neck:
        neck_sdf = _neck_sdf(p)
        canvas.paint(Compartment.SKIN, neck_sdf)
        canvas.paint(Compartment.FAT, neck_sdf + np.float32(lay.skin_mm))
        canvas.paint(Compartment.MUSCLE, neck_sdf + np.float32(lay.skin_mm + lay.fat_mm))
    canvas.paint(Compartment.SKULL, envelope - np.float32(lay.csf_mm + lay.skull_mm))
    canvas.paint(Compartment.CSF, envelope - np.float32(lay.csf_mm))


def _paint_brain(canvas: _Canvas, p: Points, envelope: Floats, wobble: Floats, anatomy: Anatomy,
                 width: float) -> None:
    """Cortex, white matter, deep nuclei and ventricles (points inside or near the envelope)."""
    pial = _pial_sdf(p, envelope, wobble, anatomy, width)
    canvas.paint(Compartment.CORTEX, pial)
    canvas.paint(Compartment.WM, pial + np.float32(LAYOUT.cortex_mm))
    near = np.flatnonzero(_in_box(p, *_deep_box(anatomy, 2 * width)))
    sub = canvas.take(near)
    for comp, shape in anatomy.deep:
        sub.paint(comp, shape.sdf(p[:, near]))
    canvas.put(near, sub)


def _deep_box(anatomy: Anatomy, margin: float) -> tuple[Floats, Floats]:
    """Corners (lo, hi) of a box holding every deep structure, ``margin`` mm to spare."""
    lo = np.min([e.center - e.axes - np.float32(e.bend) for _, e in anatomy.deep], axis=0)
    hi = np.max([e.center + e.axes for _, e in anatomy.deep], axis=0)
    return lo - np.float32(margin), hi + np.float32(margin)


def _in_box(p: Points, lo: Floats, hi: Floats) -> npt.NDArray[np.bool_]:
    inside: npt.NDArray[np.bool_] = (p[0] > lo[0]) & (p[0] < hi[0])
    inside &= (p[1] > lo[1]) & (p[1] < hi[1])
    inside &= (p[2] > lo[2]) & (p[2] < hi[2])
    return inside


def paint(p: Points, anatomy: Anatomy, spec: PhantomSpec) -> _Canvas:
    """Paint every compartment at points ``p`` (3, N)."""
    width = pv_width(spec)
    canvas = _Canvas(p.shape[1], MEANS[spec.contrast], width if spec.partial_volume else None)
    wobble = anatomy.deform(p)
    envelope = anatomy.envelope.sdf(p) + np.float32(LAYOUT.deform_mm) * wobble
    _paint_head(canvas, p, envelope, neck=spec.neck)
    inner = np.flatnonzero(envelope < np.float32(width))
    sub = canvas.take(inner)
    _paint_brain(sub, p[:, inner], envelope[inner], wobble[inner], anatomy, width)
    canvas.put(inner, sub)
    return canvas


def pv_width(spec: PhantomSpec) -> float:
    """Width (mm) of the partial-volume ramp: the geometric mean voxel size."""
    return float(np.prod(spec.spacing) ** (1.0 / 3.0))
