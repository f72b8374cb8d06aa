"""Label space and working grid of the dual-task segmentation network (``--method deep``).

The network works in **affine-normalised MNI152 space**: the brain is affinely registered to the MNI152
2009a template (12 dof, a few seconds) and resampled once onto :data:`BOX`, a 1.5 mm grid of
104 x 128 x 104 voxels around the template brain, symmetric about the mid-sagittal plane (``x = 0``) so
that a left-right flip of the box is the mirror image of the brain. Normalising position, orientation
and head size first lets a small network, trained for an hour on two CPU cores, spend its capacity on
anatomy rather than on learning every pose (which SynthSeg's GPU-trained network does with far more
training); its outputs are mapped back to the native grid through the same affine.

Two label sets come out of one pass: FreeSurfer structures (:data:`STRUCTURES`, 32 ids + background) and
tissues (0 background, 1 CSF, 2 GM, 3 WM) derived from them with :data:`TISSUE_OF` (the MICCAI 2012
``_classified`` convention: deep grey nuclei and ventral DC are GM, brainstem is WM).

Training cases (label maps registered to MNI152 and cropped to the brain) are build-time:
:mod:`mriquant.training.deep_cases`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "BOX",
    "IGNORE",
    "LR_PAIRS",
    "STRUCTURES",
    "TISSUE_OF",
    "Box",
    "class_index",
    "flip_permutation",
    "tissue_lut",
]

#: FreeSurfer ids of the structure head, background first (the output channel order).
STRUCTURES: tuple[int, ...] = (
    0, 2, 3, 4, 5, 7, 8, 10, 11, 12, 13, 14, 15, 16, 17, 18, 24, 26, 28,
    41, 42, 43, 44, 46, 47, 49, 50, 51, 52, 53, 54, 58, 60,
)  # fmt: skip

#: Tissue class (1 CSF, 2 GM, 3 WM) of each structure id.
TISSUE_OF: dict[int, int] = {
    **{i: 1 for i in (4, 5, 14, 15, 24, 43, 44)},
    **{i: 2 for i in (3, 8, 10, 11, 12, 13, 17, 18, 26, 28, 42, 47, 49, 50, 51, 52, 53, 54, 58, 60)},
    **{i: 3 for i in (2, 7, 16, 41, 46)},
}

#: Left/right pairs of FreeSurfer ids (for the flip test-time augmentation).
LR_PAIRS: tuple[tuple[int, int], ...] = (
    (2, 41), (3, 42), (4, 43), (5, 44), (7, 46), (8, 47), (10, 49), (11, 50), (12, 51), (13, 52),
    (17, 53), (18, 54), (26, 58), (28, 60),
)  # fmt: skip

#: Target value of voxels whose label is not in :data:`STRUCTURES` (left out of the loss).
IGNORE = 255


@dataclass(frozen=True)
class Box:
    """The network's working grid in MNI152 world coordinates (RAS+ mm)."""

    shape: tuple[int, int, int]
    spacing_mm: float
    origin_mm: tuple[float, float, float]

    @property
    def affine(self) -> npt.NDArray[np.float64]:
        """Voxel index -> MNI world (mm)."""
        out = np.diag([self.spacing_mm] * 3 + [1.0])
        out[:3, 3] = self.origin_mm
        return out

    def coordinates(self) -> npt.NDArray[np.float32]:
        """World coordinates of every box voxel divided by 100 (3, X, Y, Z): the network's position input."""
        axes = [np.float32(o) + np.float32(self.spacing_mm) * np.arange(n, dtype=np.float32)
                for o, n in zip(self.origin_mm, self.shape, strict=True)]  # fmt: skip
        grid = np.stack(np.meshgrid(*axes, indexing="ij"))
        return (grid / np.float32(100.0)).astype(np.float32)


#: 104 x 128 x 104 voxels of 1.5 mm: x in [-77.25, 77.25] (symmetric), y in [-112, 78.5], z in [-70, 84.5].
BOX = Box(shape=(104, 128, 104), spacing_mm=1.5, origin_mm=(-77.25, -112.0, -70.0))


def class_index(labels: npt.NDArray[np.integer]) -> npt.NDArray[np.uint8]:
    """FreeSurfer ids -> channel index of :data:`STRUCTURES` (:data:`IGNORE` for other ids)."""
    lut = np.full(int(max(int(labels.max()), max(STRUCTURES))) + 1, IGNORE, np.uint8)
    lut[list(STRUCTURES)] = np.arange(len(STRUCTURES), dtype=np.uint8)
    return lut[np.clip(labels, 0, None)]


def tissue_lut() -> npt.NDArray[np.uint8]:
    """Channel index of the structure head -> tissue class (with ``IGNORE -> IGNORE``)."""
    lut = np.full(256, IGNORE, np.uint8)
    for index, label in enumerate(STRUCTURES):
        lut[index] = TISSUE_OF.get(label, 0)
    return lut


def flip_permutation() -> npt.NDArray[np.intp]:
    """Structure channel order after a left-right mirror (left ids take the right ids' channels)."""
    position = {label: k for k, label in enumerate(STRUCTURES)}
    perm = np.arange(len(STRUCTURES))
    for left, right in LR_PAIRS:
        perm[position[left]], perm[position[right]] = position[right], position[left]
    return perm
