"""Atlases in MNI152 space: probabilistic priors of FreeSurfer structures and, optionally, a library.

An :class:`Atlas` holds, on a box of the MNI152 2009a template space:

- ``priors``: for every structure label, the fraction of atlas subjects (partial-volume aware: each
  subject's label map is warped at 1 mm and block-averaged to the prior grid) that put it at each
  voxel, stored as uint8 (x 255);
- optionally the *library*: every member's label map and normalised intensity image warped to the
  template at 1 mm, for multi-atlas label fusion (majority or locally weighted voting).

Atlases are built at build time by :mod:`mriquant.training.atlas` (``python -m mriquant.training.atlas``)
from (image, label map) pairs registered to the template. The package ships a priors-only atlas derived from
the 20 SynthSeg training label maps (Apache-2.0); see ``mriquant/data/atlas/README.md``. It lives here, below
the segmentation methods, because the deep network's prior channel (:func:`mriquant.models.deep_net.box_log_prior`)
and ``segment --method atlas`` both read it.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from mriquant.core.errors import InputError

log = logging.getLogger(__name__)

__all__ = ["CEREBRAL_WM", "Atlas", "default_atlas", "load_atlas", "priors_from_maps"]

#: Atlas file format version (``format`` in the file's metadata).
FORMAT = 1
#: The shipped default atlas (under ``mriquant/data/atlas``).
DEFAULT_ATLAS = "synthseg20_mni2mm.npz"
#: FreeSurfer ids counted as cerebral white matter (the intensity reference of the library's images).
CEREBRAL_WM = (2, 41)


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
        priors, affine = priors_from_maps(maps, len(self.labels), self.maps_affine, factor)
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
        raise InputError(f"Expected an atlas file (.npz from mriquant.training.atlas), found no file {path}.")
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


def _block_mean(volume: npt.NDArray[np.float32], factor: int) -> npt.NDArray[np.float32]:
    if factor == 1:
        return volume
    x, y, z = (n // factor for n in volume.shape)
    view = volume[: x * factor, : y * factor, : z * factor].reshape(x, factor, y, factor, z, factor)
    return np.asarray(view.mean(axis=(1, 3, 5)), dtype=np.float32)


def priors_from_maps(
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
