"""Atlases in MNI152 space: probabilistic priors of FreeSurfer structures and, optionally, a library.

An :class:`Atlas` holds, on a box of the MNI152 2009a template space:

- ``priors``: for every structure label, the fraction of atlas subjects (partial-volume aware: each
  subject's label map is warped at 1 mm and block-averaged to the prior grid) that put it at each
  voxel, stored as uint8 (x 255);
- optionally the *library*: every member's label map and normalised intensity image warped to the
  template at 1 mm, for multi-atlas label fusion (majority or locally weighted voting).

Build one with :func:`build_atlas` from (image, label map) pairs, each registered to the template with
:func:`mriquant.preprocess.register.register_to_mni` (affine + SyN); ``python -m mriquant.segment.atlas_build``
does it from folders. The package ships a priors-only atlas derived from the 20 SynthSeg training label
maps (Apache-2.0); see ``mriquant/data/atlas/README.md``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage

log = logging.getLogger(__name__)

__all__ = ["Atlas", "Member", "build_atlas", "default_atlas", "load_atlas", "member_from_pair", "normalise_t1"]

#: Atlas file format version (``format`` in the file's metadata).
FORMAT = 1
#: The shipped default atlas (under ``mriquant/data/atlas``).
DEFAULT_ATLAS = "synthseg20_mni2mm.npz"
#: FreeSurfer ids counted as cerebral white matter (the intensity reference of :func:`normalise_t1`).
CEREBRAL_WM = (2, 41)


@dataclass(frozen=True)
class Member:
    """One atlas subject on the template's 1 mm box.

    Attributes
    ----------
    name : str
        Subject identifier.
    labels : numpy.ndarray, int32, shape (X, Y, Z)
        FreeSurfer ids warped to the template box (nearest label-wise interpolation).
    intensity : numpy.ndarray, float32, shape (X, Y, Z)
        The subject's image warped to the box, divided by its cerebral white-matter mean.
    """

    name: str
    labels: npt.NDArray[np.int32]
    intensity: npt.NDArray[np.float32]


@dataclass(frozen=True, eq=False)
class Atlas:
    """A probabilistic atlas (and optional library) on a box of the MNI152 template.

    Attributes
    ----------
    labels : numpy.ndarray, int32, shape (K,)
        FreeSurfer ids of the prior channels (no 0).
    priors : numpy.ndarray, uint8, shape (K, X, Y, Z)
        Probability of each label x 255 on the prior grid.
    affine : numpy.ndarray, shape (4, 4)
        Prior grid voxel -> MNI152 RAS+ mm.
    maps, intensities : numpy.ndarray or None, shape (N, X1, Y1, Z1)
        The library (uint8 index into ``labels`` + 1, 0 background; float16 intensities) on the
        1 mm grid ``maps_affine``; None for a priors-only atlas.
    maps_affine : numpy.ndarray or None
        1 mm library grid voxel -> MNI152 mm.
    meta : dict
        ``name``, ``members``, ``source``, ``licence``, ``resolution_mm``, ``format``.
    """

    labels: npt.NDArray[np.int32]
    priors: npt.NDArray[np.uint8]
    affine: npt.NDArray[np.float64]
    maps: npt.NDArray[np.uint8] | None = None
    intensities: npt.NDArray[np.float16] | None = None
    maps_affine: npt.NDArray[np.float64] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def has_library(self) -> bool:
        """Whether member label maps (and intensities) are stored, for multi-atlas fusion."""
        return self.maps is not None

    @property
    def name(self) -> str:
        """The atlas's name (for provenance)."""
        return str(self.meta.get("name", "atlas"))

    def save(self, path: str | Path, *, library: bool = True) -> Path:
        """Write the atlas as a compressed ``.npz`` atomically; ``library=False`` drops the members."""
        path = Path(path)
        arrays: dict[str, Any] = {"labels": self.labels, "priors": self.priors, "affine": self.affine}
        if library and self.maps is not None and self.intensities is not None and self.maps_affine is not None:
            arrays.update(maps=self.maps, intensities=self.intensities, maps_affine=self.maps_affine)
        meta = {**self.meta, "format": FORMAT, "library": bool(library and self.has_library)}
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
        return path

    def without(self, names: Iterable[str]) -> Atlas:
        """The atlas rebuilt from its library minus the members called ``names`` (leave-one-out)."""
        if self.maps is None or self.intensities is None or self.maps_affine is None:
            raise InputError(f"Expected an atlas with a library, found priors only in {self.name}; rebuild it.")
        drop = set(names)
        keep = [i for i, n in enumerate(self.meta["members"]) if n not in drop]
        maps, intensities = self.maps[keep], self.intensities[keep]
        factor = round(float(self.meta["resolution_mm"]))
        priors, affine = _priors(maps, len(self.labels), self.maps_affine, factor)
        members = [self.meta["members"][i] for i in keep]
        meta = {**self.meta, "members": members}
        return Atlas(self.labels, priors, affine, maps, intensities, self.maps_affine, meta)


def _read_meta(data: Any, source: Path) -> dict[str, Any]:
    meta: dict[str, Any] = json.loads(bytes(data["meta"]).decode())
    if meta.get("format") != FORMAT:
        raise InputError(f"Expected an mriquant atlas of format {FORMAT}, found {meta.get('format')!r} in {source}.")
    return meta


def load_atlas(path: str | Path) -> Atlas:
    """Read an atlas written by :meth:`Atlas.save`.

    Raises
    ------
    InputError
        If the file is missing or is not an mriquant atlas.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"Expected an atlas file (.npz from mriquant.segment.atlas_build), found no file {path}.")
    try:
        with np.load(path, allow_pickle=False) as data:
            meta = _read_meta(data, path)
            library = bool(meta.get("library"))
            return Atlas(
                labels=data["labels"].astype(np.int32),
                priors=data["priors"],
                affine=data["affine"].astype(np.float64),
                maps=data["maps"] if library else None,
                intensities=data["intensities"] if library else None,
                maps_affine=data["maps_affine"].astype(np.float64) if library else None,
                meta=meta,
            )
    except (OSError, ValueError, KeyError) as exc:
        raise InputError(f"Expected an mriquant atlas .npz, found an unreadable file {path} ({exc}).") from None


@lru_cache(maxsize=2)
def default_atlas() -> Atlas:
    """The shipped priors-only atlas (20 SynthSeg label maps, Apache-2.0), cached."""
    return load_atlas(Path(__file__).resolve().parents[1] / "data" / "atlas" / DEFAULT_ATLAS)


# ----------------------------------------------------------------------------------------------------------------------
# building


def normalise_t1(image: npt.NDArray[np.float32], labels: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
    """Divide ``image`` by its mean over cerebral white matter (labels 2, 41), the library's common scale."""
    wm = np.isin(labels, CEREBRAL_WM)
    if not np.any(wm):
        raise InputError("Expected cerebral white matter (FreeSurfer 2/41) in an atlas label map, found none.")
    return (image / np.float32(np.mean(image[wm]))).astype(np.float32)


def template_box(margin_mm: float = 6.0, multiple: int = 2) -> tuple[tuple[slice, ...], npt.NDArray[np.float64]]:
    """The box of the 1 mm MNI template grid around its brain mask, and the box's affine.

    The box's sizes are multiples of ``multiple`` so it block-averages exactly to coarser grids.
    """
    from mriquant.preprocess.template import template_brain_mask

    mask = template_brain_mask(resolution_mm=1.0)
    found = ndimage.find_objects(mask.array.astype(np.int8))[0]
    assert found is not None  # the template mask is not empty
    box = []
    for axis, sl in enumerate(found):
        start = max(0, int(sl.start - margin_mm))
        stop = min(mask.shape[axis], int(sl.stop + margin_mm))
        stop = start + (stop - start) // multiple * multiple
        box.append(slice(start, stop))
    affine = mask.affine.copy()
    affine[:3, 3] = mask.affine[:3, :3] @ np.array([s.start for s in box], float) + mask.affine[:3, 3]
    return tuple(box), affine


def member_from_pair(name: str, image: Image, labels: LabelImage) -> Member:
    """Register one (image, FreeSurfer label map) pair to MNI152 (affine + SyN) and warp it to the box.

    The brain (non-zero labels) is registered to the brain template. Labels are warped with ANTs'
    label-wise linear interpolation; the image linearly, then divided by its white-matter mean.
    """
    from mriquant.preprocess.register import register_to_mni

    if not labels.same_grid(image):
        raise InputError(
            f"Expected the label map of {name} on its image's grid, found {labels.shape} vs {image.shape}."
        )
    brain = LabelImage((labels.array > 0).astype(np.uint8), labels.affine.copy())
    tx = register_to_mni(image, mask=brain, kind="syn")
    box, _ = template_box()
    warped_labels = tx.apply(labels, interpolation="label").array[box].astype(np.int32)
    masked = image.with_array(np.where(labels.array > 0, image.array, 0).astype(np.float32))
    warped_image = tx.apply(masked).array[box].astype(np.float32)
    return Member(name, warped_labels, normalise_t1(warped_image, warped_labels))


def _block_mean(volume: npt.NDArray[np.float32], factor: int) -> npt.NDArray[np.float32]:
    if factor == 1:
        return volume
    x, y, z = (n // factor for n in volume.shape)
    view = volume[: x * factor, : y * factor, : z * factor].reshape(x, factor, y, factor, z, factor)
    return np.asarray(view.mean(axis=(1, 3, 5)), dtype=np.float32)


def _priors(
    maps: npt.NDArray[np.uint8], n_labels: int, maps_affine: npt.NDArray[np.float64], factor: int
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """Block-averaged label frequencies of the library maps (uint8 x 255) and their grid's affine."""
    coarse = [n // factor for n in maps.shape[1:]]
    priors = np.zeros((n_labels, *coarse), np.uint8)
    for k in range(n_labels):
        frequency = np.asarray(np.mean(maps == k + 1, axis=0, dtype=np.float32))
        priors[k] = np.rint(_block_mean(frequency, factor) * 255).astype(np.uint8)
    affine = maps_affine.copy()
    affine[:3, :3] = maps_affine[:3, :3] * factor
    # the centre of a block of ``factor`` voxels lies (factor - 1) / 2 voxels in
    affine[:3, 3] = maps_affine[:3, :3] @ np.full(3, (factor - 1) / 2.0) + maps_affine[:3, 3]
    return priors, affine


def build_atlas(
    members: Sequence[Member],
    *,
    name: str,
    source: str,
    licence: str,
    resolution_mm: int = 2,
    labels: Sequence[int] | None = None,
    progress: Callable[[str], None] | None = None,
) -> Atlas:
    """Assemble an atlas from members already on the template box.

    Parameters
    ----------
    members : sequence of Member
        From :func:`member_from_pair`.
    name, source, licence : str
        Provenance recorded in the atlas.
    resolution_mm : int
        Prior grid spacing (an integer multiple of the 1 mm library grid).
    labels : sequence of int, optional
        FreeSurfer ids to keep (default: every non-zero id found).
    progress : callable, optional
        Receives one line per step.
    """
    if not members:
        raise InputError("Expected at least one atlas member, found none.")
    found = np.unique(np.concatenate([np.unique(m.labels) for m in members]))
    keep = np.array(sorted(set(labels) if labels is not None else {int(v) for v in found if v != 0}), np.int32)
    lookup = np.zeros(int(max(found.max(), keep.max())) + 1, np.uint8)
    lookup[keep] = np.arange(1, len(keep) + 1, dtype=np.uint8)
    maps = np.stack([lookup[m.labels] for m in members])
    intensities = np.stack([m.intensity for m in members]).astype(np.float16)
    _, box_affine = template_box()
    priors, affine = _priors(maps, len(keep), box_affine, int(resolution_mm))
    if progress:
        progress(f"atlas {name}: {len(members)} members, {len(keep)} labels, priors {priors.shape[1:]}")
    meta = {"name": name, "members": [m.name for m in members], "source": source, "licence": licence,
            "resolution_mm": int(resolution_mm)}  # fmt: skip
    return Atlas(keep, priors, affine, maps, intensities, box_affine, meta)
