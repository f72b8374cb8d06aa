"""Test doubles for spatial transforms."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from mriquant.core.image import Image


class WorldIdentity:
    """A subject-to-template transform that is the identity in world space (RAS+ mm).

    Stands in for :class:`mriquant.core.transform.Transform` where a test needs a method that
    samples template-space maps at the subject's voxels, without running a registration: the
    template position of a voxel is its own world position, so results do not depend on the
    grid's orientation.
    """

    kind = "syn"

    def __init__(self, image: Image) -> None:
        self.shape = image.shape
        self.affine = image.affine.copy()
        self.meta: dict[str, Any] = {"quality": {"ncc": 1.0}, "test_double": True}

    def template_coordinates(self) -> npt.NDArray[np.float32]:
        """World coordinates (3, I, J, K) of every voxel."""
        ijk = np.indices(self.shape, dtype=np.float64).reshape(3, -1)
        world = self.affine[:3, :3] @ ijk + self.affine[:3, 3:4]
        return world.reshape(3, *self.shape).astype(np.float32)

    def affine_ras(self) -> npt.NDArray[np.float64]:
        """The identity."""
        return np.eye(4)
