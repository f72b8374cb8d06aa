"""A small MR simulator for the BrainWeb crisp anatomical models.

The BrainWeb "20 normal brains" crisp models (Aubert-Broche et al., NeuroImage 32, 2006) label a head at
0.5 mm with 12 classes: 0 background, 1 CSF, 2 GM, 3 WM, 4 fat, 5 muscle, 6 muscle/skin, 7 skull,
8 vessels, 9 around fat, 10 dura, 11 marrow. :func:`simulate` turns such a label map into a scan:

1. every class gets a steady-state signal from its (PD, T1, T2, T2*) through the signal equation of the
   chosen sequence (:data:`SEQUENCES`);
2. partial volume: the class fractions of each output voxel are the block averages of the 0.5 mm labels
   (cached, so repeated simulations of one anatomy cost one weighted sum), and the voxel signal is the
   fraction-weighted sum of the class signals;
3. a smooth multiplicative bias field spanning ``1 - bias/2`` .. ``1 + bias/2`` over the head (so
   ``bias=0.4`` is BrainWeb's "40 % RF inhomogeneity": 0.8 .. 1.2);
4. Rician noise: complex Gaussian noise of standard deviation ``noise`` times the mean signal of the
   brightest brain tissue (CSF, GM or WM), BrainWeb's "percent noise" convention, then the magnitude.

Truth: ``tissue`` is the majority class of each output voxel mapped to 1 CSF / 2 GM / 3 WM (other classes
0), and ``brain_mask`` is "brain fraction (CSF + GM + WM) >= 0.5" with enclosed holes filled. The
vessels class (8) is therefore brain where it is enclosed by brain (deep vessels, about 1 mL) and not
brain where it lies on the surface (sinuses, cortical veins, about 25 mL), which matches what a brain
mask drawn at the dura (the HD-BET / BrainWeb convention) contains.

Examples
--------
>>> labels = read_labels("subject04_crisp_v.mnc.gz")  # doctest: +SKIP
>>> scan = simulate(labels, contrast="T2", noise=0.03, bias=0.2, seed=1)  # doctest: +SKIP
>>> scan.image.shape  # doctest: +SKIP
(181, 217, 181)

"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage

__all__ = [
    "BRAIN_CLASSES",
    "CLASS_NAMES",
    "SEQUENCES",
    "TISSUE_PARAMETERS",
    "ClassCounts",
    "Sequence",
    "SimulatedScan",
    "bias_field",
    "class_counts",
    "class_signals",
    "sequence_signal",
    "simulate",
]

Contrast = Literal["T1", "T2", "PD"]

#: Class names of the crisp models, indexed by label value.
CLASS_NAMES = (
    "background", "CSF", "GM", "WM", "fat", "muscle", "muscle/skin", "skull", "vessels", "around fat",
    "dura", "marrow",
)  # fmt: skip

#: Labels counted as brain (CSF, GM, WM); see the module docstring for vessels.
BRAIN_CLASSES = (1, 2, 3)

#: Per class (PD relative, T1 ms, T2 ms, T2* ms) at 1.5 T, BrainWeb's published values (Aubert-Broche
#: 2006, tissue_mr_parameters). BrainWeb lists skull and vessels as 0; we use the values fitted to
#: BrainWeb's own simulated images (J. E. Hill, STANCE 2015): skull (0.28, 2580, 314.8, 50), vessels
#: (0.87, 900, 180, 58), so the skull is dark but not exactly zero.
TISSUE_PARAMETERS: npt.NDArray[np.float64] = np.array(
    [
        [0.0, 1.0, 1.0, 1.0],  # background (PD 0: no signal)
        [1.0, 2569.0, 329.0, 58.0],  # CSF
        [0.86, 833.0, 83.0, 69.0],  # GM
        [0.77, 500.0, 70.0, 61.0],  # WM
        [1.0, 350.0, 70.0, 58.0],  # fat
        [1.0, 900.0, 47.0, 30.0],  # muscle
        [1.0, 2569.0, 329.0, 58.0],  # muscle/skin
        [0.28, 2580.0, 314.8, 50.0],  # skull
        [0.87, 900.0, 180.0, 58.0],  # vessels
        [0.77, 500.0, 70.0, 61.0],  # around fat (connective)
        [1.0, 2569.0, 329.0, 58.0],  # dura
        [0.77, 500.0, 70.0, 61.0],  # marrow
    ]
)


@dataclass(frozen=True)
class Sequence:
    """Acquisition parameters of one simulated contrast.

    Attributes
    ----------
    kind : {"spgr", "se"}
        Spoiled gradient echo (uses T2*) or spin echo (uses T2).
    tr_ms, te_ms : float
        Repetition and echo times in ms.
    flip_deg : float
        Flip angle in degrees (spin echo: 90).

    """

    kind: Literal["spgr", "se"]
    tr_ms: float
    te_ms: float
    flip_deg: float = 90.0


#: The three BrainWeb-like protocols: T1 (SPGR 18/10 ms, 30 deg), T2 (SE 3300/120), PD (SE 3300/35).
SEQUENCES: dict[str, Sequence] = {
    "T1": Sequence("spgr", 18.0, 10.0, 30.0),
    "T2": Sequence("se", 3300.0, 120.0),
    "PD": Sequence("se", 3300.0, 35.0),
}


@dataclass(frozen=True)
class SimulatedScan:
    """A simulated scan and its truth, all on the same grid.

    Attributes
    ----------
    image : Image
        Magnitude image (float32, arbitrary units: class signals with PD = 1 give about 0.1-1).
    tissue : LabelImage
        1 CSF, 2 GM, 3 WM (majority class of the voxel), 0 elsewhere.
    brain_mask : LabelImage
        1 inside the brain (CSF + GM + WM fraction >= 0.5, holes filled), 0 outside.

    """

    image: Image
    tissue: LabelImage
    brain_mask: LabelImage


def sequence_signal(parameters: npt.NDArray[np.float64], sequence: Sequence) -> npt.NDArray[np.float64]:
    """Steady-state signal of tissues ``parameters`` (N, 4: PD, T1 ms, T2 ms, T2* ms) for ``sequence``.

    Spoiled gradient echo: ``PD sin(a) (1 - E1) / (1 - cos(a) E1) exp(-TE / T2*)``; spin echo:
    ``PD (1 - E1) exp(-TE / T2)``, with ``E1 = exp(-TR / T1)``. Returns shape (N,).
    """
    pd, t1, t2, t2s = np.asarray(parameters, dtype=np.float64).T
    e1 = np.exp(-sequence.tr_ms / t1)
    if sequence.kind == "spgr":
        a = np.deg2rad(sequence.flip_deg)
        signal = pd * np.sin(a) * (1.0 - e1) / (1.0 - np.cos(a) * e1) * np.exp(-sequence.te_ms / t2s)
    else:
        signal = pd * (1.0 - e1) * np.exp(-sequence.te_ms / t2)
    return np.asarray(signal, dtype=np.float64)


def class_signals(contrast: Contrast | str) -> npt.NDArray[np.float64]:
    """Return the noiseless signal of every crisp class for ``contrast``, shape (12,)."""
    if contrast not in SEQUENCES:
        raise InputError(f"Expected contrast 'T1', 'T2' or 'PD', found {contrast!r}; pick one of those.")
    return sequence_signal(TISSUE_PARAMETERS, SEQUENCES[contrast])


@dataclass(frozen=True)
class ClassCounts:
    """Class voxel counts per output voxel: ``counts[c]`` is (I, J, K), uint8/uint16, in 0..factor**3."""

    counts: npt.NDArray[np.unsignedinteger]
    factor: int
    affine: npt.NDArray[np.float64]


_CACHE: OrderedDict[str, ClassCounts] = OrderedDict()
_CACHE_SIZE = 4


def _block_factor(labels: LabelImage, resolution_mm: float) -> int:
    spacing = np.asarray(labels.spacing)
    factors = resolution_mm / spacing
    factor = round(float(factors[0]))
    if factor < 1 or not np.allclose(factors, factor, atol=1e-3):
        raise InputError(
            f"Expected resolution_mm to be a whole multiple of the label spacing {labels.spacing} mm, found "
            f"{resolution_mm} mm; pick e.g. {2 * float(spacing[0]):g} mm."
        )
    return factor


def _block_counts(array: npt.NDArray[np.int32], factor: int) -> npt.NDArray[np.unsignedinteger]:
    """Count each class (0..11) in every ``factor``^3 block; the array is cropped to whole blocks."""
    shape = tuple(s // factor for s in array.shape)
    crop = array[: shape[0] * factor, : shape[1] * factor, : shape[2] * factor].astype(np.uint8)
    blocks = crop.reshape(shape[0], factor, shape[1], factor, shape[2], factor).transpose(0, 2, 4, 1, 3, 5)
    blocks = np.ascontiguousarray(blocks).reshape(*shape, factor**3)  # one copy; block voxels last
    dtype = np.uint8 if factor**3 <= 255 else np.uint16
    counts = np.zeros((len(CLASS_NAMES), *shape), dtype)
    for value in range(len(CLASS_NAMES)):  # 12 vectorised passes, one per class
        counts[value] = (blocks == value).sum(axis=-1, dtype=dtype)
    return counts


def _block_affine(affine: npt.NDArray[np.float64], factor: int) -> npt.NDArray[np.float64]:
    """Affine of the block-averaged grid: voxel (0,0,0) is the centre of the first block."""
    scale = np.diag([float(factor)] * 3 + [1.0])
    scale[:3, 3] = (factor - 1) / 2.0
    return np.asarray(affine @ scale, dtype=np.float64)


def class_counts(labels: LabelImage, factor: int) -> ClassCounts:
    """How many label voxels of each class every ``factor``^3 block of ``labels`` holds (cached per anatomy)."""
    array = labels.array
    if array.min() < 0 or array.max() >= len(CLASS_NAMES):
        raise InputError(
            f"Expected BrainWeb crisp labels 0..11, found values {int(array.min())}..{int(array.max())}; "
            "pass a *_crisp_v model."
        )
    digest = hashlib.blake2b(np.ascontiguousarray(array).data, digest_size=16)
    digest.update(labels.affine.tobytes() + bytes([factor]))
    key = digest.hexdigest()
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key]
    result = ClassCounts(_block_counts(array, factor), factor, _block_affine(labels.affine, factor))
    _CACHE[key] = result
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result


def _weighted_sum(counts: npt.NDArray[np.unsignedinteger], weights: npt.NDArray[np.float64]) -> npt.NDArray[np.float32]:
    """Return ``sum_c weights[c] * counts[c]`` as float32, shape counts.shape[1:]."""
    out = np.zeros(counts.shape[1:], np.float32)
    for c in np.flatnonzero(weights):
        out += np.float32(weights[c]) * counts[c]
    return out


def bias_field(shape: tuple[int, int, int], amplitude: float, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """A smooth multiplicative field on ``shape`` spanning ``1 - amplitude/2`` .. ``1 + amplitude/2``.

    The field is a random combination of low-order cosines (at most one period across the volume).
    """
    if amplitude <= 0:
        return np.ones(shape, np.float32)
    axes = [np.linspace(0.0, np.pi, n, dtype=np.float32) for n in shape]
    field = np.zeros(shape, np.float32)
    for freq in np.ndindex(3, 3, 3):
        if sum(freq) == 0 or sum(freq) > 3:
            continue
        terms = [np.cos(f * ax + rng.uniform(0, np.pi)) for f, ax in zip(freq, axes, strict=True)]
        field += np.float32(rng.normal()) * (
            terms[0][:, None, None] * terms[1][None, :, None] * terms[2][None, None, :]
        )
    lo, hi = float(field.min()), float(field.max())
    return np.asarray(1.0 + amplitude * ((field - lo) / max(hi - lo, 1e-6) - 0.5), dtype=np.float32)


def _rician(signal: npt.NDArray[np.float32], sd: float, rng: np.random.Generator) -> npt.NDArray[np.float32]:
    if sd <= 0:
        return signal
    real = signal + rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sd)
    imag = rng.standard_normal(signal.shape, dtype=np.float32) * np.float32(sd)
    return np.asarray(np.hypot(real, imag), dtype=np.float32)


def _truth(fr: ClassCounts) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.uint8]]:
    majority = np.argmax(fr.counts, axis=0)
    tissue = np.where(np.isin(majority, BRAIN_CLASSES), majority, 0).astype(np.int32)
    brain_count = fr.counts[1].astype(np.int32) + fr.counts[2] + fr.counts[3]
    brain = ndimage.binary_fill_holes(2 * brain_count >= fr.factor**3)
    return tissue, brain.astype(np.uint8)


def simulate(
    labels: LabelImage,
    *,
    contrast: Contrast | str = "T1",
    noise: float = 0.03,
    bias: float = 0.2,
    resolution_mm: float = 1.0,
    seed: int = 0,
) -> SimulatedScan:
    """Simulate a T1-, T2- or PD-weighted scan of a BrainWeb crisp model.

    Parameters
    ----------
    labels : LabelImage
        Crisp model, values 0..11 (usually 0.5 mm, shape (362, 434, 362)).
    contrast : {"T1", "T2", "PD"}
        Protocol from :data:`SEQUENCES`.
    noise : float
        Noise standard deviation as a fraction of the brightest brain tissue's mean (0.03 = "3 %").
    bias : float
        Peak-to-peak amplitude of the multiplicative bias field (0.4 = 0.8 .. 1.2).
    resolution_mm : float
        Output voxel size in mm, a whole multiple of the label spacing (partial volume by block averaging;
        a trailing partial block is dropped).
    seed : int
        Seed of the bias field and noise; equal seeds give identical scans.

    Returns
    -------
    SimulatedScan
        Image, tissue truth and brain mask on the output grid.

    """
    signals = class_signals(contrast)
    if noise < 0 or bias < 0 or bias >= 2:
        raise InputError(f"Expected noise >= 0 and 0 <= bias < 2, found noise={noise}, bias={bias}.")
    fr = class_counts(labels, _block_factor(labels, resolution_mm))
    rng = np.random.default_rng(seed)
    clean = _weighted_sum(fr.counts, signals / fr.factor**3)
    field = bias_field(clean.shape, bias, rng)
    reference = float(signals[list(BRAIN_CLASSES)].max())
    image = _rician(clean * field, noise * reference, rng)
    tissue, brain = _truth(fr)
    meta = {"source": f"brainweb-sim {contrast} n{noise:g} b{bias:g} s{seed}", "contrast": contrast}
    return SimulatedScan(
        Image(image, fr.affine, meta),
        LabelImage(tissue, fr.affine.copy(), {"source": "brainweb tissue truth"}),
        LabelImage(brain.astype(np.int32), fr.affine.copy(), {"source": "brainweb brain truth"}),
    )
