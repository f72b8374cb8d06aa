"""Brain masks by registering simulated whole heads with known brains to the scan (multi-atlas).

A small library of *head atlases* ships with the package (``mriquant/data/heads/``): T1-weighted heads
simulated with :func:`mriquant.simulate.brainweb.simulate` (no noise, no bias, 2 mm) from BrainWeb anatomical
models, each with the fraction of every BrainWeb class (CSF, GM, WM, fat, muscle, skin, skull, vessels,
dura, marrow) in each 2 mm voxel and its brain mask (GM + WM + CSF inside the dura). For each atlas:

1. affine registration of the T1 head to the scan (ANTs, Mattes mutual information: any contrast);
2. the atlas classes, carried onto the scan, give the scan's median intensity of each class (inside the
   eroded class regions);
3. if that ordering is T1-like (WM > GM > CSF) the simulated T1 head is refined onto the scan with a coarse
   SyN (Mattes); otherwise (T2, PD, FLAIR, ...) the atlas is *re-rendered in the scan's contrast*
   (sum over classes of fraction x the scan's class intensity, :func:`mriquant.simulate.render.render_fractions`)
   and refined with SyN on local
   cross-correlation, which needs matching intensities but is much sharper than mutual information
   (measured on a held-out BrainWeb anatomy, PD 3 % noise: Dice 0.949 -> 0.977; T2: 0.970 -> 0.971;
   for T1 the simulated T1 head stays better, 0.975 vs 0.957);
4. the atlas brain mask is warped onto the native grid.

The mean of the warped masks is the brain probability. No network is involved, so it works on real
scans whatever the training of the CNN, at the cost of 5-6.5 s of registration per atlas (1 mm head, 2 cores).

Build the library (build time, :mod:`mriquant.training.heads`; reads ``../shared/data/brainweb-crisp``)::

    python -m mriquant.training.heads --out src/mriquant/data/heads/brainweb_heads_2mm.npz
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mriquant.core.ants_bridge import ants_module, ants_seed, from_ants, to_ants
from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage
from mriquant.simulate.render import render_fractions

__all__ = ["HeadAtlases", "atlas_brain_probability", "load_head_atlases"]

#: The shipped library (built by :mod:`mriquant.training.heads`).
HEADS_FILE = "brainweb_heads_2mm.npz"
#: Class indices (BrainWeb crisp) used to tell a T1-like contrast.
CSF, GM, WM = 1, 2, 3
#: ANTs affine iterations, shrink factors and smoothing (voxels) per level: 12, 8 and 4 mm on the 2 mm grid. ANTs'
#: defaults (2100, 1200, 1200, 10) cost 0.8 s more for the same masks on the validation anatomies 41 and 44; its
#: 4th level (2 mm) with 0 iterations cost 0.3 s for Dice 0.9794 / min 0.9698 vs 0.9793 / 0.9690 without it
#: (anatomies 41-44, 16 scans: within the run-to-run spread of two threads).
AFFINE_ITERATIONS, AFFINE_SHRINK, AFFINE_SMOOTHING = (500, 250, 50), (6, 4, 2), (3, 2, 1)
#: SyN iterations at 8, 4 and 2 mm and the Mattes histogram bins (T1-like scans); 30 rather than 20 at 4 mm
#: raised the validation T1 at 9 % noise from 0.964 / 0.971 to 0.967 / 0.973 for 0.2 s.
MATTES_ITERATIONS, MATTES_BINS = (40, 30, 0), 32
#: SyN iterations and the cross-correlation radius (voxels) for re-rendered atlases. Radius 1 is 2.5x
#: cheaper per iteration than 2 and as accurate (validation T2/PD: Dice 0.9754 at 8.0 s vs 0.9739 at 18 s).
CC_ITERATIONS, CC_RADIUS = (20, 15, 0), 1
#: Margin (mm) kept around the affinely carried atlas brain (CSF, GM, WM) when the SyN's fixed image is cropped.
#: Validation anatomies 41-44 (16 scans), Dice mean / min and seconds per scan: the previous crop (carried head
#: + 16 mm) 0.9796 / 0.9690, 8.3 s; brain + 12 mm 0.9794 / 0.9700, 7.7 s; + 8 mm 0.9794 / 0.9693, 6.9 s; + 4 mm
#: 0.9791 / 0.9672, 6.5 s. 8 mm cost 0.003-0.005 on a larger head (BrainWeb 06): the SyN damps its field near the
#: crop's edge, which then lies close to the brain.
BRAIN_MARGIN_MM = 12.0


@dataclass(frozen=True)
class HeadAtlases:
    """The head-atlas library: simulated heads with their class and brain fractions, 2 mm, padded to one shape.

    The file keeps every atlas under its own keys (``image{i}``, ``brain{i}``, ``fractions{i}``,
    ``affine{i}``), so an atlas is decompressed only when first used (the default strip uses one of three).

    Attributes
    ----------
    path : pathlib.Path
        The ``.npz`` file.
    names : tuple of str
        Source anatomies, in atlas order.
    """

    path: Path
    names: tuple[str, ...]

    def _arrays(self, i: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
        if not 0 <= i < len(self.names):
            raise IndexError(f"atlas {i} of {len(self.names)}")
        return _read_atlas(str(self.path), i)

    def atlas(self, i: int) -> tuple[Image, Image]:
        """The ``i``-th head (T1-weighted, white matter ~1) and its brain fraction (0-1) as images."""
        image, brain, _, affine = self._arrays(i)
        head = Image(image.astype(np.float32), affine.copy(), {"source": f"head atlas {self.names[i]}"})
        fraction = Image(brain.astype(np.float32) / np.float32(255.0), affine.copy(), {"source": "brain fraction"})
        return head, fraction

    def class_fractions(self, i: int) -> npt.NDArray[np.float32]:
        """Fraction (0-1) of every BrainWeb class in each voxel of atlas ``i``, shape (C, X, Y, Z)."""
        return np.asarray(self._arrays(i)[2], dtype=np.float32) / np.float32(255.0)

    def classes(self, i: int) -> LabelImage:
        """The majority class of each voxel of atlas ``i``."""
        _, _, fractions, affine = self._arrays(i)
        return LabelImage(np.argmax(fractions, axis=0).astype(np.int32), affine.copy())


#: Keys of atlas ``i`` in the library file.
ATLAS_KEYS = ("image", "brain", "fractions", "affine")


@lru_cache(maxsize=4)
def _read_atlas(path: str, i: int) -> tuple[npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any], npt.NDArray[Any]]:
    """Head (float16), brain fraction x 255 (uint8), class fractions x 255 (uint8) and affine of atlas ``i``."""
    with np.load(path, allow_pickle=False) as data:
        image, brain, fractions, affine = (data[f"{key}{i}"] for key in ATLAS_KEYS)
    for array in (image, brain, fractions, affine):
        array.flags.writeable = False  # shared by every caller through the cache
    return image, brain, fractions, affine.astype(np.float64)


@lru_cache(maxsize=1)
def load_head_atlases(path: str | None = None) -> HeadAtlases:
    """Open the head-atlas library (the shipped one by default); atlases are read on first use."""
    file = Path(path) if path else Path(__file__).resolve().parents[1] / "data" / "heads" / HEADS_FILE
    if not file.is_file():
        raise InputError(f"Expected the head-atlas library at {file}, found no file; reinstall mriquant.")
    with np.load(file, allow_pickle=False) as data:
        keys = set(data.files)
        names = tuple(json.loads(bytes(data["names"]).decode())) if "names" in keys else ()
    missing = sorted(f"{key}{i}" for i in range(len(names)) for key in ATLAS_KEYS if f"{key}{i}" not in keys)
    if not names or missing:
        raise InputError(
            f"Expected a head-atlas library with 'names' and {', '.join(k + '{i}' for k in ATLAS_KEYS)} per atlas, "
            f"found keys {sorted(keys)} in {file}; rebuild it with python -m mriquant.training.heads."
        )
    return HeadAtlases(file, names)


def _smooth_fixed(image: Image, spacing_mm: float) -> Any:
    """The scan smoothed to ``spacing_mm`` and resampled (linear) onto a grid of that spacing, as an ANTs image.

    The grid is the one ``ants.resample_image`` makes (the scan's axes and first voxel centre,
    ``round(n x native / spacing_mm)`` voxels per axis) and so are the values; scipy fills it 6x faster
    (0.05 vs 0.3 s on a 1 mm head).
    """
    from mriquant.core.geometry import resample_to, smooth_to

    native = np.asarray(image.spacing, dtype=np.float64)
    size = np.floor(np.asarray(image.shape) * native / spacing_mm + 0.5).astype(int)
    affine = image.affine @ np.diag([*(spacing_mm / native), 1.0])
    smooth = image.with_array(smooth_to(image, spacing_mm))
    return to_ants(resample_to(smooth, (int(size[0]), int(size[1]), int(size[2])), affine, order=1))


def _interior(labels: npt.NDArray[np.int32]) -> npt.NDArray[np.bool_]:
    """Voxels whose six face neighbours carry their own label (what a cross erosion of each class keeps)."""
    inner = np.zeros(labels.shape, dtype=bool)
    core = labels[1:-1, 1:-1, 1:-1]
    same = np.ones(core.shape, dtype=bool)
    for axis in range(3):  # a loop over the 3 axes, each a vectorised comparison with both neighbours
        for shift in (-1, 1):
            same &= np.roll(labels, shift, axis=axis)[1:-1, 1:-1, 1:-1] == core
    inner[1:-1, 1:-1, 1:-1] = same
    return inner


def _class_intensities(fixed: Any, classes: Any, n_classes: int) -> npt.NDArray[np.float32]:
    """Median intensity of the scan in each (eroded) atlas class region carried onto it; 0 when absent.

    A class's region is eroded by one voxel (6-neighbour cross) to keep partial volumes out; a class with
    50 voxels or fewer left keeps its whole region.
    """
    values, labels = fixed.numpy(), np.rint(classes.numpy()).astype(np.int32)
    inner = _interior(labels)
    core_counts = np.bincount(labels[inner].ravel(), minlength=n_classes)
    out = np.zeros(n_classes, np.float32)
    for c in range(1, n_classes):  # a loop over ~12 classes, each vectorised
        use = (labels == c) & inner if core_counts[c] > 50 else labels == c
        if np.any(use):
            out[c] = float(np.median(values[use]))
    return out


def _refine(fixed: Any, moving: Any, affine: str, metric: str, seed: int, prefix: str) -> list[str]:
    """Coarse SyN (8 and 4 mm levels) from the affine; the forward transform list (warp, affine)."""
    ants = ants_module()


    iterations, sampling = (CC_ITERATIONS, CC_RADIUS) if metric == "CC" else (MATTES_ITERATIONS, MATTES_BINS)
    with ants_seed(seed):
        result = ants.registration(fixed, moving, type_of_transform="SyNOnly", initial_transform=affine,
                                   syn_metric=metric, syn_sampling=sampling, reg_iterations=iterations,
                                   outprefix=prefix + "syn_", verbose=False)  # fmt: skip
    return list(result["fwdtransforms"])


def _brain_box(fixed: Any, carried: Any, margin_mm: float = BRAIN_MARGIN_MM) -> Any:
    """``fixed`` cropped to the affinely carried atlas brain plus ``margin_mm`` (the SyN needs no neck or air).

    ``carried`` holds the atlas classes on ``fixed``'s grid; the brain is CSF, GM and WM. With nothing carried,
    or a box as large as the image, ``fixed`` itself is returned.
    """
    ants = ants_module()

    from mriquant.core.geometry import bounding_box

    classes = np.rint(carried.numpy())
    brain = (classes >= CSF) & (classes <= WM)
    if not brain.any():
        return fixed
    margin = np.ceil(margin_mm / np.asarray(fixed.spacing, dtype=np.float64)).astype(int)
    box = bounding_box(brain, margin)
    lower, upper = [s.start for s in box], [s.stop for s in box]
    if lower == [0, 0, 0] and upper == list(fixed.shape):
        return fixed
    return ants.crop_indices(fixed, lower, upper)


def _register_atlas(
    fixed: Any, heads: HeadAtlases, i: int, deformable: bool, seed: int, prefix: str
) -> tuple[list[str], str]:
    """Register atlas ``i`` to the scan; the forward transforms (files under ``prefix``) and the path taken."""
    ants = ants_module()


    head, _ = heads.atlas(i)
    moving = to_ants(head)
    with ants_seed(seed):
        linear = ants.registration(fixed, moving, type_of_transform="Affine", aff_metric="mattes",
                                   aff_iterations=AFFINE_ITERATIONS, aff_shrink_factors=AFFINE_SHRINK,
                                   aff_smoothing_sigmas=AFFINE_SMOOTHING, outprefix=prefix + "affine_",
                                   verbose=False)  # fmt: skip
    affine = list(linear["fwdtransforms"])
    if not deformable:
        return affine, "affine"
    classes = heads.classes(i)
    carried = ants.apply_transforms(fixed, to_ants(classes.with_array(classes.array.astype(np.float32))), affine,
                                    interpolator="nearestNeighbor")  # fmt: skip
    fractions = heads.class_fractions(i)
    lut = _class_intensities(fixed, carried, fractions.shape[0])
    fixed = _brain_box(fixed, carried)
    if lut[WM] > lut[GM] > lut[CSF]:
        return _refine(fixed, moving, affine[0], "mattes", seed, prefix), "T1-like: simulated T1 head, SyN (Mattes)"
    rendered = render_fractions(lut, fractions, head.affine)
    path = "re-rendered in the scan's contrast, SyN (CC)"
    return _refine(fixed, to_ants(rendered), affine[0], "CC", seed, prefix), path


def atlas_brain_probability(
    image: Image, *, atlases: int = 3, deformable: bool = True, seed: int = 20120, library: str | None = None
) -> tuple[Image, dict[str, Any]]:
    """Brain probability on ``image``'s native grid: the mean of the warped atlas brains.

    Parameters
    ----------
    image : Image
        A head scan of any MR contrast.
    atlases : int
        How many atlases of the library to use (the first ``atlases``).
    deformable : bool
        Add a coarse SyN stage after the affine one.
    seed : int
        ANTs random seed.
    library : str, optional
        Another head-atlas file.

    Returns
    -------
    probability : Image
        Native grid, values in [0, 1].
    info : dict
        Atlases used and seconds.
    """
    ants = ants_module()


    heads = load_head_atlases(library)
    n = max(1, min(atlases, len(heads.names)))
    start = time.perf_counter()
    fixed = _smooth_fixed(image, 2.0)
    target = to_ants(image)
    total = np.zeros(image.shape, np.float32)
    paths = []
    # ANTs writes every transform (and the inverse warps) to files: keep them in a folder removed on exit.
    with tempfile.TemporaryDirectory(prefix="mriquant-strip-") as folder:
        for i in range(n):  # a loop over atlases; each registration is vectorised in ANTs
            _, brain = heads.atlas(i)
            transforms, path = _register_atlas(fixed, heads, i, deformable, seed, str(Path(folder) / f"atlas{i}_"))
            paths.append(path)
            warped = ants.apply_transforms(target, to_ants(brain), transforms, interpolator="linear",
                                           defaultvalue=0.0)  # fmt: skip
            total += from_ants(warped, image).array
    probability = image.with_array(np.clip(total / n, 0.0, 1.0).astype(np.float32), source="brain probability")
    info = {"method": "atlas", "atlases": list(heads.names[:n]), "deformable": deformable, "paths": paths,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return probability, info
