"""Network inputs, prepared the same way at inference and in training.

- :func:`normalise_intensity`: the skull-strip U-Net's input scaling (:mod:`mriquant.preprocess.skullstrip` at
  run time, :mod:`mriquant.training.synth` for its synthetic training heads);
- :func:`normalise_box`, :func:`box_coordinates` and :func:`sample_grid`: the dual-task network's image on
  its MNI152 working box (:mod:`mriquant.segment.deep` at run time, :mod:`mriquant.training.deep_augment`).

Examples
--------
>>> x = normalise_intensity(torch.rand(8, 8, 8))
>>> float(x.min()) >= 0.0 and float(x.max()) <= 1.0
True

"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from mriquant.models.deep_data import BOX, Box

__all__ = ["NORMALISE_PERCENTILES", "box_coordinates", "normalise_box", "normalise_intensity", "sample_grid"]

#: Percentiles mapped to 0 and 1 by :func:`normalise_intensity`.
NORMALISE_PERCENTILES = (0.5, 99.5)


def normalise_intensity(image: torch.Tensor) -> torch.Tensor:
    """Map the 0.5th/99.5th intensity percentiles to 0/1 and clip to [0, 1] (any shape, float32).

    Percentiles come from at most 2**20 evenly strided voxels, so the cost does not grow with the size.
    """
    flat = image.reshape(-1)
    step = max(1, flat.numel() // 2**20)
    lo_p, hi_p = NORMALISE_PERCENTILES
    q = torch.quantile(flat[::step].float(), torch.tensor([lo_p / 100, hi_p / 100]))
    lo, hi = float(q[0]), float(q[1])
    if hi <= lo:
        hi = lo + max(abs(lo), 1.0) * 1e-3
    return ((image - lo) / (hi - lo)).clamp_(0.0, 1.0)


def box_coordinates(box: Box = BOX) -> torch.Tensor:
    """MNI world coordinates (mm) of every box voxel, shape (X, Y, Z, 3)."""
    return torch.from_numpy(box.coordinates() * np.float32(100.0)).permute(1, 2, 3, 0).contiguous()


def normalise_box(image: torch.Tensor, brain: torch.Tensor) -> torch.Tensor:
    """Map the in-brain 1st/99th intensity percentiles to 0/1 and zero everything outside the brain.

    The one normalisation used by training and inference (both on the box grid).
    """
    values = image[brain]
    if values.numel() < 2:
        return torch.zeros_like(image)
    q = torch.quantile(values[:: max(1, values.numel() // 200_000)].float(), torch.tensor([0.01, 0.99]))
    low, high = float(q[0]), float(q[1])
    if not high > low:
        high = low + 1.0
    return torch.where(brain, (image - low) / (high - low), torch.zeros(()))


def sample_grid(template_to_voxel: np.ndarray, world: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``grid_sample`` grid (1, X, Y, Z, 3) reading an array of ``shape`` at MNI positions ``world`` (X, Y, Z, 3)."""
    m = torch.from_numpy(template_to_voxel.astype(np.float32))
    vox = world @ m[:3, :3].T + m[:3, 3]
    size = torch.tensor([float(max(n - 1, 1)) for n in shape])
    norm = 2.0 * vox / size - 1.0
    return norm.flip(-1).unsqueeze(0)  # grid_sample wants (z, y, x) = (W, H, D) order last
