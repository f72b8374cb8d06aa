"""Synthetic training heads for the skull-stripping network, generated on the fly from label maps.

The idea is SynthStrip's (Hoopes et al., NeuroImage 2022): a network that has only ever seen heads with
random contrast, shape, bias, noise and resolution learns a brain mask that does not depend on any of
them. Everything here is our own code, in PyTorch on the CPU, vectorised over voxels.

One sample (:meth:`SynthGenerator.sample`):

1. pick a whole-head label map (1 mm, RAS, :class:`LabelMap`);
2. draw a random affine (rotation, scaling, translation) plus a smooth random displacement and sample
   the labels (nearest) on a fine grid of ``spacing / 2`` mm;
3. give every label a random Gaussian intensity (random means and SDs, labels sometimes merged into a
   few groups; for BrainWeb maps sometimes the MR signal of a random sequence), and sometimes set
   everything outside the brain to exactly zero (an already skull-stripped input, whose target is then
   the whole non-zero brain);
4. sometimes simulate thick slices (1-5 mm) along a random axis, then block-average to ``spacing``
   (partial volume; the target becomes the brain *fraction* of each voxel, a soft label);
5. a smooth random bias field, gamma, Rician noise and a random field-of-view cut (no neck, or part of
   the head outside the scan);
6. normalise with :func:`mriquant.models.inputs.normalise_intensity`, the same function the inference uses.

Examples
--------
>>> maps = load_label_maps(["training_seg_01.nii.gz"])  # doctest: +SKIP
>>> image, target = SynthGenerator(maps, seed=0).sample()  # doctest: +SKIP
>>> image.shape  # doctest: +SKIP
torch.Size([1, 80, 96, 80])

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from scipy import ndimage

from mriquant.core.geometry import reorient
from mriquant.core.image import LabelImage
from mriquant.io import read_labels
from mriquant.models.inputs import normalise_intensity
from mriquant.simulate.brainweb import TISSUE_PARAMETERS, sequence_signal
from mriquant.simulate.brainweb import Sequence as MrSequence

__all__ = [
    "LabelMap",
    "SynthConfig",
    "SynthGenerator",
    "load_label_maps",
]

#: SynthSeg/FreeSurfer labels at or above this value are extra-cerebral (skull, scalp, eyes, ...).
EXTRA_CEREBRAL_FROM = 500

#: BrainWeb crisp classes counted as brain; 12 is our own "vessel enclosed by brain" class.
BRAINWEB_BRAIN = (1, 2, 3, 12)


@dataclass(frozen=True)
class LabelMap:
    """A whole-head label map prepared for synthesis.

    Attributes
    ----------
    index : numpy.ndarray, shape (X, Y, Z), uint8
        Label indices 0..n-1 on a 1 mm RAS grid (0 = background).
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-RAS+ affine (1 mm, axis aligned).
    brain : numpy.ndarray, shape (n,), bool
        Which indices are brain.
    physics : numpy.ndarray, shape (n, 4), optional
        (PD, T1 ms, T2 ms, T2* ms) per index for physical contrasts (BrainWeb maps), else None.
    name : str
        Source file name.

    """

    index: npt.NDArray[np.uint8]
    affine: npt.NDArray[np.float64]
    brain: npt.NDArray[np.bool_]
    physics: npt.NDArray[np.float64] | None
    name: str

    @property
    def brain_centre_mm(self) -> npt.NDArray[np.float64]:
        """World position (RAS mm) of the brain's centroid."""
        ijk = np.array(ndimage.center_of_mass(self.brain[self.index]))
        return np.asarray(self.affine[:3, :3] @ ijk + self.affine[:3, 3], dtype=np.float64)


def _crop_to_head(index: npt.NDArray[np.uint8], affine: npt.NDArray[np.float64], margin: int = 4) -> LabelImage:
    nonzero = np.argwhere(index > 0)
    lo = np.maximum(nonzero.min(axis=0) - margin, 0)
    hi = np.minimum(nonzero.max(axis=0) + margin + 1, index.shape)
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return LabelImage(index[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], shifted)


def _synthseg_map(path: Path) -> LabelMap:
    labels = reorient(read_labels(path), "RAS")
    values, inverse = np.unique(labels.array, return_inverse=True)
    index = inverse.reshape(labels.shape).astype(np.uint8)
    brain = (values > 0) & (values < EXTRA_CEREBRAL_FROM)
    cropped = _crop_to_head(index, labels.affine)
    return LabelMap(cropped.array.astype(np.uint8), cropped.affine, brain, None, path.name)


def _brainweb_map(path: Path) -> LabelMap:
    """BrainWeb crisp model at 1 mm: majority class of each 2x2x2 block; enclosed vessels become class 12."""
    labels = reorient(read_labels(path), "RAS")
    shape = tuple(s // 2 for s in labels.shape)
    blocks = labels.array[: 2 * shape[0], : 2 * shape[1], : 2 * shape[2]].astype(np.uint8)
    blocks = blocks.reshape(shape[0], 2, shape[1], 2, shape[2], 2).transpose(0, 2, 4, 1, 3, 5).reshape(*shape, 8)
    counts = np.stack([(blocks == c).sum(axis=-1, dtype=np.uint8) for c in range(12)])
    index = np.argmax(counts, axis=0).astype(np.uint8)
    brain = np.isin(index, (1, 2, 3))
    index[ndimage.binary_fill_holes(brain) & ~brain] = 12
    affine = labels.affine @ np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = labels.affine[:3, :3] @ np.full(3, 0.5) + labels.affine[:3, 3]
    cropped = _crop_to_head(index, affine)
    physics = np.vstack([TISSUE_PARAMETERS, TISSUE_PARAMETERS[8]])
    return LabelMap(cropped.array.astype(np.uint8), cropped.affine, np.isin(np.arange(13), BRAINWEB_BRAIN), physics,
                    path.name)  # fmt: skip


def load_label_maps(paths: Sequence[str | Path], *, cache_dir: str | Path | None = None) -> list[LabelMap]:
    """Read and prepare label maps: SynthSeg-style ``*.nii.gz`` or BrainWeb ``*_crisp_v.mnc.gz``.

    Parameters
    ----------
    paths : sequence of path
        Label map files. Files whose name contains ``crisp`` are read as BrainWeb models.
    cache_dir : path, optional
        Folder for ``<name>.npz`` caches of the prepared maps (reading a prepared map takes ~0.2 s
        instead of ~3 s).

    """
    maps = []
    for p in map(Path, paths):
        cache = Path(cache_dir) / f"{p.name}.npz" if cache_dir is not None else None
        if cache is not None and cache.exists():
            with np.load(cache) as z:
                physics = z["physics"] if z["physics"].size else None
                maps.append(LabelMap(z["index"], z["affine"], z["brain"], physics, p.name))
            continue
        lmap = _brainweb_map(p) if "crisp" in p.name else _synthseg_map(p)
        if cache is not None:
            cache.parent.mkdir(parents=True, exist_ok=True)
            np.savez(cache, index=lmap.index, affine=lmap.affine, brain=lmap.brain,
                     physics=lmap.physics if lmap.physics is not None else np.zeros(0))  # fmt: skip
        maps.append(lmap)
    return maps


@dataclass(frozen=True)
class SynthConfig:
    """Ranges of the random draws; every probability is per sample.

    Attributes
    ----------
    shape : tuple of int
        Output grid (voxels) at ``spacing`` mm.
    spacing : float
        Output voxel size in mm (the network's working resolution).
    rotation_deg, scale, translation_mm, deform_mm : float
        Largest rotation about each axis, relative scaling (1 +- scale), translation of the grid centre
        from the brain centre, and SD of the smooth displacement field in mm.
    brainweb_fraction : float
        Share of samples drawn from maps with MR physics (BrainWeb) when both kinds are present.
    p_merge, p_physics, p_stripped, p_thick, p_neck_cut, p_fov_cut : float
        Probabilities of merged label intensities, an MR-physics contrast (BrainWeb maps only), a
        skull-stripped input, thick slices, a cut below the brain (no neck) and a cut on another side.
    max_slice_mm, max_bias, max_gamma, max_noise : float
        Thickest slice, largest bias-field SD (log scale), SD of log-gamma, largest noise SD (relative to
        the 99.5th percentile).

    """

    shape: tuple[int, int, int] = (80, 96, 80)
    spacing: float = 2.0
    rotation_deg: float = 20.0
    scale: float = 0.12
    translation_mm: float = 20.0
    deform_mm: float = 2.5
    brainweb_fraction: float = 0.4
    p_merge: float = 0.3
    p_physics: float = 0.7
    p_stripped: float = 0.08
    p_thick: float = 0.3
    p_neck_cut: float = 0.5
    p_fov_cut: float = 0.15
    max_slice_mm: float = 5.0
    max_bias: float = 0.35
    max_gamma: float = 0.3
    max_noise: float = 0.08


def _rotation(angles: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return np.asarray(rx @ ry @ rz, dtype=np.float64)


def _smooth_field(shape: Sequence[int], points: int, sd: float, channels: int, gen: torch.Generator) -> torch.Tensor:
    """A smooth random field (channels, *shape): Gaussian values on a ``points``^3 lattice, upsampled."""
    coarse = torch.randn((1, channels, points, points, points), generator=gen) * sd
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0]


class SynthGenerator:
    """Draws random (image, target) training pairs from label maps; deterministic for a given seed.

    Parameters
    ----------
    maps : sequence of LabelMap
        Whole-head label maps.
    config : SynthConfig, optional
        Ranges of the random draws.
    seed : int
        Seed of every random draw.

    """

    def __init__(self, maps: Sequence[LabelMap], config: SynthConfig | None = None, *, seed: int = 0) -> None:
        if not maps:
            raise ValueError("SynthGenerator needs at least one label map.")
        self.maps = list(maps)
        self.config = config or SynthConfig()
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self._centres = [m.brain_centre_mm for m in self.maps]
        self._volumes = [torch.from_numpy(m.index) for m in self.maps]
        fine = [2 * s for s in self.config.shape]
        axes = [torch.arange(n, dtype=torch.float32) - (n - 1) / 2 for n in fine]
        self._fine_grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # (X, Y, Z, 3) fine voxels

    @property
    def fine_shape(self) -> tuple[int, int, int]:
        """Shape of the fine (``spacing / 2``) grid labels are sampled on."""
        x, y, z = (2 * s for s in self.config.shape)
        return x, y, z

    def sample(self, map_index: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw one pair: image (1, X, Y, Z) in [0, 1] and soft brain target (1, X, Y, Z) in [0, 1]."""
        k = self._pick_map() if map_index is None else map_index
        labels = self._sample_labels(k)
        stripped = bool(self.rng.random() < self.config.p_stripped)
        fine, brain = self._intensities(k, labels, stripped)
        if self.rng.random() < self.config.p_thick:
            fine = self._thick_slices(fine)
        image = F.avg_pool3d(fine[None, None], 2)[0]
        target = F.avg_pool3d(brain[None, None], 2)[0]
        image = self._corrupt(image, stripped)
        image, target = self._cut_fov(image, target)
        return normalise_intensity(image), target

    def _pick_map(self) -> int:
        physics = [i for i, m in enumerate(self.maps) if m.physics is not None]
        others = [i for i, m in enumerate(self.maps) if m.physics is None]
        pool = physics if (self.rng.random() < self.config.brainweb_fraction and physics) or not others else others
        return int(pool[int(self.rng.integers(len(pool)))])

    def _sample_labels(self, k: int) -> torch.Tensor:
        """Sample map ``k`` (nearest) on the fine grid after a random affine and smooth deformation."""
        cfg, lmap = self.config, self.maps[k]
        angles = np.deg2rad(self.rng.uniform(-cfg.rotation_deg, cfg.rotation_deg, 3))
        linear = _rotation(angles) @ np.diag(self.rng.uniform(1 - cfg.scale, 1 + cfg.scale, 3)) * (cfg.spacing / 2)
        centre = self._centres[k] + self.rng.uniform(-cfg.translation_mm, cfg.translation_mm, 3)
        inv = np.linalg.inv(lmap.affine)
        to_src = inv[:3, :3] @ linear  # fine voxel offset -> source voxel
        origin = inv[:3, :3] @ centre + inv[:3, 3]
        grid = self._fine_grid.reshape(-1, 3) @ torch.from_numpy(to_src.T).float() + torch.from_numpy(origin).float()
        grid = grid.reshape(*self.fine_shape, 3)
        grid += _smooth_field(self.fine_shape, 6, cfg.deform_mm * float(self.rng.random()), 3, self.gen).permute(
            1, 2, 3, 0
        )
        size = torch.tensor(lmap.index.shape, dtype=torch.float32)
        norm = (grid / (size - 1) * 2 - 1).flip(-1)  # grid_sample wants (x=last axis, y, z=first axis)
        src = self._volumes[k][None, None].float()
        out = F.grid_sample(src, norm[None], mode="nearest", padding_mode="zeros", align_corners=True)
        return out[0, 0].long()

    def _label_stats(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Random mean and SD per label index of map ``k``."""
        n = len(self.maps[k].brain)
        physics = self.maps[k].physics
        if physics is not None and self.rng.random() < self.config.p_physics:
            means = _random_sequence_signal(physics, self.rng) * self.rng.uniform(0.9, 1.1, n)
        elif self.rng.random() < self.config.p_merge:
            groups = self.rng.integers(0, self.rng.integers(2, 7), n)
            means = self.rng.uniform(0, 1, groups.max() + 1)[groups]
        else:
            means = self.rng.uniform(0, 1, n)
        if self.rng.random() < 0.7:
            means[0] = 0.0
        sds = self.rng.uniform(0, 0.06, n) * self.rng.uniform(0.2, 1.0)
        return torch.from_numpy(means).float(), torch.from_numpy(sds).float()

    def _intensities(self, k: int, labels: torch.Tensor, stripped: bool) -> tuple[torch.Tensor, torch.Tensor]:
        means, sds = self._label_stats(k)
        brain_lut = torch.from_numpy(self.maps[k].brain)
        if stripped:
            means = torch.where(brain_lut, means, torch.zeros_like(means))
            sds = torch.where(brain_lut, sds, torch.zeros_like(sds))
        noise = torch.randn(labels.shape, generator=self.gen)
        image = means[labels] + sds[labels] * noise
        return image.clamp_(min=0.0), brain_lut[labels].float()

    def _thick_slices(self, fine: torch.Tensor) -> torch.Tensor:
        """Average ``t`` mm slabs along a random axis and interpolate back (thick-slice acquisition)."""
        thickness = round(self.rng.uniform(1.0, self.config.max_slice_mm) / (self.config.spacing / 2))
        if thickness < 2:
            return fine
        axis = int(self.rng.integers(3))
        kernel = [1, 1, 1]
        kernel[axis] = thickness
        pooled = F.avg_pool3d(fine[None, None], kernel, ceil_mode=True)
        return F.interpolate(pooled, size=fine.shape, mode="trilinear", align_corners=False)[0, 0]

    def _corrupt(self, image: torch.Tensor, stripped: bool) -> torch.Tensor:
        """Bias field, gamma and Rician noise; ``image`` is (1, X, Y, Z)."""
        cfg = self.config
        nonzero = image > 0
        bias = _smooth_field(image.shape[1:], 4, cfg.max_bias * float(self.rng.random()), 1, self.gen)
        image = image * torch.exp(bias)
        scale = float(torch.quantile(image.reshape(-1)[::7], 0.995)) or 1.0
        image = (image / scale).clamp_(min=0.0) ** math.exp(self.rng.normal(0.0, cfg.max_gamma))
        sd = cfg.max_noise * float(self.rng.random()) ** 2
        real = image + torch.randn(image.shape, generator=self.gen) * sd
        imag = torch.randn(image.shape, generator=self.gen) * sd
        image = torch.sqrt(real**2 + imag**2)
        return torch.where(nonzero, image, torch.zeros_like(image)) if stripped else image

    def _cut_fov(self, image: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Zero everything beyond a plane: below the brain (no neck) or at another side of the head."""
        cfg = self.config
        cuts: list[tuple[int, int, float]] = []  # (axis, side -1 = low end / +1 = high end, mm from brain edge)
        if self.rng.random() < cfg.p_neck_cut:
            cuts.append((2, -1, self.rng.uniform(-10.0, 40.0)))
        if self.rng.random() < cfg.p_fov_cut:
            cuts.append((int(self.rng.integers(3)), int(self.rng.choice([-1, 1])), self.rng.uniform(-10.0, 25.0)))
        brain = target[0] > 0.5
        for axis, side, mm in cuts:
            present = torch.nonzero(brain.any(dim=tuple(a for a in range(3) if a != axis))).flatten()
            if present.numel() == 0:
                continue
            edge = int(present[0]) if side < 0 else int(present[-1])
            keep = _slab_mask(image.shape[1 + axis], axis, edge + side * round(mm / cfg.spacing), side)
            image, target = image * keep, target * keep
        return image, target


def _slab_mask(length: int, axis: int, position: int, side: int) -> torch.Tensor:
    """A (1, ...) broadcastable 0/1 mask keeping indices up to ``position`` (side +1) or from it (side -1)."""
    idx = torch.arange(length)
    keep = (idx <= position) if side > 0 else (idx >= position)
    shape = [1, 1, 1, 1]
    shape[1 + axis] = length
    return keep.float().reshape(shape)


def _random_sequence_signal(physics: npt.NDArray[np.float64], rng: np.random.Generator) -> npt.NDArray[np.float64]:
    """Signal per class for a random spoiled-gradient-echo or spin-echo sequence, scaled to max 1."""
    if rng.random() < 0.5:
        seq = MrSequence("spgr", rng.uniform(8, 40), rng.uniform(2, 15), rng.uniform(5, 60))
    else:
        seq = MrSequence("se", rng.uniform(400, 5000), rng.uniform(10, 150))
    signal = sequence_signal(physics, seq)
    return np.asarray(signal / max(float(signal.max()), 1e-6), dtype=np.float64)
