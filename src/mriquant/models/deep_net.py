"""The dual-task network (tissues + structures in one pass) and its inference on the working box.

One :class:`~mriquant.models.unet.UNet3D` with ``33 + 4`` output channels: the first 33 are the structure
head's logits (background + the FreeSurfer ids of :data:`~mriquant.models.deep_data.STRUCTURES`), the last 4
the tissue head's (background, CSF, GM, WM). Both heads share every feature map and differ only in their
1x1x1 output convolution (icobrain-dl's dual-task design, at the cost of one network). Inputs are the
normalised image on :data:`~mriquant.models.deep_data.BOX` and the three MNI coordinates of each voxel, so
the network knows where it is (left from right, above from below) even in a crop.

**Atlas prior as a logit offset.** The input also carries :func:`box_log_prior`: the log of a probabilistic
atlas of the 32 structures (and of the tissues derived from them) on the box, built from the shipped
SynthSeg-derived atlas blurred by the spread that an affine registration leaves. :class:`DualTaskNet` adds
it, with one learnt weight per head, to the U-Net's logits, so that an untrained network already predicts
the atlas and training only has to learn where the image says otherwise. With two CPU cores for training
this matters: the same U-Net without the offset reached a validation Dice of 0.17 on the 15 subcortical
structures after 400 steps (the first training run's record).

Examples
--------
>>> net = build_network(default_config())  # doctest: +SKIP
>>> probs = predict_box(net, inputs, flip=True)  # doctest: +SKIP
>>> probs.shape  # doctest: +SKIP
torch.Size([37, 104, 128, 104])

"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

from mriquant.models.deep_data import BOX, STRUCTURES, TISSUE_OF, flip_permutation
from mriquant.models.unet import UNet3D, UNetConfig

__all__ = [
    "IMAGE_CHANNELS",
    "N_STRUCTURES",
    "N_TISSUES",
    "DualTaskNet",
    "box_log_prior",
    "build_network",
    "default_config",
    "fixed_channels",
    "predict_box",
    "split_heads",
]

N_STRUCTURES = len(STRUCTURES)
N_TISSUES = 4
#: Input channels the U-Net sees (image + 3 coordinates); the log prior (37 channels) follows them.
IMAGE_CHANNELS = 4
#: Gaussian blur (mm) of the atlas prior: the residual misalignment of an affine registration.
PRIOR_SIGMA_MM = 2.5
#: Share of a uniform distribution mixed into the prior, so that no class is ever ruled out.
PRIOR_FLOOR = 0.05
#: The atlas prior channel as a weights manifest records it (``prior``); weights trained with another are refused.
PRIOR_ENTRY = {"atlas": "default", "sigma_mm": PRIOR_SIGMA_MM, "floor": PRIOR_FLOOR}


@lru_cache(maxsize=1)
def box_log_prior(sigma_mm: float = PRIOR_SIGMA_MM, floor: float = PRIOR_FLOOR) -> npt.NDArray[np.float32]:
    """Log prior probabilities of the 33 structure and 4 tissue classes on :data:`BOX`, shape (37, X, Y, Z).

    From the shipped atlas (:func:`mriquant.models.atlas.default_atlas`; SynthSeg's 20 label maps
    registered with SyN): each structure's prior is blurred by ``sigma_mm`` (an affine registration leaves
    more spread than SyN), sampled on the box, background is what the structures leave, tissues are sums of
    structures by :data:`~mriquant.models.deep_data.TISSUE_OF`, and each head is mixed with ``floor`` of a
    uniform distribution before the log.
    """
    from scipy import ndimage

    from mriquant.models.atlas import default_atlas

    atlas = default_atlas()
    spacing = float(np.sqrt((atlas.affine[:3, :3] ** 2).sum(0)).mean())
    source = np.stack([ndimage.gaussian_filter(p.astype(np.float32) / 255.0, sigma_mm / spacing, mode="constant")
                       for p in atlas.priors])  # fmt: skip
    world = BOX.coordinates().reshape(3, -1) * np.float32(100.0)
    voxel = np.linalg.inv(atlas.affine)[:3, :3] @ world + np.linalg.inv(atlas.affine)[:3, 3:]
    size = torch.tensor([float(n - 1) for n in source.shape[1:]])
    grid = (2.0 * torch.from_numpy(voxel.T.astype(np.float32)) / size - 1.0).flip(-1).view(1, *BOX.shape, 3)
    sampled = F.grid_sample(torch.from_numpy(source)[None], grid, mode="bilinear", padding_mode="zeros",
                            align_corners=True)[0]  # fmt: skip
    known = [k for k, label in enumerate(atlas.labels.tolist()) if label in STRUCTURES]
    channel = torch.tensor([STRUCTURES.index(int(atlas.labels[k])) for k in known])
    structures = torch.zeros((N_STRUCTURES, *BOX.shape)).index_add_(0, channel, sampled[known])
    structures[0] = (1.0 - structures[1:].sum(0)).clamp_(0.0, 1.0)
    structures /= structures.sum(0).clamp_(min=1e-6)
    tissue_of = torch.tensor([TISSUE_OF.get(label, 0) for label in STRUCTURES])
    tissues = torch.zeros((N_TISSUES, *BOX.shape)).index_add_(0, tissue_of, structures)
    out = [head.mul_(1.0 - floor).add_(floor / len(head)).log_() for head in (structures, tissues)]
    return torch.cat(out).numpy()


def fixed_channels() -> torch.Tensor:
    """The input channels that depend only on the box position: 3 MNI coordinates and the 37 log priors.

    Shape (40, X, Y, Z); training crops them like the image, inference takes them whole.
    """
    return torch.cat([torch.from_numpy(BOX.coordinates()), torch.from_numpy(box_log_prior())])


class DualTaskNet(nn.Module):
    """A :class:`UNet3D` whose logits are offset by a weighted log prior given with the input.

    Input (N, 4 + 37, X, Y, Z): the :data:`IMAGE_CHANNELS` the U-Net sees, then :func:`box_log_prior`'s
    channels (cropped like the image); output the 37 logits.
    """

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        self.config = config
        self.unet = UNet3D(config)
        self.prior_weight = nn.Parameter(torch.ones(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (N, 37, X, Y, Z): U-Net logits + per-head weight x log prior."""
        if x.shape[1] != IMAGE_CHANNELS + self.config.out_channels:
            raise ValueError(f"expected {IMAGE_CHANNELS} input + {self.config.out_channels} prior channels, "
                             f"got {x.shape[1]}")  # fmt: skip
        weight = torch.repeat_interleave(self.prior_weight, torch.tensor([N_STRUCTURES, N_TISSUES]))
        out: torch.Tensor = self.unet(x[:, :IMAGE_CHANNELS]) + weight.view(1, -1, 1, 1, 1) * x[:, IMAGE_CHANNELS:]
        return out


def default_config() -> UNetConfig:
    """The shipped architecture: 4 levels, (16, 32, 64, 128) feature maps, 4 inputs, 37 outputs."""
    return UNetConfig(in_channels=IMAGE_CHANNELS, channels=(16, 32, 64, 128), top_convs=1, spacing_mm=BOX.spacing_mm,
                      out_channels=N_STRUCTURES + N_TISSUES)  # fmt: skip


def build_network(config: UNetConfig) -> DualTaskNet:
    """A dual-task network for ``config`` (checks the channels)."""
    if config.out_channels != N_STRUCTURES + N_TISSUES or config.in_channels != IMAGE_CHANNELS:
        raise ValueError(f"dual-task config needs {IMAGE_CHANNELS} inputs and {N_STRUCTURES + N_TISSUES} outputs, "
                         f"got {config}")  # fmt: skip
    return DualTaskNet(config)


def split_heads(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 37, ...) logits -> structure (N, 33, ...) and tissue (N, 4, ...) logits."""
    return logits[:, :N_STRUCTURES], logits[:, N_STRUCTURES:]


def _forward(net: DualTaskNet, inputs: torch.Tensor) -> torch.Tensor:
    structures, tissues = split_heads(net(inputs[None]))
    return torch.cat([torch.softmax(structures, 1), torch.softmax(tissues, 1)], dim=1)[0]


@torch.no_grad()
def predict_box(net: DualTaskNet, inputs: torch.Tensor, *, flip: bool = False) -> torch.Tensor:
    """Class probabilities (33 structure + 4 tissue channels, each head sums to 1) for box inputs.

    Parameters
    ----------
    net : DualTaskNet
        The dual-task network, in eval mode.
    inputs : torch.Tensor, shape (4 + 37, X, Y, Z)
        Normalised image, the three coordinate channels and the log prior; sizes multiples of
        ``net.config.multiple``.
    flip : bool
        Also run the left-right mirror image (the box is symmetric about x = 0, and the coordinate and prior
        channels stay those of the unflipped box) and average, with left and right structure channels swapped back.
    """
    net.eval()
    probs = _forward(net, inputs)
    if flip:
        mirrored = torch.cat([inputs[:1].flip(1), inputs[1:]], dim=0)
        back = _forward(net, mirrored).flip(1)
        perm = torch.from_numpy(np.concatenate([flip_permutation(), N_STRUCTURES + np.arange(N_TISSUES)]))
        probs = 0.5 * (probs + back[perm])
    return probs
