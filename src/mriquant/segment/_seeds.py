"""Seeds for the region methods: world-coordinate seeds and automatic lateral-ventricle seeds.

User seeds are points in world RAS+ millimetres (what a viewer's cursor readout shows); they
are mapped to voxels with the image's affine, so the same seeds give the same region whatever
the voxel order, orientation or obliquity of the scan.

Automatic seeds find the two lateral ventricles without registration. The rule, in order:

1. **Brain mask.** The given mask, or, when there is none, the image foreground (above 10 % of
   the 99th intensity percentile, largest connected component, holes filled); pass a brain
   mask for heads that still have a skull.
2. **Midline.** The plane through the mask's centroid whose normal is the world x (left-right)
   axis. Left is the side of smaller world x (RAS+).
3. **CSF-like voxels.** Voxels of the mask below the lower of two three-class Otsu thresholds
   (CSF | GM | WM) on T1-like contrast, where CSF is dark; on T2-like contrast (CSF bright) the
   intensities are negated first.
4. **Central region.** An ellipsoid around the mask's centroid with semi-axes 50 % (x),
   50 % (y) and 30 % (z) of the mask's half-extent along each world axis, its centre raised by
   10 % of the half-extent in z, minus a slab within 6 % of the half-width of the midline. On
   the 15 MICCAI 2012 training brains the lateral ventricles' centroids sit at 18-24 % of the
   half-width from the midline and 4-9 % above the centroid; the slab and the lowered floor
   keep out the third ventricle, the interhemispheric fissure and the quadrigeminal and
   ambient cisterns, which otherwise outgrow a small ventricle.
5. **Blobs.** The CSF-like central voxels are eroded once (6-connected), which removes sulcal
   CSF thinner than about three voxels; what remains is split at the midline and labelled in
   3D (6-connectivity). On each side the largest blob is taken as that lateral ventricle (on
   the MICCAI brains it is at least 4 times larger than the runner-up that is not ventricle).
6. **Seed point.** The deepest voxel of the blob (largest Euclidean distance to its surface,
   in mm), so the seed sits well inside the ventricle.

References
----------
.. [1] N. Otsu, "A threshold selection method from gray-level histograms", IEEE Trans. Syst.
   Man Cybern. 9(1), 62-66, 1979 (the multi-level form is scikit-image's
   ``threshold_multiotsu``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.geometry import Box, bounding_box, world_to_voxel
from mriquant.core.image import Image, LabelImage
from mriquant.preprocess.brain_boundary import largest_filled

Contrast = Literal["T1", "T2"]
Vec3 = tuple[float, float, float]
BoolArray = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float32]

#: Face-connected (6-neighbour) structuring element used for every 3D labelling here.
FACE = ndimage.generate_binary_structure(3, 1)

#: Semi-axes of the central search ellipsoid as fractions of the mask's half-extent (x, y, z).
CENTRAL_FRACTIONS = (0.5, 0.5, 0.3)
#: Upward shift of the ellipsoid's centre, as a fraction of the mask's half-extent in z.
CENTRAL_RAISE = 0.1
#: Half-width of the excluded midline slab, as a fraction of the mask's half-extent in x.
MIDLINE_GAP = 0.06
#: Foreground threshold (fraction of the 99th percentile) used when no brain mask is given.
FOREGROUND_FRACTION = 0.1


@dataclass(frozen=True)
class Midline:
    """The midsagittal plane in world RAS+ mm.

    Attributes
    ----------
    point : tuple of float
        A point of the plane (the brain mask's centroid), mm.
    normal : tuple of float
        Unit normal pointing to the subject's right (+x in RAS+).
    """

    point: Vec3
    normal: Vec3 = (1.0, 0.0, 0.0)

    def signed_distance(self, shape: tuple[int, int, int], affine: npt.NDArray[np.float64]) -> FloatArray:
        """Signed distance (mm) of every voxel centre to the plane; negative on the left.

        Returns
        -------
        numpy.ndarray, shape (I, J, K), float32
        """
        return world_axis_field(shape, affine, np.asarray(self.normal), np.asarray(self.point))


@dataclass(frozen=True)
class VentricleSeeds:
    """Automatic seeds of the two lateral ventricles.

    Attributes
    ----------
    left, right : tuple of float
        World RAS+ position (mm) of the left and right seed.
    midline : Midline
        Plane used to tell left from right.
    threshold : float
        CSF-like threshold on the contrast-adjusted intensities (negated for T2).
    blob_ml : tuple of float
        Volume (mL) of the eroded blob each seed was taken from (left, right).
    """

    left: Vec3
    right: Vec3
    midline: Midline
    threshold: float
    blob_ml: tuple[float, float]

    @property
    def points(self) -> tuple[Vec3, Vec3]:
        """The seeds as ``(left, right)``."""
        return self.left, self.right

    def as_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (for a segmentation's ``info``)."""
        return {
            "left_mm": [round(v, 2) for v in self.left],
            "right_mm": [round(v, 2) for v in self.right],
            "midline_point_mm": [round(v, 2) for v in self.midline.point],
            "csf_threshold": round(self.threshold, 4),
            "blob_ml": [round(v, 3) for v in self.blob_ml],
        }


def world_axis_field(
    shape: tuple[int, int, int],
    affine: npt.NDArray[np.float64],
    direction: npt.NDArray[np.float64],
    origin: npt.NDArray[np.float64],
) -> FloatArray:
    """``direction . (world(voxel) - origin)`` at every voxel centre, shape ``shape``, float32 mm.

    Built from three broadcast 1D ramps, so it costs one full-size array.
    """
    offset = float(direction @ (affine[:3, 3] - origin))
    total = np.full(shape, offset, dtype=np.float32)
    for axis, n in enumerate(shape):
        step = float(direction @ affine[:3, axis])
        if step != 0.0:
            ramp_shape = [1, 1, 1]
            ramp_shape[axis] = n
            total += (np.arange(n, dtype=np.float32) * np.float32(step)).reshape(ramp_shape)
    return total


def voxel_to_world(affine: npt.NDArray[np.float64], ijk: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Map voxel indices ``(N, 3)`` to world RAS+ mm ``(N, 3)``."""
    points = np.atleast_2d(np.asarray(ijk, dtype=np.float64))
    return np.asarray(points @ affine[:3, :3].T + affine[:3, 3], dtype=np.float64)


def seeds_to_voxels(image: Image, seeds: npt.ArrayLike) -> npt.NDArray[np.intp]:
    """Nearest voxel indices ``(N, 3)`` of world seeds ``(N, 3)`` in RAS+ mm.

    Raises
    ------
    InputError
        If a seed lies outside the image's field of view.
    """
    world = np.atleast_2d(np.asarray(seeds, dtype=np.float64))
    if world.ndim != 2 or world.shape[1] != 3 or not np.all(np.isfinite(world)):
        raise InputError(f"Expected seeds as (x, y, z) triples in RAS mm, found {np.asarray(seeds).tolist()}.")
    voxels = np.rint(world_to_voxel(image.affine, world)).astype(np.intp)
    outside = np.any((voxels < 0) | (voxels >= np.asarray(image.shape)), axis=1)
    if np.any(outside):
        first = int(np.flatnonzero(outside)[0])
        raise InputError(
            f"Expected seeds inside the image, found seed {tuple(round(v, 1) for v in world[first])} mm "
            f"at voxel {tuple(int(v) for v in voxels[first])} outside shape {image.shape}; "
            "give seeds in world RAS mm (a viewer's RAS readout) within the field of view."
        )
    return voxels


def brain_or_foreground(image: Image, mask: LabelImage | None) -> BoolArray:
    """The brain mask as booleans, or the image foreground when no mask is given (rule step 1)."""
    if mask is not None:
        return np.asarray(mask.array > 0)
    values = np.asarray(image.array, dtype=np.float32)
    high = float(np.percentile(values[values > 0], 99.0)) if np.any(values > 0) else 0.0
    fg = values > FOREGROUND_FRACTION * high
    if not np.any(fg):
        raise InputError(f"Expected an image with a foreground, found none in {image.meta.get('source', 'image')}.")
    return largest_filled(fg)


def box_affine(affine: npt.NDArray[np.float64], box: Box) -> npt.NDArray[np.float64]:
    """Affine of the sub-grid ``box`` of a grid with ``affine``."""
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ np.array([s.start for s in box], dtype=np.float64) + affine[:3, 3]
    return out


def contrast_adjusted(values: npt.NDArray[Any], contrast: str) -> FloatArray:
    """Intensities in which CSF is dark: unchanged for T1, negated for T2 (float32)."""
    if contrast not in ("T1", "T2"):
        raise InputError(f"Expected contrast 'T1' (CSF dark) or 'T2' (CSF bright), found {contrast!r}.")
    out = np.asarray(values, dtype=np.float32)
    return -out if contrast == "T2" else out


def csf_threshold(values: FloatArray) -> float:
    """The lower of two three-class Otsu thresholds of ``values`` (CSF | GM | WM, CSF dark)."""
    from skimage.filters import threshold_multiotsu

    if values.size < 27 or float(values.max()) <= float(values.min()):
        raise InputError("Expected a brain with some contrast, found a flat or tiny masked image; check the mask.")
    return float(threshold_multiotsu(values, classes=3)[0])


def _world_extent(mask: BoolArray, affine: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.float64], ...]:
    """Centroid (3,) and half-extent (3,) of the mask in world mm (0.5-99.5th percentiles per axis).

    Computed from every mask voxel one world axis at a time, so the result does not depend on
    the voxel order (the same for all 48 orientations of a scan).
    """
    centre, half = np.zeros(3), np.ones(3)
    for axis in range(3):
        coord = world_axis_field(mask.shape, affine, np.eye(3)[axis], np.zeros(3))[mask]
        lo, hi = np.percentile(coord, [0.5, 99.5])
        centre[axis] = float(coord.mean(dtype=np.float64))
        half[axis] = max(float(hi - lo) / 2.0, 1.0)
    return centre, half


def central_region(mask: BoolArray, affine: npt.NDArray[np.float64]) -> tuple[BoolArray, Midline]:
    """The central search ellipsoid inside ``mask`` (rule step 4) and the midline (step 2)."""
    centre, half = _world_extent(mask, affine)
    middle = centre + np.array([0.0, 0.0, CENTRAL_RAISE * half[2]])
    total = np.zeros(mask.shape, dtype=np.float32)
    for axis, fraction in enumerate(CENTRAL_FRACTIONS):
        direction = np.eye(3)[axis] / (fraction * half[axis])
        total += world_axis_field(mask.shape, affine, direction, middle) ** 2
    midline = Midline(point=(float(centre[0]), float(centre[1]), float(centre[2])))
    lateral = np.abs(midline.signed_distance(mask.shape, affine)) >= MIDLINE_GAP * half[0]
    return np.asarray(mask & (total < 1.0) & lateral), midline


def _largest_blob(blobs: BoolArray) -> BoolArray | None:
    """The largest 6-connected component of ``blobs``, or None when empty."""
    labels, count = ndimage.label(blobs, structure=FACE)
    if count == 0:
        return None
    return np.asarray(labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1)


def deepest_voxel(
    blob: BoolArray, spacing: tuple[float, float, float], affine: npt.NDArray[np.float64]
) -> npt.NDArray[np.intp]:
    """Index (3,) of the voxel of ``blob`` farthest (in mm) from the blob's surface (rule step 6).

    Ties go to the voxel nearest the blob's centroid, then to the smallest world (x, y, z), so
    the choice does not depend on the voxel order.
    """
    box = bounding_box(blob, 1)
    depth = ndimage.distance_transform_edt(blob[box], sampling=spacing)
    corner = np.array([s.start for s in box])
    ties = np.argwhere(depth >= depth.max() - 1e-6) + corner
    if len(ties) == 1:
        return np.asarray(ties[0], dtype=np.intp)
    world = np.round(voxel_to_world(affine, ties), 3)
    centroid = voxel_to_world(affine, np.argwhere(blob).mean(axis=0))[0]
    distance = np.round(np.linalg.norm(world - centroid, axis=1), 3)
    order = np.lexsort((world[:, 2], world[:, 1], world[:, 0], distance))
    return np.asarray(ties[order[0]], dtype=np.intp)


def find_ventricle_seeds(image: Image, mask: LabelImage | None = None, *, contrast: Contrast = "T1") -> VentricleSeeds:
    """Find one seed in each lateral ventricle (the rule in this module's docstring).

    Parameters
    ----------
    image : Image
        Brain scan, any orientation; skull-stripped or with a brain ``mask``.
    mask : LabelImage, optional
        Brain mask on ``image``'s grid.
    contrast : {"T1", "T2"}
        ``"T1"`` when CSF is dark (T1, FLAIR), ``"T2"`` when it is bright (T2, PD).

    Returns
    -------
    VentricleSeeds
        World positions (RAS+ mm) of the left and right seeds, the midline and the threshold.

    Raises
    ------
    InputError
        If no CSF-like blob is found on one side.
    """
    brain = brain_or_foreground(image, mask)
    box = bounding_box(brain, 1)
    sub_affine = box_affine(image.affine, box)
    values = contrast_adjusted(image.array[box], contrast)
    inside = brain[box]
    threshold = csf_threshold(values[inside])
    central, midline = central_region(inside, sub_affine)
    blobs = ndimage.binary_erosion(central & (values < threshold), structure=FACE)
    side = midline.signed_distance(blobs.shape, sub_affine) < 0
    seeds: list[Vec3] = []
    volumes: list[float] = []
    for name, half in (("left", blobs & side), ("right", blobs & ~side)):
        blob = _largest_blob(half)
        if blob is None:
            raise InputError(
                f"Expected a CSF-like blob near the centre of the {name} hemisphere, found none; "
                "check --contrast (T1: CSF dark, T2: CSF bright) and the brain mask, or pass --seeds."
            )
        world = voxel_to_world(sub_affine, deepest_voxel(blob, image.spacing, sub_affine))[0]
        seeds.append((float(world[0]), float(world[1]), float(world[2])))
        volumes.append(float(blob.sum()) * image.voxel_volume_ml)
    return VentricleSeeds(seeds[0], seeds[1], midline, threshold, (volumes[0], volumes[1]))
