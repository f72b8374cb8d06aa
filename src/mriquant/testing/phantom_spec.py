"""What a phantom is: its spec (grid, contrast, voxel type, bias, noise, seed), compartments and result.

:class:`PhantomSpec` says what to sample and :class:`Phantom` holds what :func:`mriquant.testing.phantom.make_phantom`
sampled; :class:`Compartment` and :data:`MEANS` are the regions the anatomy
(:mod:`mriquant.testing.phantom_anatomy`) paints and their signal in each contrast.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

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
AXIS_LETTERS = ("RL", "AP", "SI")

#: All 48 three-letter orientation codes (6 axis orders x 8 sign patterns), "RAS" first.
ORIENTATION_CODES: tuple[str, ...] = tuple(
    "".join(AXIS_LETTERS[axis][sign] for axis, sign in zip(perm, signs, strict=True))
    for perm in itertools.permutations(range(3))
    for signs in itertools.product((0, 1), repeat=3)
)

#: Independent random streams drawn from one seed.
STREAM_ANATOMY, STREAM_BIAS, STREAM_NOISE = 0, 1, 2


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



def rng_stream(seed: int, stream: int) -> np.random.Generator:
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
    axes = sorted(next((i for i, p in enumerate(AXIS_LETTERS) if c in p), -1) for c in code)
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
