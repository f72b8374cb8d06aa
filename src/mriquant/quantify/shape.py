"""Shape of each labelled structure: surface area, sphericity, centroid, principal axes, extent, pieces.

Every value is measured in world millimetres through the label map's full 4x4 affine, so any
orientation, oblique rotation, shear or anisotropic spacing is handled exactly: voxel indices
(and mesh vertices) are mapped by the affine, never scaled by a spacing vector. The work is
vectorised per label (one crop per label from :func:`scipy.ndimage.find_objects`); there is no
Python loop over voxels or vertices.

Definitions
-----------
Surface area
    Marching cubes (:func:`skimage.measure.marching_cubes`, level 0.5) on the label's binary
    crop padded by one voxel, so every surface is closed. On binary data the mesh follows the
    voxel staircase and over-estimates the area of smooth surfaces by about 9 % whatever the
    voxel size; the mesh is therefore smoothed with Taubin's non-shrinking lambda/mu filter
    (Taubin 1995, "A signal processing approach to fair surface design", SIGGRAPH) in voxel
    index space before the vertices are mapped to world mm. Measured on voxelised spheres of
    radius 6 to 24 mm the area is within 2 % of ``4 pi r^2`` on 1 mm, oblique and sheared
    grids, and within 4 % with 1 x 1 x 3 mm voxels (the tall terraces of thick slices are not
    fully smoothed away); flat faces stay flat, while cube edges and corners are rounded (a
    10-voxel cube reads about 8 % low). A mesh piece that the filter would collapse (a single
    voxel, a one-voxel line) keeps its unsmoothed mesh.
Sphericity
    ``pi^(1/3) (6 V)^(2/3) / A`` (Wadell 1935) with ``A`` the mesh area and ``V`` the volume the
    same mesh encloses, so the value is the isoperimetric ratio of one closed surface: 1 for a
    sphere and below 1 for any other shape (the voxel-count volume is ``volume_ml``).
Compactness
    ``A^3 / (36 pi V^2)`` with the same ``A`` and ``V``: 1 for a sphere, larger for any other
    shape (it equals ``1 / sphericity^3``).
Centroid
    Mean world position of the label's voxel centres, ``[x, y, z]`` RAS+ mm.
Principal axes
    Full lengths (mm, descending) of the solid ellipsoid with the label's second moments: with
    ``C`` the covariance of the solid union of voxels (voxel-centre covariance plus each voxel's
    own ``M M^T / 12``, ``M`` the affine's 3x3 part), an ellipsoid of semi-axis ``a`` has
    eigenvalue ``a^2 / 5``, so the full length is ``2 sqrt(5 lambda)``.
Bounding box
    Axis-aligned world box of the voxels' full extents (each voxel is the parallelepiped of
    the affine around its centre, not just its centre point): ``{"min": [x, y, z], "max": ...}``.
Components
    Number of 26-connected pieces, and the largest piece's share of the label's voxels.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage, sparse
from scipy.sparse import csgraph

from mriquant.core.errors import InputError
from mriquant.core.image import LabelImage
from mriquant.core.labels import LabelTable

__all__ = ["TAUBIN_ITERATIONS", "structure_layout", "structure_shapes", "surface_area_and_volume"]

Float64 = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

#: Lambda/mu steps of Taubin smoothing applied to the marching-cubes mesh (voxel index space).
TAUBIN_ITERATIONS = 20
_TAUBIN_LAMBDA = 0.5
_TAUBIN_MU = -0.53
#: A smoothed mesh piece keeping less than this share of its enclosed volume has collapsed.
_COLLAPSE_FRACTION = 0.5
#: 26-connectivity.
_FULL = np.ones((3, 3, 3), dtype=bool)
_DIGITS = 4


def structure_shapes(
    labels: LabelImage, *, table: LabelTable, only: Iterable[int] | None = None
) -> list[dict[str, Any]]:
    """Shape descriptors of every non-zero label of ``labels``, in world millimetres.

    Parameters
    ----------
    labels : LabelImage
        Label map, shape (I, J, K), non-negative integers, affine voxel -> RAS+ mm.
    table : LabelTable
        Names of the labels (ids it lacks are named ``"label-<id>"``).
    only : iterable of int, optional
        Measure just these ids. An id that is absent from the map still gets a row, with
        ``voxels`` 0, every measurement None and a ``reason``.

    Returns
    -------
    list of dict
        One row per label, sorted by id, with keys ``label``, ``name``, ``voxels``,
        ``volume_ml`` (voxel count x voxel volume), ``surface_area_mm2``,
        ``enclosed_volume_ml`` (inside the mesh), ``sphericity``, ``compactness``,
        ``centroid_mm`` ([x, y, z]), ``principal_axes_mm`` (3 full lengths, descending),
        ``bbox_mm`` ({"min": [x, y, z], "max": [x, y, z]}), ``components``,
        ``largest_component_fraction``, and ``reason`` when a value is None. See the module
        docstring for the definitions.

    Raises
    ------
    InputError
        If the map holds negative labels or ``only`` holds a non-positive id.

    Examples
    --------
    >>> import numpy as np
    >>> from mriquant.core.labels import freesurfer
    >>> arr = np.zeros((20, 20, 20), np.int16)
    >>> arr[5:15, 5:15, 5:15] = 17
    >>> row = structure_shapes(LabelImage(arr, np.eye(4)), table=freesurfer())[0]
    >>> row["name"], row["centroid_mm"], row["components"]
    ('Left-Hippocampus', [9.5, 9.5, 9.5], 1)

    """
    array = _check_labels(labels)
    objects = ndimage.find_objects(array)
    present = [i + 1 for i, sl in enumerate(objects) if sl is not None]
    wanted = present if only is None else _check_only(only)
    rows = []
    for label in wanted:
        found = objects[label - 1] if label <= len(objects) else None
        if found is None:
            rows.append(_absent_row(label, table))
        else:
            rows.append(_shape_row(array, label, found, labels, table))
    return rows


def structure_layout(labels: LabelImage, *, only: Iterable[int] | None = None) -> list[dict[str, Any]]:
    """Cheap descriptors of every non-zero label: voxels, volume, centroid and connected pieces (no mesh).

    Parameters
    ----------
    labels : LabelImage
        Label map, shape (I, J, K), non-negative integers, affine voxel -> RAS+ mm.
    only : iterable of int, optional
        Measure just these ids; absent ids are left out.

    Returns
    -------
    list of dict
        Sorted by id, keys ``label``, ``voxels``, ``volume_ml``, ``centroid_mm`` ([x, y, z] RAS+ mm),
        ``components`` (26-connected) and ``largest_component_fraction``, as in :func:`structure_shapes`.

    """
    array = _check_labels(labels)
    objects = ndimage.find_objects(array)
    wanted = set(_check_only(only)) if only is not None else None
    rows = []
    for index, found in enumerate(objects):
        label = index + 1
        if found is None or (wanted is not None and label not in wanted):
            continue
        mask = array[found] == label
        origin = np.array([sl.start for sl in found], dtype=np.float64)
        centroid = _to_world((np.argwhere(mask).mean(axis=0) + origin)[None, :], labels.affine)[0]
        voxels = int(np.count_nonzero(mask))
        rows.append({"label": label, "voxels": voxels, "volume_ml": round(voxels * labels.voxel_volume_ml, _DIGITS),
                     "centroid_mm": _rounded(centroid), **_components(mask)})
    return rows


def _check_labels(labels: LabelImage) -> npt.NDArray[np.integer[Any]]:
    array = labels.array
    if array.size and int(array.min()) < 0:
        raise InputError(
            f"Expected non-negative labels, found {int(array.min())} in {labels.meta.get('source', 'label map')}; "
            "relabel negative values before measuring shapes."
        )
    return np.asarray(array)


def _check_only(only: Iterable[int]) -> list[int]:
    ids = sorted({int(v) for v in only})
    if ids and ids[0] <= 0:
        raise InputError(f"Expected positive label ids in only=, found {ids[0]}; 0 is the background.")
    return ids


def _absent_row(label: int, table: LabelTable) -> dict[str, Any]:
    keys = ("volume_ml", "surface_area_mm2", "enclosed_volume_ml", "sphericity", "compactness", "centroid_mm",
            "principal_axes_mm", "bbox_mm", "components", "largest_component_fraction")
    row: dict[str, Any] = {"label": label, "name": table.name_of(label), "voxels": 0}
    row.update(dict.fromkeys(keys))
    row["reason"] = "label not present in the map"
    return row


def _shape_row(
    array: npt.NDArray[Any], label: int, found: tuple[slice, ...], labels: LabelImage, table: LabelTable
) -> dict[str, Any]:
    """Every descriptor of one label, from its padded crop."""
    mask = np.pad(array[found] == label, 1)
    origin = np.array([sl.start - 1 for sl in found], dtype=np.float64)
    voxels = int(np.count_nonzero(mask))
    area, enclosed = surface_area_and_volume(mask, origin, labels.affine)
    row: dict[str, Any] = {
        "label": label,
        "name": table.name_of(label),
        "voxels": voxels,
        "volume_ml": round(voxels * labels.voxel_volume_ml, _DIGITS),
        "surface_area_mm2": round(area, _DIGITS),
        "enclosed_volume_ml": round(enclosed / 1000.0, _DIGITS),
        **_sphericity(area, enclosed),
        **_moments(mask, origin, labels.affine),
        **_components(mask),
    }
    return row


def _sphericity(area: float, volume: float) -> dict[str, Any]:
    if area <= 0.0 or volume <= 0.0:
        return {"sphericity": None, "compactness": None,
                "reason": "the surface mesh encloses no volume: sphericity and compactness undefined"}
    sphericity = np.pi ** (1.0 / 3.0) * (6.0 * volume) ** (2.0 / 3.0) / area
    compactness = area**3 / (36.0 * np.pi * volume**2)
    return {"sphericity": round(float(sphericity), _DIGITS), "compactness": round(float(compactness), _DIGITS)}


def _to_world(points: Float64, affine: Float64) -> Float64:
    """Map index-space points (N, 3) to world mm (N, 3) through the full affine."""
    world = np.empty_like(points)
    for row in range(3):  # three multiply-adds per axis: faster than a matmul with a strided (3, 3)
        world[:, row] = points[:, 0] * affine[row, 0] + points[:, 1] * affine[row, 1]
        world[:, row] += points[:, 2] * affine[row, 2] + affine[row, 3]
    return world


def _moments(mask: Mask, origin: Float64, affine: Float64) -> dict[str, Any]:
    """Centroid, principal axes and bounding box in world mm (voxel centres -> world)."""
    index = np.argwhere(mask).astype(np.float64) + origin
    world = _to_world(index, affine)
    centroid = world.mean(axis=0)
    linear = affine[:3, :3]
    centred = world - centroid
    covariance = centred.T @ centred / len(world) + linear @ linear.T / 12.0
    eigenvalues = np.clip(np.linalg.eigvalsh(covariance), 0.0, None)[::-1]
    half_extent = 0.5 * np.abs(linear).sum(axis=1)
    return {
        "centroid_mm": _rounded(centroid),
        "principal_axes_mm": _rounded(2.0 * np.sqrt(5.0 * eigenvalues)),
        "bbox_mm": {"min": _rounded(world.min(axis=0) - half_extent), "max": _rounded(world.max(axis=0) + half_extent)},
    }


def _rounded(values: Float64) -> list[float]:
    return [round(float(v), _DIGITS) for v in values]


def _components(mask: Mask) -> dict[str, Any]:
    """Number of 26-connected pieces and the largest one's share of the voxels."""
    pieces, count = ndimage.label(mask, structure=_FULL)
    sizes = np.bincount(pieces.ravel())[1:]
    return {"components": int(count), "largest_component_fraction": round(float(sizes.max() / sizes.sum()), _DIGITS)}


def surface_area_and_volume(mask: Mask, origin: Float64, affine: Float64) -> tuple[float, float]:
    """Area (mm^2) and enclosed volume (mm^3) of the smoothed marching-cubes surface of ``mask``.

    Parameters
    ----------
    mask : numpy.ndarray of bool, shape (I, J, K)
        Binary crop, False on its whole border (pad by one voxel first) so every surface closes.
    origin : numpy.ndarray, shape (3,)
        Index of ``mask[0, 0, 0]`` in the full grid.
    affine : numpy.ndarray, shape (4, 4)
        Voxel -> RAS+ mm affine of the full grid.

    Returns
    -------
    area_mm2, volume_mm3 : float
        Both 0.0 when the mask is empty.

    """
    if not mask.any():
        return 0.0, 0.0
    from skimage.measure import marching_cubes

    vertices, faces, _, _ = marching_cubes(mask.view(np.uint8), 0.5)
    smoothed, index_volume = _taubin_smooth(vertices.astype(np.float64), faces)
    world = _to_world(smoothed + origin, affine)
    area = _mesh_area(world, faces)
    return area, index_volume * abs(float(np.linalg.det(affine[:3, :3])))


def _adjacency(faces: npt.NDArray[np.integer[Any]], n_vertices: int) -> sparse.csr_matrix:
    """Symmetric vertex adjacency (1 per mesh edge) of a triangle mesh."""
    rows = np.concatenate([faces[:, 0], faces[:, 1], faces[:, 2]])
    cols = np.concatenate([faces[:, 1], faces[:, 2], faces[:, 0]])
    edges = sparse.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_vertices, n_vertices)).tocsr()
    adjacency = (edges + edges.T).tocsr()
    adjacency.data[:] = 1.0
    return adjacency


def _signed_volumes(vertices: Float64, faces: npt.NDArray[np.integer[Any]]) -> Float64:
    """Signed volume of the tetrahedron (origin, triangle) of every face (divergence theorem)."""
    a, b, c = (vertices[faces[:, corner]] for corner in range(3))
    volumes: Float64 = _dot(a, _cross(b, c)) / 6.0
    return volumes


def _mesh_area(vertices: Float64, faces: npt.NDArray[np.integer[Any]]) -> float:
    """Total area of a triangle mesh (same units squared as ``vertices``)."""
    a, b, c = (vertices[faces[:, corner]] for corner in range(3))
    normal = _cross(b - a, c - a)
    return 0.5 * float(np.sqrt(_dot(normal, normal)).sum())


def _cross(u: Float64, v: Float64) -> Float64:
    """Row-wise cross product of (N, 3) arrays (faster than ``np.cross`` for large N)."""
    out = np.empty_like(u)
    out[:, 0] = u[:, 1] * v[:, 2] - u[:, 2] * v[:, 1]
    out[:, 1] = u[:, 2] * v[:, 0] - u[:, 0] * v[:, 2]
    out[:, 2] = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    return out


def _dot(u: Float64, v: Float64) -> Float64:
    """Row-wise dot product of (N, 3) arrays."""
    dot: Float64 = u[:, 0] * v[:, 0] + u[:, 1] * v[:, 1] + u[:, 2] * v[:, 2]
    return dot


def _taubin_smooth(vertices: Float64, faces: npt.NDArray[np.integer[Any]]) -> tuple[Float64, float]:
    """Taubin lambda/mu smoothing of a closed mesh; collapsing pieces keep their original vertices.

    Returns the smoothed vertices and the volume they enclose (index units, voxels).
    """
    adjacency = _adjacency(faces, len(vertices))
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    average = sparse.diags(1.0 / np.maximum(degree, 1.0)) @ adjacency
    identity = sparse.identity(len(vertices), format="csr")
    # v + f (W v - v) as one sparse matrix per step: no temporaries in the loop
    shrink = ((1.0 - _TAUBIN_LAMBDA) * identity + _TAUBIN_LAMBDA * average).tocsr()
    inflate = ((1.0 - _TAUBIN_MU) * identity + _TAUBIN_MU * average).tocsr()
    smoothed = vertices
    for _ in range(TAUBIN_ITERATIONS):
        smoothed = inflate @ (shrink @ smoothed)
    return _restore_collapsed(vertices, smoothed, faces, adjacency)


def _restore_collapsed(
    original: Float64, smoothed: Float64, faces: npt.NDArray[np.integer[Any]], adjacency: sparse.csr_matrix
) -> tuple[Float64, float]:
    """Put back the original vertices of every mesh piece whose enclosed volume the smoothing collapsed.

    Returns the vertices and the volume they enclose (signed per piece, so cavities count negative).
    """
    count, piece = csgraph.connected_components(adjacency, directed=False)
    face_piece = piece[faces[:, 0]]
    before = np.bincount(face_piece, _signed_volumes(original, faces), minlength=count)
    after = np.bincount(face_piece, _signed_volumes(smoothed, faces), minlength=count)
    collapsed = np.abs(after) < _COLLAPSE_FRACTION * np.abs(before)
    volume = abs(float(np.where(collapsed, before, after).sum()))
    if not collapsed.any():
        return smoothed, volume
    return np.where(collapsed[piece][:, None], original, smoothed), volume
