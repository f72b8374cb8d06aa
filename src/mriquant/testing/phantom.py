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
import itertools
import json
import math
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import numpy.typing as npt

from mriquant.core.errors import MriquantError
from mriquant.core.image import Image, LabelImage

Contrast = Literal["T1", "T2", "PD"]
NoiseKind = Literal["rician", "gaussian"]
Vec3 = tuple[float, float, float]
Shape3 = tuple[int, int, int]
Floats = npt.NDArray[np.float32]
Points = npt.NDArray[np.float32]
"""World positions, shape (3, N): rows x, y, z in RAS+ mm."""
Index = npt.NDArray[np.intp]

#: Output voxel types and the value the brightest tissue mean is scaled to.
DTYPE_SCALE: dict[str, float] = {"float32": 1000.0, "int16": 1000.0, "uint16": 1000.0, "uint8": 200.0}

#: Letters of each world axis, positive direction first (RAS+).
_AXIS_LETTERS = ("RL", "AP", "SI")

#: All 48 three-letter orientation codes (6 axis orders x 8 sign patterns), "RAS" first.
ORIENTATION_CODES: tuple[str, ...] = tuple(
    "".join(_AXIS_LETTERS[axis][sign] for axis, sign in zip(perm, signs, strict=True))
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((0, 1), repeat=3)
)

#: Independent random streams drawn from one seed.
_STREAM_ANATOMY, _STREAM_BIAS, _STREAM_NOISE = 0, 1, 2

#: Points painted at a time: small enough for the temporaries to stay in cache.
_CHUNK_POINTS = 1 << 16


class PhantomError(MriquantError, ValueError):
    """A :class:`PhantomSpec` that cannot be sampled (bad orientation code, dtype, ...)."""


class Compartment(IntEnum):
    """Compartments the phantom paints; the truth maps group them into tissues and structures."""

    AIR = 0
    SKIN = 1
    FAT = 2
    MUSCLE = 3
    SKULL = 4
    CSF = 5
    CORTEX = 6
    WM = 7
    THALAMUS = 8
    CAUDATE = 9
    PUTAMEN = 10
    VENTRICLE = 11


#: Mean signal of each compartment (index = :class:`Compartment` value), brightest = 1.
MEANS: dict[str, tuple[float, ...]] = {
    #      air  skin  fat   musc  skull csf   ctx   wm    thal  caud  put   vent
    "T1": (0.0, 0.45, 1.00, 0.40, 0.06, 0.22, 0.55, 0.80, 0.68, 0.58, 0.62, 0.22),
    "T2": (0.0, 0.35, 0.60, 0.25, 0.05, 1.00, 0.62, 0.45, 0.52, 0.60, 0.55, 1.00),
    "PD": (0.0, 0.60, 0.85, 0.55, 0.08, 1.00, 0.88, 0.76, 0.82, 0.87, 0.85, 1.00),
}

# Compartment -> tissue class (1 CSF, 2 GM, 3 WM) and FreeSurfer ids (left, right).
_TISSUE_LUT = np.array([0, 0, 0, 0, 0, 1, 2, 3, 2, 2, 2, 1], dtype=np.uint8)
_LEFT_LUT = np.array([0, 0, 0, 0, 0, 24, 3, 2, 10, 11, 12, 4], dtype=np.int16)
_RIGHT_LUT = np.array([0, 0, 0, 0, 0, 24, 42, 41, 49, 50, 51, 43], dtype=np.int16)


def _rng(seed: int, stream: int) -> np.random.Generator:
    """The generator of one independent stream of ``seed``."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))


def _vec3(value: Any, name: str) -> Vec3:
    try:
        arr = np.broadcast_to(np.asarray(value, dtype=np.float64), (3,))
    except (TypeError, ValueError):
        arr = np.full(3, np.nan)
    if not np.all(np.isfinite(arr)):
        raise PhantomError(f"Expected three finite numbers (or one) for {name}, found {value!r}.")
    return float(arr[0]), float(arr[1]), float(arr[2])


def _check_orientation(code: str) -> str:
    code = str(code).upper()
    axes = sorted(next((i for i, p in enumerate(_AXIS_LETTERS) if c in p), -1) for c in code)
    if len(code) != 3 or axes != [0, 1, 2]:
        raise PhantomError(
            f"Expected a three-letter orientation code with one letter from each of RL, AP, SI, "
            f"found {code!r}; pass e.g. 'RAS', 'LPS' or 'LIA'."
        )
    return code


@dataclass(frozen=True)
class PhantomSpec:
    """What to sample: contrast, grid, voxel type, bias, noise and seed.

    ``spacing``, ``shape`` and ``field_of_view`` are given along the world axes
    x (R-L), y (A-P), z (S-I), before the array axes are permuted and flipped
    into ``orientation``; so one spec in two orientations holds the very same
    voxels (the image's ``shape`` and ``spacing`` are permuted accordingly).

    Attributes
    ----------
    contrast : {"T1", "T2", "PD"}
        Tissue means of :data:`MEANS`.
    spacing : tuple of float
        Voxel size along x, y, z in mm (anisotropic allowed).
    shape : tuple of int, optional
        Voxels along x, y, z; by default enough to cover ``field_of_view``.
    field_of_view : tuple of float
        Extent along x, y, z in mm used when ``shape`` is None.
    orientation : str
        Three-letter code of the array axes, one of the 48 (``"RAS"``, ``"LIA"``, ...).
    rotation : tuple of float
        Oblique grid: rotation about the x, y, z world axes in degrees, each
        below 45 (applied in that order, about the grid centre).
    center : tuple of float
        World position of the grid centre in mm (the brain is centred at (0, 0, 10)).
    dtype : {"float32", "int16", "uint16", "uint8"}
        Voxel type; integers are rounded and clipped.
    intensity_scale : float, optional
        Value of the brightest tissue mean; default :data:`DTYPE_SCALE` of ``dtype``.
    bias : float
        Bias field amplitude: 0.2 scales the signal by 0.8 to 1.2 across the head.
    noise : float
        Noise standard deviation as a fraction of the brightest tissue mean
        (BrainWeb's "% noise" / 100).
    noise_kind : {"rician", "gaussian"}
        Rician: magnitude of complex Gaussian noise (non-negative); Gaussian: additive.
    partial_volume : bool
        Blend tissue means at boundaries; False gives piecewise-constant images.
    neck : bool
        Add a neck below the skull.
    seed : int
        Seeds the anatomy, the bias field and the noise (fully deterministic).

    """

    contrast: Contrast = "T1"
    spacing: Vec3 = (2.0, 2.0, 2.0)
    shape: Shape3 | None = None
    field_of_view: Vec3 = (180.0, 216.0, 200.0)
    orientation: str = "RAS"
    rotation: Vec3 = (0.0, 0.0, 0.0)
    center: Vec3 = (0.0, 0.0, 0.0)
    dtype: str = "float32"
    intensity_scale: float | None = None
    bias: float = 0.2
    noise: float = 0.03
    noise_kind: NoiseKind = "rician"
    partial_volume: bool = True
    neck: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("spacing", "field_of_view", "rotation", "center"):
            object.__setattr__(self, name, _vec3(getattr(self, name), name))
        object.__setattr__(self, "orientation", _check_orientation(self.orientation))
        if self.shape is not None:
            object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        self._check_grid()
        self._check_signal()

    def _check_grid(self) -> None:
        if min(self.spacing) <= 0 or min(self.field_of_view) <= 0:
            raise PhantomError(f"Expected positive spacing and field of view, found {self.spacing}, "
                               f"{self.field_of_view}.")
        if self.shape is not None and (len(self.shape) != 3 or min(self.shape) < 1):
            raise PhantomError(f"Expected three positive voxel counts for shape, found {self.shape}.")
        if max(abs(a) for a in self.rotation) >= 45.0:
            raise PhantomError(f"Expected rotation angles below 45 degrees, found {self.rotation}; "
                               "larger angles change the orientation code, pick another orientation.")

    def _check_signal(self) -> None:
        if self.contrast not in MEANS:
            raise PhantomError(f"Expected contrast in {sorted(MEANS)}, found {self.contrast!r}.")
        if self.dtype not in DTYPE_SCALE:
            raise PhantomError(f"Expected dtype in {sorted(DTYPE_SCALE)}, found {self.dtype!r}.")
        if self.noise_kind not in ("rician", "gaussian"):
            raise PhantomError(f"Expected noise_kind 'rician' or 'gaussian', found {self.noise_kind!r}.")
        if not (0.0 <= self.bias < 1.0 and self.noise >= 0.0):
            raise PhantomError(f"Expected 0 <= bias < 1 and noise >= 0, found bias {self.bias}, "
                               f"noise {self.noise}.")

    @property
    def world_shape(self) -> Shape3:
        """Voxels along x, y, z (before the axes are put into ``orientation``)."""
        if self.shape is not None:
            return self.shape
        n = [max(1, round(f / s)) for f, s in zip(self.field_of_view, self.spacing, strict=True)]
        return n[0], n[1], n[2]

    @property
    def scale(self) -> float:
        """Value of the brightest tissue mean in the output image."""
        return DTYPE_SCALE[self.dtype] if self.intensity_scale is None else float(self.intensity_scale)

    def as_dict(self) -> dict[str, Any]:
        """Return the spec as a JSON-serialisable dictionary."""
        return dataclasses.asdict(self)


@dataclass(eq=False)
class Phantom:
    """A sampled phantom: the image and its truth, all on one grid.

    Attributes
    ----------
    image : Image
        Signal, shape (I, J, K) in ``spec.orientation``, dtype ``spec.dtype``.
    tissue : LabelImage
        0 background, 1 CSF (ventricles included), 2 GM (deep nuclei included), 3 WM.
    structures : LabelImage
        FreeSurfer ids: 2/41 cerebral WM, 3/42 cortex, 4/43 lateral ventricles,
        10/49 thalamus, 11/50 caudate, 12/51 putamen, 24 CSF; left is world x < 0.
    brain_mask : LabelImage
        1 where tissue > 0 (CSF, GM and WM inside the skull), else 0.
    spec : PhantomSpec
        The spec it was sampled from.

    """

    image: Image
    tissue: LabelImage
    structures: LabelImage
    brain_mask: LabelImage
    spec: PhantomSpec

    def tissue_volumes_ml(self) -> dict[str, float]:
        """Return the truth volume of CSF, GM and WM in mL (voxel counts x voxel volume)."""
        counts = np.bincount(self.tissue.array.ravel(), minlength=4)
        vox = self.tissue.voxel_volume_ml
        return {name: float(counts[i]) * vox for i, name in ((1, "CSF"), (2, "GM"), (3, "WM"))}


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
    ``sdf < m`` implies ``k0 < 1 + m / min(a)`` (what :func:`_candidates` relies on).
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
class _Anatomy:
    """The seeded anatomy: envelope, its deformation, sulci, deep structures, bias field."""

    envelope: _Ellipsoid
    deform: _WaveField
    sulci: _WaveField
    deep: tuple[tuple[Compartment, _Ellipsoid], ...]
    bias: _BiasField

    @classmethod
    def from_seed(cls, seed: int) -> _Anatomy:
        shape_rng, bias_rng = _rng(seed, _STREAM_ANATOMY), _rng(seed, _STREAM_BIAS)
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


def _sulcal_sdf(p: Points, depth: Floats, limit: Floats, anatomy: _Anatomy) -> Floats:
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


def _pial_sdf(p: Points, envelope: Floats, wobble: Floats, anatomy: _Anatomy, width: float) -> Floats:
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


def _paint_brain(canvas: _Canvas, p: Points, envelope: Floats, wobble: Floats, anatomy: _Anatomy,
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


def _deep_box(anatomy: _Anatomy, margin: float) -> tuple[Floats, Floats]:
    """Corners (lo, hi) of a box holding every deep structure, ``margin`` mm to spare."""
    lo = np.min([e.center - e.axes - np.float32(e.bend) for _, e in anatomy.deep], axis=0)
    hi = np.max([e.center + e.axes for _, e in anatomy.deep], axis=0)
    return lo - np.float32(margin), hi + np.float32(margin)


def _in_box(p: Points, lo: Floats, hi: Floats) -> npt.NDArray[np.bool_]:
    inside: npt.NDArray[np.bool_] = (p[0] > lo[0]) & (p[0] < hi[0])
    inside &= (p[1] > lo[1]) & (p[1] < hi[1])
    inside &= (p[2] > lo[2]) & (p[2] < hi[2])
    return inside


def _paint(p: Points, anatomy: _Anatomy, spec: PhantomSpec) -> _Canvas:
    """Paint every compartment at points ``p`` (3, N)."""
    width = _pv_width(spec)
    canvas = _Canvas(p.shape[1], MEANS[spec.contrast], width if spec.partial_volume else None)
    wobble = anatomy.deform(p)
    envelope = anatomy.envelope.sdf(p) + np.float32(LAYOUT.deform_mm) * wobble
    _paint_head(canvas, p, envelope, neck=spec.neck)
    inner = np.flatnonzero(envelope < np.float32(width))
    sub = canvas.take(inner)
    _paint_brain(sub, p[:, inner], envelope[inner], wobble[inner], anatomy, width)
    canvas.put(inner, sub)
    return canvas


def _pv_width(spec: PhantomSpec) -> float:
    """Width (mm) of the partial-volume ramp: the geometric mean voxel size."""
    return float(np.prod(spec.spacing) ** (1.0 / 3.0))


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


def _candidates(grid: _Grid, anatomy: _Anatomy, spec: PhantomSpec) -> tuple[Index, Index, Index]:
    """Indices of the voxels any region may cover (a conservative bound, see :func:`_ellipsoid_sdf`)."""
    width = _pv_width(spec)
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
    perm = tuple(next(w for w, pair in enumerate(_AXIS_LETTERS) if c in pair) for c in code)
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


def _sample(grid: _Grid, anatomy: _Anatomy, spec: PhantomSpec) -> _Sampled:
    """Paint the candidate voxels chunk by chunk (small chunks stay in cache)."""
    out = _Sampled(np.zeros(grid.size, np.uint8), np.zeros(grid.size, bool), np.zeros(grid.size, np.float32))
    i, j, k = _candidates(grid, anatomy, spec)
    flat = np.ravel_multi_index((i, j, k), grid.shape)
    with np.errstate(all="raise", under="ignore"):
        for start in range(0, len(flat), _CHUNK_POINTS):
            part = slice(start, start + _CHUNK_POINTS)
            p = grid.points((i[part], j[part], k[part]))
            canvas = _paint(p, anatomy, spec)
            where = flat[part]
            out.comp[where] = canvas.label
            out.signal[where] = canvas.signal * anatomy.bias(p, spec.bias)
            out.left[where] = p[0] < 0
    return out


def _add_noise(signal: Floats, spec: PhantomSpec, brightest: float) -> Floats:
    """Add Rician or Gaussian noise of sd ``spec.noise * brightest`` to the whole grid."""
    if spec.noise == 0:
        return signal
    rng = _rng(spec.seed, _STREAM_NOISE)
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
    arrays = _truth_arrays(_sample(grid, _Anatomy.from_seed(spec.seed), spec), spec)
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
