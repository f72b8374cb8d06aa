"""Shape descriptors in world mm: voxelised spheres, ellipsoids and cubes on straight, anisotropic and oblique grids."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import pytest

from mriquant.core.errors import InputError
from mriquant.core.image import LabelImage
from mriquant.core.labels import freesurfer
from mriquant.quantify.shape import structure_shapes
from mriquant.testing import make_phantom

Inside = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.bool_]]


def _rotation(ax: float, ay: float, az: float) -> npt.NDArray[np.float64]:
    cx, sx, cy, sy, cz, sz = (f(np.radians(a)) for a in (ax, ay, az) for f in (np.cos, np.sin))
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _affine(linear: npt.NDArray[np.float64], shape: tuple[int, int, int], center: npt.ArrayLike) -> np.ndarray:
    """Affine with 3x3 part ``linear`` whose grid centre lands on world ``center``."""
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = np.asarray(center, float) - linear @ ((np.asarray(shape) - 1) / 2)
    return affine


def _voxelise(shape: tuple[int, int, int], affine: np.ndarray, inside: Inside, label: int = 17) -> LabelImage:
    """Label the voxels whose world centre is inside the shape."""
    ijk = np.indices(shape, dtype=np.float64).reshape(3, -1)
    world = affine[:3, :3] @ ijk + affine[:3, 3:]
    arr = np.where(inside(world).reshape(shape), label, 0).astype(np.int16)
    return LabelImage(arr, affine)


def _ball(center: npt.ArrayLike, radius: float) -> Inside:
    c = np.asarray(center, float)[:, None]
    return lambda w: ((w - c) ** 2).sum(axis=0) <= radius**2


def _one(labels: LabelImage) -> dict:
    rows = structure_shapes(labels, table=freesurfer())
    assert len(rows) == 1
    return rows[0]


CENTER = (12.3, -20.7, 31.1)
#: Grid (3x3 part, shape) and the area tolerance: thick slices leave terraces the mesh smoothing only partly removes.
GRIDS = {
    "1mm": (np.eye(3), (36, 36, 36), 0.025),
    "anisotropic": (np.diag([0.8, 1.1, 2.5]), (44, 32, 16), 0.04),
    "oblique-lps": (_rotation(20, -15, 30) @ np.diag([-1.0, -0.9, 1.6]), (40, 44, 26), 0.025),
    "sheared": (np.array([[1.0, 0.35, 0.0], [0.0, 1.0, 0.2], [0.1, 0.0, 1.3]]), (44, 40, 32), 0.025),
}


@pytest.mark.parametrize("grid", sorted(GRIDS))
def test_sphere_area_sphericity_axes_and_centroid(grid: str) -> None:
    linear, shape, area_tolerance = GRIDS[grid]
    radius = 12.0
    row = _one(_voxelise(shape, _affine(linear, shape, CENTER), _ball(CENTER, radius)))
    assert row["surface_area_mm2"] == pytest.approx(4 * np.pi * radius**2, rel=area_tolerance)
    assert row["volume_ml"] == pytest.approx(4 / 3 * np.pi * radius**3 / 1000, rel=0.03)
    assert row["enclosed_volume_ml"] == pytest.approx(row["volume_ml"], rel=0.03)
    assert 0.96 < row["sphericity"] <= 1.0
    assert row["compactness"] == pytest.approx(row["sphericity"] ** -3, rel=1e-3)
    assert row["principal_axes_mm"] == pytest.approx([2 * radius] * 3, rel=0.03)
    assert row["centroid_mm"] == pytest.approx(CENTER, abs=0.25)
    assert row["bbox_mm"]["min"] == pytest.approx(np.subtract(CENTER, radius), abs=2.0)
    assert row["bbox_mm"]["max"] == pytest.approx(np.add(CENTER, radius), abs=2.0)
    assert row["components"] == 1 and row["largest_component_fraction"] == 1.0
    assert row["name"] == "Left-Hippocampus" and "reason" not in row


def _thomsen_area(a: float, b: float, c: float) -> float:
    """Ellipsoid surface area, Knud Thomsen's approximation (relative error below 1.1 %)."""
    p = 1.6075
    return float(4 * np.pi * (((a * b) ** p + (a * c) ** p + (b * c) ** p) / 3) ** (1 / p))


def test_rotated_ellipsoid_axes_and_area() -> None:
    semi = np.array([16.0, 9.0, 5.0])
    rot = _rotation(25, 10, -35)

    def inside(w: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
        local = rot.T @ (w - np.asarray(CENTER)[:, None])
        return ((local / semi[:, None]) ** 2).sum(axis=0) <= 1.0

    linear, shape = np.diag([0.9, 1.0, 1.2]), (44, 40, 36)
    row = _one(_voxelise(shape, _affine(linear, shape, CENTER), inside))
    assert row["principal_axes_mm"] == pytest.approx(2 * semi, rel=0.04)
    assert row["surface_area_mm2"] == pytest.approx(_thomsen_area(*semi), rel=0.04)
    assert row["sphericity"] < 0.85
    assert row["centroid_mm"] == pytest.approx(CENTER, abs=0.25)


def test_cube_axes_and_bbox_are_exact() -> None:
    arr = np.zeros((20, 20, 20), np.int16)
    arr[5:15, 5:15, 5:15] = 10  # 10 voxels of 2 mm: a 20 mm cube
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-7.0, 3.0, 100.0)
    row = _one(LabelImage(arr, affine))
    side = 20.0
    # solid cube: second moment side^2 / 12 on every axis -> full length 2 sqrt(5 side^2 / 12)
    assert row["principal_axes_mm"] == pytest.approx([2 * np.sqrt(5 * side**2 / 12)] * 3, rel=1e-6)
    assert row["bbox_mm"]["min"] == pytest.approx([-7.0 + 10 - 1, 3.0 + 10 - 1, 100.0 + 10 - 1])
    assert row["bbox_mm"]["max"] == pytest.approx([-7.0 + 28 + 1, 3.0 + 28 + 1, 100.0 + 28 + 1])
    assert row["centroid_mm"] == pytest.approx([-7.0 + 19, 3.0 + 19, 100.0 + 19])
    assert row["volume_ml"] == pytest.approx(8.0)
    # flat faces stay flat; only edges and corners are rounded by the mesh
    assert 0.88 * 6 * side**2 < row["surface_area_mm2"] < 6 * side**2


def test_components_use_26_connectivity() -> None:
    arr = np.zeros((30, 30, 30), np.int16)
    arr[2:8, 2:8, 2:8] = 12  # 216 voxels
    arr[20:24, 20:24, 20:24] = 12  # 64 voxels, far away
    row = _one(LabelImage(arr, np.eye(4)))
    assert row["components"] == 2
    assert row["largest_component_fraction"] == pytest.approx(216 / 280, abs=1e-4)
    arr[8, 8, 8] = 12  # touches the first cube at a corner only: still one piece with it
    arr[9, 9, 9] = 12
    row = _one(LabelImage(arr, np.eye(4)))
    assert row["components"] == 2
    assert row["largest_component_fraction"] == pytest.approx(218 / 282, abs=1e-4)


def test_single_voxel_is_defined() -> None:
    arr = np.zeros((5, 5, 5), np.int16)
    arr[2, 2, 2] = 18
    row = _one(LabelImage(arr, np.diag([1.0, 1.0, 3.0, 1.0])))
    assert row["surface_area_mm2"] > 0
    assert 0 < row["sphericity"] <= 1
    assert row["principal_axes_mm"] == pytest.approx(2 * np.sqrt(5 / 12) * np.array([3.0, 1.0, 1.0]), abs=1e-3)
    assert row["bbox_mm"] == {"min": [1.5, 1.5, 4.5], "max": [2.5, 2.5, 7.5]}


def test_only_absent_and_bad_labels() -> None:
    arr = np.zeros((10, 10, 10), np.int16)
    arr[2:5, 2:5, 2:5] = 17
    arr[6:9, 6:9, 6:9] = 53
    labels = LabelImage(arr, np.eye(4))
    rows = structure_shapes(labels, table=freesurfer(), only=[53, 99])
    assert [r["label"] for r in rows] == [53, 99]
    assert rows[0]["voxels"] == 27 and rows[0]["name"] == "Right-Hippocampus"
    absent = rows[1]
    assert absent["voxels"] == 0 and absent["surface_area_mm2"] is None and absent["sphericity"] is None
    assert absent["reason"] and absent["name"] == "label-99"
    with pytest.raises(InputError, match="positive"):
        structure_shapes(labels, table=freesurfer(), only=[0])
    arr[0, 0, 0] = -3
    with pytest.raises(InputError, match="non-negative"):
        structure_shapes(LabelImage(arr, np.eye(4)), table=freesurfer())


def test_phantom_shapes_do_not_depend_on_array_orientation() -> None:
    ras = make_phantom(spacing=(3.0, 3.0, 3.0), orientation="RAS", noise=0.0, seed=3).structures
    lia = make_phantom(spacing=(3.0, 3.0, 3.0), orientation="LIA", noise=0.0, seed=3).structures
    a = {r["label"]: r for r in structure_shapes(ras, table=freesurfer())}
    b = {r["label"]: r for r in structure_shapes(lia, table=freesurfer())}
    assert sorted(a) == sorted(b) == [2, 3, 4, 10, 11, 12, 24, 41, 42, 43, 49, 50, 51]
    for label, row in a.items():
        other = b[label]
        assert other["voxels"] == row["voxels"]
        assert other["centroid_mm"] == pytest.approx(row["centroid_mm"], abs=1e-3)
        assert other["principal_axes_mm"] == pytest.approx(row["principal_axes_mm"], rel=1e-4)
        assert other["bbox_mm"]["min"] == pytest.approx(row["bbox_mm"]["min"], abs=1e-3)
        assert other["surface_area_mm2"] == pytest.approx(row["surface_area_mm2"], rel=0.01)
    # RAS+: the subject's left is world x < 0
    assert a[10]["centroid_mm"][0] < 0 < a[49]["centroid_mm"][0]
