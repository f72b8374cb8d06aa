"""Brain masks by registering simulated whole heads with known brains to the scan (multi-atlas).

A small library of *head atlases* ships with the package (``mriquant/data/heads/``): T1-weighted heads
simulated with :func:`mriquant.testing.brainweb.simulate` (no noise, no bias, 2 mm) from BrainWeb anatomical
models, each with its brain mask (GM + WM + CSF inside the dura, partial-volume fractions). Each atlas head
is registered to the scan (ANTs: affine, then a coarse SyN; Mattes mutual information, so T2/PD/FLAIR
scans register too) and its brain fraction map warped onto the native grid; the mean of the warped maps is
the brain probability. No network is involved, so it works on real scans whatever the training of the
CNN, at the cost of ~10 s of registration per atlas.

Build the library (documented command, reads ``../shared/data/brainweb-crisp``)::

    python -m mriquant.preprocess.skullstrip_atlas --out src/mriquant/data/heads/brainweb_heads_2mm.npz
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage

__all__ = ["HeadAtlases", "atlas_brain_probability", "load_head_atlases"]

#: The shipped library.
HEADS_FILE = "brainweb_heads_2mm.npz"
#: BrainWeb anatomies in the library: none of the benchmark's held-out subjects (04, 05, 06) nor the
#: skull-strip CNN's validation subject (44).
HEAD_SUBJECTS = (18, 20, 38, 41, 42)


@dataclass(frozen=True, eq=False)
class HeadAtlases:
    """Simulated heads and their brain fractions on one 2 mm grid per atlas.

    Attributes
    ----------
    images : numpy.ndarray, float16, shape (N, X, Y, Z)
        T1-weighted heads (white matter ~1).
    brains : numpy.ndarray, uint8, shape (N, X, Y, Z)
        Brain fraction x 255.
    affines : numpy.ndarray, shape (N, 4, 4)
        Voxel -> RAS+ mm of each atlas.
    names : tuple of str
        Source anatomies.
    """

    images: npt.NDArray[np.float16]
    brains: npt.NDArray[np.uint8]
    affines: npt.NDArray[np.float64]
    names: tuple[str, ...]

    def atlas(self, i: int) -> tuple[Image, Image]:
        """The ``i``-th head and its brain fraction (0-1) as images."""
        affine = self.affines[i].copy()
        head = Image(self.images[i].astype(np.float32), affine, {"source": f"head atlas {self.names[i]}"})
        brain = Image(self.brains[i].astype(np.float32) / 255.0, affine.copy(), {"source": "brain fraction"})
        return head, brain


@lru_cache(maxsize=1)
def load_head_atlases(path: str | None = None) -> HeadAtlases:
    """Read the head-atlas library (the shipped one by default)."""
    file = Path(path) if path else Path(__file__).resolve().parents[1] / "data" / "heads" / HEADS_FILE
    if not file.is_file():
        raise InputError(f"Expected the head-atlas library at {file}, found no file; reinstall mriquant.")
    with np.load(file, allow_pickle=False) as data:
        names = tuple(json.loads(bytes(data["names"]).decode()))
        return HeadAtlases(data["images"], data["brains"], data["affines"].astype(np.float64), names)


def _smooth_fixed(image: Image, spacing_mm: float) -> Any:
    """The scan smoothed to ``spacing_mm`` and resampled onto an isotropic grid, as an ANTs image."""
    from mriquant.preprocess.bias import to_ants
    from mriquant.preprocess.skullstrip import _smooth_to

    smooth = image.with_array(_smooth_to(image, spacing_mm))
    return to_ants(smooth).resample_image((spacing_mm,) * 3, use_voxels=False, interp_type=0)


def _register(fixed: Any, moving: Any, deformable: bool, seed: int) -> list[str]:
    """Affine (+ coarse SyN) registration of an atlas head to the scan; the forward transform list."""
    import ants

    from mriquant.preprocess.register import _ants_seed

    with _ants_seed(seed):
        if deformable:
            result = ants.registration(fixed, moving, type_of_transform="SyN", syn_metric="mattes",
                                       reg_iterations=(40, 20, 0), aff_metric="mattes")  # fmt: skip
        else:
            result = ants.registration(fixed, moving, type_of_transform="Affine", aff_metric="mattes")
    return list(result["fwdtransforms"])


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
    import ants

    from mriquant.preprocess.bias import from_ants, to_ants

    heads = load_head_atlases(library)
    n = max(1, min(atlases, len(heads.names)))
    start = time.perf_counter()
    fixed = _smooth_fixed(image, 2.0)
    target = to_ants(image)
    total = np.zeros(image.shape, np.float32)
    for i in range(n):  # a loop over atlases; each registration is vectorised in ANTs
        head, brain = heads.atlas(i)
        transforms = _register(fixed, to_ants(head), deformable, seed)
        warped = ants.apply_transforms(target, to_ants(brain), transforms, interpolator="linear", defaultvalue=0.0)
        total += from_ants(warped, image).array
        for path in transforms:
            Path(path).unlink(missing_ok=True)
    probability = image.with_array(np.clip(total / n, 0.0, 1.0).astype(np.float32), source="brain probability")
    info = {"method": "atlas", "atlases": list(heads.names[:n]), "deformable": deformable,
            "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    return probability, info


# ----------------------------------------------------------------------------------------------------------------------
# building the library


def _head(subject: int, data: Path) -> tuple[Image, LabelImage]:
    from mriquant.core.geometry import reorient
    from mriquant.io import read_labels
    from mriquant.testing.brainweb import simulate

    labels = read_labels(data / "brainweb-crisp" / f"subject{subject:02d}_crisp_v.mnc.gz")
    sim = simulate(labels, contrast="T1", noise=0.0, bias=0.0, resolution_mm=2.0, seed=0)
    image = reorient(sim.image, "RAS")
    wm = reorient(sim.tissue, "RAS").array == 3
    image = image.with_array((image.array / np.float32(image.array[wm].mean())).astype(np.float32))
    return image, reorient(sim.brain_mask, "RAS")


def _brain_fraction(brain: LabelImage, image: Image) -> npt.NDArray[np.uint8]:
    """The simulated brain mask, smoothed by half a voxel (its partial-volume edge), x 255."""
    from scipy import ndimage

    fraction = ndimage.gaussian_filter(brain.array.astype(np.float32), 0.5)
    return np.asarray(np.rint(np.clip(fraction, 0, 1) * 255), dtype=np.uint8)


def build(out: Path, data: Path, subjects: tuple[int, ...] = HEAD_SUBJECTS) -> Path:
    """Simulate the heads of ``subjects`` and write the library to ``out`` (atomic)."""
    heads = [_head(s, data) for s in subjects]
    shape = np.max([h.shape for h, _ in heads], axis=0)
    images = np.zeros((len(heads), *shape), np.float16)
    brains = np.zeros((len(heads), *shape), np.uint8)
    for i, (head, brain) in enumerate(heads):
        x, y, z = head.shape
        images[i, :x, :y, :z] = head.array.astype(np.float16)
        brains[i, :x, :y, :z] = _brain_fraction(brain, head)
    affines = np.stack([h.affine for h, _ in heads])
    names = json.dumps([f"brainweb-subject{s:02d}" for s in subjects]).encode()
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, images=images, brains=brains, affines=affines, names=np.frombuffer(names, np.uint8))
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mriquant.preprocess.skullstrip_atlas``."""
    p = argparse.ArgumentParser(description="Build the head-atlas library of the atlas skull stripper.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[4] / "shared" / "data")
    args = p.parse_args(argv)
    print(build(args.out, args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
