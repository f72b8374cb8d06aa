"""A compact 3D U-Net (PyTorch) for binary masks, described by a JSON-serialisable config.

Architecture: ``levels`` resolution levels; each level has two 3x3x3 convolutions, each followed by
instance normalisation (with affine parameters) and a leaky ReLU (slope 0.01); 2x max pooling on the way
down, 2x transposed convolutions on the way up, skip connections by concatenation, and a 1x1x1
convolution to one logit per voxel (apply a sigmoid for the probability). Channels double at every level
(``base``, ``2 base``, ...). Inputs must have sizes divisible by ``2 ** (levels - 1)``.

Examples
--------
>>> net = UNet3D(UNetConfig(base=8, levels=3))
>>> net(torch.zeros(1, 1, 16, 16, 16)).shape
torch.Size([1, 1, 16, 16, 16])

"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

__all__ = ["UNet3D", "UNetConfig"]


@dataclass(frozen=True)
class UNetConfig:
    """Architecture and working grid of a :class:`UNet3D`.

    Attributes
    ----------
    in_channels : int
        Input channels (1: one intensity image).
    base : int
        Channels of the first level; level ``l`` has ``base * 2**l``.
    levels : int
        Resolution levels (pooling steps + 1).
    spacing_mm : float
        Isotropic voxel size in mm of the grid the network works on.
    negative_slope : float
        Leaky ReLU slope.

    """

    in_channels: int = 1
    base: int = 16
    levels: int = 4
    spacing_mm: float = 2.0
    negative_slope: float = 0.01

    @property
    def multiple(self) -> int:
        """Input sizes must be multiples of this."""
        return int(2 ** (self.levels - 1))

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (stored next to the weights)."""
        return {"architecture": "UNet3D", **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> UNetConfig:
        """Inverse of :meth:`as_dict`; unknown keys are ignored."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _conv_block(cin: int, cout: int, slope: float) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(cin, cout, 3, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(slope, inplace=True),
        nn.Conv3d(cout, cout, 3, padding=1),
        nn.InstanceNorm3d(cout, affine=True),
        nn.LeakyReLU(slope, inplace=True),
    )


class UNet3D(nn.Module):
    """3D U-Net returning one logit per voxel: input (N, C, X, Y, Z) -> output (N, 1, X, Y, Z)."""

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config or UNetConfig()
        cfg = self.config
        ch = [cfg.base * 2**i for i in range(cfg.levels)]
        self.down = nn.ModuleList(
            [_conv_block(cfg.in_channels if i == 0 else ch[i - 1], ch[i], cfg.negative_slope) for i in range(cfg.levels)]
        )
        self.up = nn.ModuleList([nn.ConvTranspose3d(ch[i + 1], ch[i], 2, stride=2) for i in range(cfg.levels - 1)])
        self.merge = nn.ModuleList([_conv_block(2 * ch[i], ch[i], cfg.negative_slope) for i in range(cfg.levels - 1)])
        self.head = nn.Conv3d(ch[0], 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits (N, 1, X, Y, Z) for input (N, C, X, Y, Z)."""
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = nn.functional.max_pool3d(x, 2)
        for i in reversed(range(len(self.merge))):
            x = self.merge[i](torch.cat([self.up[i](x), skips[i]], dim=1))
        out: torch.Tensor = self.head(x)
        return out
