"""Training cases of the dual-task network: label maps (and images) registered to MNI152, cropped to the brain.

A :class:`TrainingCase` is a label map (FreeSurfer ids, optionally with its real image) cropped around the
brain plus the matrix from template millimetres to its voxel indices; the augmentation
(:mod:`mriquant.training.deep_augment`) samples it directly (one interpolation). :func:`prepare_case`
registers one case; :mod:`mriquant.training.deep` caches them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from mriquant.core.geometry import bounding_box
from mriquant.core.image import Image, LabelImage
from mriquant.models.deep_data import class_index
from mriquant.preprocess.register import register_to_mni
from mriquant.simulate.render import T1_LIKE, render_t1

__all__ = ["CROP_MARGIN", "TrainingCase", "load_case", "normalise_brain", "prepare_case"]

#: Voxels kept around the brain when a training case is cropped.
CROP_MARGIN = 6


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
