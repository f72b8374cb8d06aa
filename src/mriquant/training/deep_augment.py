"""Training samples for the dual-task network: real scans with augmentation, and synthetic images from labels.

One sample (:meth:`DeepSampler.sample`), all in PyTorch on the CPU:

1. pick a :class:`~mriquant.training.deep_cases.TrainingCase`;
2. draw a random spatial transform of the working box (:data:`~mriquant.models.deep_data.BOX`): rotation
   (up to ``max_rotation_deg`` about each axis), per-axis scaling, translation and a smooth random
   displacement field. It stands for the residual misalignment of an affine registration and for anatomical
   variability; the case's labels (nearest) and image (linear) are sampled once through it;
3. the image is the real scan (when the case has one, with probability ``real_fraction``) or a synthetic one
   drawn from the labels as SynthSeg does (Billot et al., Medical Image Analysis 2023): a random Gaussian
   intensity per label, partial-volume blur, so that the network learns shapes rather than one contrast;
4. a smooth multiplicative bias field, a random gamma and Gaussian noise; everything outside the brain is 0
   (the network sees skull-stripped brains, as the pipeline gives it). Voxels of a real scan's brain that
   its labels leave out (MICCAI 2012 labels no sulcal CSF) are kept out of the loss (``IGNORE``): calling
   them background taught the network that CSF at the cortex is not brain, and the tissue head then read
   BrainWeb's sulcal CSF as GM;
5. the box is normalised like the inference does it (:func:`~mriquant.models.inputs.normalise_box`), then a
   crop is cut out (half the time centred near the deep grey nuclei) with the coordinate and log-prior
   channels of its position (:func:`~mriquant.models.deep_net.box_log_prior`).

Examples
--------
>>> sampler = DeepSampler(cases, seed=0)  # doctest: +SKIP
>>> x, structures, tissues = sampler.sample()  # doctest: +SKIP
>>> x.shape  # doctest: +SKIP
torch.Size([41, 64, 80, 64])

"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F  # noqa: N812

from mriquant.models.deep_data import BOX, IGNORE, tissue_lut
from mriquant.models.deep_net import fixed_channels
from mriquant.models.inputs import box_coordinates, normalise_box, sample_grid
from mriquant.training.deep_cases import TrainingCase

__all__ = ["AugmentConfig", "DeepSampler"]


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random augmentation (saved with the weights)."""

    crop: tuple[int, int, int] = (64, 80, 64)
    real_fraction: float = 0.6
    paired_share: float = 0.6
    max_rotation_deg: float = 10.0
    max_scaling: float = 0.1
    max_translation_mm: float = 6.0
    max_displacement_mm: float = 3.0
    max_blur_voxels: float = 1.0
    max_bias: float = 0.3
    max_noise: float = 0.05
    gamma_sd: float = 0.25
    centre_fraction: float = 0.5

    def as_dict(self) -> dict[str, object]:
        """JSON-serialisable form."""
        data = asdict(self)
        data["crop"] = list(self.crop)
        return data


def _rotation(angles: torch.Tensor) -> torch.Tensor:
    cx, cy, cz = torch.cos(angles)
    sx, sy, sz = torch.sin(angles)
    rx = torch.tensor([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = torch.tensor([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = torch.tensor([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _smooth(shape: Sequence[int], points: int, channels: int, gen: torch.Generator) -> torch.Tensor:
    """A smooth random field in [-1, 1]-ish: coarse Gaussian noise upsampled (channels, *shape)."""
    coarse = torch.randn(1, channels, points, points, points, generator=gen)
    return F.interpolate(coarse, size=tuple(shape), mode="trilinear", align_corners=True)[0]


class DeepSampler:
    """Random training samples (input channels, structure target, tissue target) from training cases."""

    def __init__(self, cases: Sequence[TrainingCase], *, config: AugmentConfig | None = None, seed: int = 0) -> None:
        if not cases:
            raise ValueError("DeepSampler needs at least one training case")
        self.cases = list(cases)
        self.config = config or AugmentConfig()
        self.weights = self._case_weights()
        self.gen = torch.Generator().manual_seed(seed)
        self.world = box_coordinates()
        self.fixed = fixed_channels()
        self.tissue = torch.from_numpy(tissue_lut().astype(np.int64))
        self._labels = [torch.from_numpy(c.labels.astype(np.float32))[None, None] for c in self.cases]
        self._images = [None if c.image is None else torch.from_numpy(c.image.astype(np.float32))[None, None]
                        for c in self.cases]  # fmt: skip

    def _case_weights(self) -> torch.Tensor:
        """Sampling weights: cases with a real image make up ``paired_share`` of the draws (when both kinds exist)."""
        paired = torch.tensor([c.image is not None for c in self.cases])
        n_paired, n_maps = int(paired.sum()), int((~paired).sum())
        if n_paired == 0 or n_maps == 0:
            return torch.ones(len(self.cases))
        share = self.config.paired_share
        return torch.where(paired, share / n_paired, (1.0 - share) / n_maps)

    def _uniform(self, low: float, high: float, size: int = 1) -> torch.Tensor:
        return low + (high - low) * torch.rand(size, generator=self.gen)

    def _warped_world(self) -> torch.Tensor:
        cfg = self.config
        angles = self._uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg, 3) * math.pi / 180.0
        scale = 1.0 + self._uniform(-cfg.max_scaling, cfg.max_scaling, 3)
        shift = self._uniform(-cfg.max_translation_mm, cfg.max_translation_mm, 3)
        linear = _rotation(angles) @ torch.diag(scale)
        world = self.world @ linear.T + shift
        amplitude = float(self._uniform(0.0, cfg.max_displacement_mm))
        field = _smooth(BOX.shape, 5, 3, self.gen).permute(1, 2, 3, 0)
        return world + amplitude * field / 2.0

    def _synthesise(self, labels: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        n = int(labels.max()) + 1 if labels.numel() else 1
        means = self._uniform(0.05, 1.0, max(n, 256))
        sds = self._uniform(0.0, 0.08, max(n, 256))
        index = labels.long().clamp(0, 255)
        image = means[index] + sds[index] * torch.randn(labels.shape, generator=self.gen)
        sigma = float(self._uniform(0.0, cfg.max_blur_voxels))
        return _blur(image, sigma) if sigma > 0.2 else image

    def _corrupt(self, image: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        bias = torch.exp(float(self._uniform(0.0, cfg.max_bias)) * _smooth(BOX.shape, 4, 1, self.gen)[0])
        image = image.clamp(min=0.0) * bias
        gamma = math.exp(float(torch.randn(1, generator=self.gen)) * cfg.gamma_sd)
        scale = image.max().clamp(min=1e-6)
        image = (image / scale) ** gamma
        return image + float(self._uniform(0.0, cfg.max_noise)) * torch.randn(image.shape, generator=self.gen)

    def _crop_start(self) -> list[int]:
        cfg = self.config
        centred = float(torch.rand(1, generator=self.gen)) < cfg.centre_fraction
        start = []
        for n, c in zip(BOX.shape, cfg.crop, strict=True):
            s = (n - c) // 2 + int(self._uniform(-8, 8)) if centred else int(self._uniform(0, n - c + 1))
            start.append(max(0, min(n - c, s)))
        return start

    def sample(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One sample: input (41, *crop) (image, 3 coordinates, 37 log priors), structure and tissue targets."""
        cfg = self.config
        k = int(torch.multinomial(self.weights, 1, generator=self.gen))
        world = self._warped_world()
        labels_src = self._labels[k]
        grid = sample_grid(self.cases[k].template_to_voxel, world, labels_src.shape[2:])
        labels = F.grid_sample(labels_src, grid, mode="nearest", padding_mode="zeros", align_corners=True)[0, 0]
        image_src = self._images[k]
        real = image_src is not None and float(torch.rand(1, generator=self.gen)) < cfg.real_fraction
        if real and image_src is not None:
            image = F.grid_sample(image_src, grid, mode="bilinear", padding_mode="zeros", align_corners=True)[0, 0]
        else:
            image = self._synthesise(labels)
        brain = labels > 0
        if real and image_src is not None:
            brain = brain | (image > 0)
        image = normalise_box(self._corrupt(image), brain)
        x0, y0, z0 = self._crop_start()
        cx, cy, cz = cfg.crop
        crop = (slice(x0, x0 + cx), slice(y0, y0 + cy), slice(z0, z0 + cz))
        structures = labels[crop].long()
        if real:  # in the scan's brain but unlabelled (sulcal CSF in MICCAI 2012): no evidence either way
            structures = torch.where((structures == 0) & brain[crop], IGNORE, structures)
        tissues = self.tissue[structures]
        inputs = torch.cat([image[crop][None], self.fixed[(slice(None), *crop)]], dim=0)
        return inputs.float(), structures, tissues


def _blur(image: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a 3D tensor (sigma in voxels)."""
    radius = max(1, math.ceil(2.5 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (t / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = image[None, None]
    for axis in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + axis] = kernel.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel.view(shape))
    return out[0, 0]

