"""The dual-task network (tissues + structures in one pass) and its inference on the working box.

One :class:`~mriquant.models.unet.UNet3D` with ``33 + 4`` output channels: the first 33 are the structure
head's logits (background + the FreeSurfer ids of :data:`~mriquant.models.deep_data.STRUCTURES`), the last 4
the tissue head's (background, CSF, GM, WM). Both heads share every feature map and differ only in their
1x1x1 output convolution (icobrain-dl's dual-task design, at the cost of one network). Inputs are the
normalised image on :data:`~mriquant.models.deep_data.BOX` and the three MNI coordinates of each voxel, so
the network knows where it is (left from right, above from below) even in a crop.

Examples
--------
>>> net = build_network(default_config())  # doctest: +SKIP
>>> probs = predict_box(net, inputs, flip=True)  # doctest: +SKIP
>>> probs.shape  # doctest: +SKIP
torch.Size([37, 104, 128, 104])

"""

from __future__ import annotations

import numpy as np
import torch

from mriquant.models.deep_data import BOX, STRUCTURES, flip_permutation
from mriquant.models.unet import UNet3D, UNetConfig

__all__ = ["N_STRUCTURES", "N_TISSUES", "build_network", "default_config", "predict_box", "split_heads"]

N_STRUCTURES = len(STRUCTURES)
N_TISSUES = 4


def default_config() -> UNetConfig:
    """The shipped architecture: 4 levels, (16, 32, 64, 128) feature maps, 4 inputs, 37 outputs."""
    return UNetConfig(in_channels=4, channels=(16, 32, 64, 128), top_convs=1, spacing_mm=BOX.spacing_mm,
                      out_channels=N_STRUCTURES + N_TISSUES)  # fmt: skip


def build_network(config: UNetConfig) -> UNet3D:
    """A dual-task network for ``config`` (checks the output channels)."""
    if config.out_channels != N_STRUCTURES + N_TISSUES or config.in_channels != 4:
        raise ValueError(f"dual-task config needs 4 inputs and {N_STRUCTURES + N_TISSUES} outputs, got {config}")
    return UNet3D(config)


def split_heads(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 37, ...) logits -> structure (N, 33, ...) and tissue (N, 4, ...) logits."""
    return logits[:, :N_STRUCTURES], logits[:, N_STRUCTURES:]


def _forward(net: UNet3D, inputs: torch.Tensor) -> torch.Tensor:
    structures, tissues = split_heads(net(inputs[None]))
    return torch.cat([torch.softmax(structures, 1), torch.softmax(tissues, 1)], dim=1)[0]


@torch.no_grad()
def predict_box(net: UNet3D, inputs: torch.Tensor, *, flip: bool = False) -> torch.Tensor:
    """Class probabilities (33 structure + 4 tissue channels, each head sums to 1) for box inputs.

    Parameters
    ----------
    net : UNet3D
        The dual-task network, in eval mode.
    inputs : torch.Tensor, shape (4, X, Y, Z)
        Normalised image and the three coordinate channels; sizes multiples of ``net.config.multiple``.
    flip : bool
        Also run the left-right mirror image (the box is symmetric about x = 0, and the coordinate channels
        stay those of the unflipped box) and average, with left and right structure channels swapped back.
    """
    net.eval()
    probs = _forward(net, inputs)
    if flip:
        mirrored = torch.cat([inputs[:1].flip(1), inputs[1:]], dim=0)
        back = _forward(net, mirrored).flip(1)
        perm = torch.from_numpy(np.concatenate([flip_permutation(), N_STRUCTURES + np.arange(N_TISSUES)]))
        probs = 0.5 * (probs + back[perm])
    return probs
