"""Build the head-atlas library of the atlas skull stripper (build time).

Simulates T1-weighted heads (no noise, no bias, 2 mm) from BrainWeb crisp anatomical models with
:func:`mriquant.simulate.brainweb.simulate`, with the fraction of every BrainWeb class in each 2 mm voxel and
the brain fraction, and writes them in the format :func:`mriquant.preprocess.skullstrip_atlas.load_head_atlases`
reads (see there for how the library is used).

Usage (reads ``../shared/data/brainweb-crisp``)::

    python -m mriquant.training.heads --out src/mriquant/data/heads/brainweb_heads_2mm.npz
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mriquant.core.image import Image, LabelImage

__all__ = ["HEAD_SUBJECTS", "build", "main"]

#: BrainWeb anatomies in the library: none of the benchmark's held-out subjects (04, 05, 06) nor the
#: skull-strip CNN's validation subject (44).
HEAD_SUBJECTS = (18, 20, 38)


def _head(subject: int, data: Path) -> tuple[Image, LabelImage, npt.NDArray[np.uint8]]:
    from mriquant.core.geometry import reorient
    from mriquant.io import read_labels
    from mriquant.simulate.brainweb import CLASS_NAMES, class_counts, simulate

    labels = read_labels(data / "brainweb-crisp" / f"subject{subject:02d}_crisp_v.mnc.gz")
    sim = simulate(labels, contrast="T1", noise=0.0, bias=0.0, resolution_mm=2.0, seed=0)
    image = reorient(sim.image, "RAS")
    wm = reorient(sim.tissue, "RAS").array == 3
    image = image.with_array((image.array / np.float32(image.array[wm].mean())).astype(np.float32))
    counts = class_counts(labels, 4)
    fractions = np.stack(
        [
            reorient(Image(counts.counts[c].astype(np.float32) / 64.0, counts.affine), "RAS").array
            for c in range(len(CLASS_NAMES))
        ]
    )
    assert fractions.shape[1:] == image.shape  # the simulation's own 2 mm grid
    return image, reorient(sim.brain_mask, "RAS"), np.rint(fractions * 255).astype(np.uint8)


def _brain_fraction(brain: LabelImage, image: Image) -> npt.NDArray[np.uint8]:
    """The simulated brain mask, smoothed by half a voxel (its partial-volume edge), x 255."""
    from scipy import ndimage

    fraction = ndimage.gaussian_filter(brain.array.astype(np.float32), 0.5)
    return np.asarray(np.rint(np.clip(fraction, 0, 1) * 255), dtype=np.uint8)


def build(out: Path, data: Path, subjects: tuple[int, ...] = HEAD_SUBJECTS) -> Path:
    """Simulate the heads of ``subjects`` and write the library to ``out`` (atomic).

    Every atlas is padded to the largest grid (zeros; class 0, background, in the padding).
    """
    heads = [_head(s, data) for s in subjects]
    shape = np.max([h.shape for h, _, _ in heads], axis=0)
    arrays: dict[str, Any] = {}
    for i, (head, brain, fraction) in enumerate(heads):
        x, y, z = head.shape
        image = np.zeros(shape, np.float16)
        image[:x, :y, :z] = head.array.astype(np.float16)
        fraction_brain = np.zeros(shape, np.uint8)
        fraction_brain[:x, :y, :z] = _brain_fraction(brain, head)
        fractions = np.zeros((fraction.shape[0], *shape), np.uint8)
        fractions[0] = 255  # padding is background
        fractions[:, :x, :y, :z] = fraction
        arrays |= {f"image{i}": image, f"brain{i}": fraction_brain, f"fractions{i}": fractions,
                   f"affine{i}": head.affine}  # fmt: skip
    names = json.dumps([f"brainweb-subject{s:02d}" for s in subjects]).encode()
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez_compressed(tmp, names=np.frombuffer(names, np.uint8), **arrays)
    os.replace(tmp, out)
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m mriquant.training.heads``."""
    p = argparse.ArgumentParser(description="Build the head-atlas library of the atlas skull stripper.")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[4] / "shared" / "data")
    args = p.parse_args(argv)
    print(build(args.out, args.data))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
