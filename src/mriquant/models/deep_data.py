"""Label space, working grid and training cases of the dual-task segmentation network (``--method deep``).

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

A :class:`TrainingCase` is a label map (FreeSurfer ids, optionally with its real image) cropped around the
brain plus the matrix from template millimetres to its voxel indices; the augmentation samples it
directly (one interpolation). :func:`prepare_case` registers and caches one case.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mriquant.core.geometry import bounding_box
from mriquant.core.image import Image, LabelImage

__all__ = [
    "BOX",
    "IGNORE",
    "STRUCTURES",
    "TISSUE_OF",
    "Box",
    "TrainingCase",
    "class_index",
    "flip_permutation",
    "load_case",
    "normalise_brain",
    "prepare_case",
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
#: Voxels kept around the brain when a training case is cropped.
CROP_MARGIN = 6


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


def normalise_brain(values: npt.NDArray[np.floating]) -> tuple[float, float]:
    """Robust intensity range of in-brain values: the 1st and 99th percentiles (mapped to 0 and 1)."""
    low, high = np.percentile(values, [1.0, 99.0])
    if not high > low:
        high = low + 1.0
    return float(low), float(high)


@dataclass
class TrainingCase:
    """One training label map (and image) cropped around the brain.

    Attributes
    ----------
    name : str
        Identifier (file stem).
    labels : ndarray of uint8
        Structure channel index per voxel (:func:`class_index`), 0 outside the brain.
    image : ndarray of float16 or None
        The real image, scaled so its in-brain 1st/99th percentiles are 0/1 and 0 outside the brain;
        ``None`` for label maps without an image (synthesis only).
    template_to_voxel : ndarray (4, 4)
        MNI world (mm) -> voxel index of ``labels`` (inverse affine registration).
    """

    name: str
    labels: npt.NDArray[np.uint8]
    image: npt.NDArray[np.float16] | None
    template_to_voxel: npt.NDArray[np.float64]

    def save(self, path: Path) -> None:
        """Write an ``.npz`` atomically."""
        tmp = path.with_name(path.name + ".tmp.npz")
        arrays: dict[str, npt.NDArray[np.generic]] = {"labels": self.labels}
        arrays["template_to_voxel"] = self.template_to_voxel
        if self.image is not None:
            arrays["image"] = self.image
        np.savez_compressed(tmp, **arrays)  # type: ignore[arg-type]
        tmp.replace(path)


def load_case(path: Path) -> TrainingCase:
    """Read a case written by :meth:`TrainingCase.save`."""
    with np.load(path) as data:
        image = data["image"] if "image" in data.files else None
        return TrainingCase(path.name.split(".")[0], data["labels"], image, data["template_to_voxel"])


def prepare_case(name: str, labels: LabelImage, image: Image | None, mask: LabelImage | None = None) -> TrainingCase:
    """Affinely register one (label map, image) pair to MNI152 and crop it to the brain.

    Label ids outside :data:`STRUCTURES` that lie inside the brain (vessels, choroid plexus, ...) are kept
    out of the loss (:data:`IGNORE`); extra-cerebral ids become background. Without an image, a T1-like
    rendering of the labels is registered. ``mask`` (default: the labelled brain) is the brain mask the
    image is cut and normalised with, as the skull stripping's mask is at inference (for skull-stripped
    scans with labels that leave sulcal CSF out, pass the scan's own mask).
    """
    from mriquant.preprocess.register import register_to_mni
    from mriquant.segment.atlas_build import T1_LIKE, render_t1

    ids = labels.array.astype(np.int32)
    brain_ids = set(T1_LIKE) | {30, 62, 31, 63, 72, 77, 80, 85, 172, 25, 57}
    labelled = np.isin(ids, [i for i in brain_ids if i != 0])
    ids = np.where(labelled, ids, 0)
    brain = labelled if mask is None else (mask.array > 0) | labelled
    moving = image if image is not None else render_t1(labels.with_array(ids))
    tx = register_to_mni(moving, mask=LabelImage(brain.astype(np.uint8), labels.affine.copy()), kind="affine")
    box = bounding_box(brain, CROP_MARGIN)
    index = class_index(ids[box])
    index[~labelled[box]] = 0
    shift = np.eye(4)
    shift[:3, 3] = [-s.start for s in box]
    template_to_voxel = shift @ np.linalg.inv(labels.affine) @ np.linalg.inv(tx.affine_ras())
    scaled = None
    if image is not None:
        values = image.array[box].astype(np.float32)
        low, high = normalise_brain(values[brain[box]])
        scaled = np.where(brain[box], (values - low) / (high - low), 0.0).astype(np.float16)
    return TrainingCase(name, index, scaled, template_to_voxel)
