"""Spatial transforms between a subject's grid and a template's: ANTs transform files behind a typed object.

A :class:`Transform` is a list of ANTs transform files (ITK affine ``.mat`` files and displacement fields)
with the grids they connect. Files follow the ANTs conventions: a list of ITK transforms applied, for a
point of the reference grid, first entry first (``antsApplyTransforms -t A -t B`` maps a point ``x`` to
``B(A(x))``). ANTs physical space is LPS; :func:`mriquant.core.ants_bridge.to_ants` converts images, and
:func:`linear_matrix` flips the first two axes of ANTs matrices. Registration, which makes transforms, lives
in :mod:`mriquant.preprocess.register`.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from mriquant.core.ants_bridge import ants_module, to_ants
from mriquant.core.errors import InputError
from mriquant.core.image import Image, LabelImage

__all__ = ["TRANSFORM_FORMAT", "Grid", "Transform", "TransformFile", "TransformFolder", "linear_matrix"]

Direction = Literal["to_template", "to_subject"]
Interpolation = Literal["linear", "nearest", "label", "bspline"]
ImageT = TypeVar("ImageT", bound=Image)

_INTERPOLATORS: dict[str, str] = {
    "linear": "linear",
    "nearest": "nearestNeighbor",
    "label": "genericLabel",
    "bspline": "bSpline",
}
_LPS = np.diag([-1.0, -1.0, 1.0])
#: The ``format`` of a transform description (``to_mni.json``).
TRANSFORM_FORMAT = "mriquant.transform"
_ORDER_NOTE = (
    "ANTs antsApplyTransforms order: for a point of the reference grid the first entry is applied first; "
    "'forward' pulls subject images onto the template grid (reference = template), 'inverse' pulls template "
    "images onto the subject grid; ANTs/ITK files work in LPS mm."
)


@dataclass(frozen=True, eq=False)
class Grid:
    """A voxel grid: shape ``(I, J, K)`` and 4x4 voxel-to-RAS+ affine in mm."""

    shape: tuple[int, int, int]
    affine: npt.NDArray[np.float64]

    @classmethod
    def of(cls, image: Image) -> Grid:
        """Return the grid of ``image``."""
        return cls(image.shape, image.affine.copy())

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"shape": list(self.shape), "affine": self.affine.tolist()}  # full precision: exact round trip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Grid:
        """Inverse of :meth:`as_dict`."""
        i, j, k = (int(n) for n in data["shape"])
        return cls((i, j, k), np.asarray(data["affine"], dtype=np.float64))


@dataclass(frozen=True)
class TransformFile:
    """One ANTs transform file in a list.

    Attributes
    ----------
    path : pathlib.Path
        ``.mat`` (ITK affine) or ``.nii.gz`` (displacement field).
    invert : bool
        Apply the inverse (affine files only).
    role : str
        ``"affine"``, ``"warp"`` or ``"invwarp"`` (names the file on save).

    """

    path: Path
    invert: bool
    role: str


#: Fill value marking "outside the template" in coordinate warps (far beyond any head, in mm).
_OUTSIDE = 1.0e6


class TransformFolder:
    """A private temporary folder deleted when the last object holding it is collected."""

    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="mriquant-tx-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------------
# ANTs helpers


def _grid_image(grid: Grid) -> Any:
    """An all-zero float32 ANTsImage on ``grid`` (the reference for resampling)."""
    return to_ants(Image(np.zeros(grid.shape, np.float32), grid.affine))


def linear_matrix(step: TransformFile) -> npt.NDArray[np.float64]:
    """4x4 RAS+ world-to-world matrix of an ITK linear transform file (point mapping, reference -> moving)."""
    ants = ants_module()

    tx = ants.read_transform(str(step.path))
    corners = np.vstack([np.zeros(3), np.eye(3)])
    mapped = np.array([tx.apply_to_point(tuple(_LPS @ p)) for p in corners], dtype=np.float64) @ _LPS
    matrix = np.eye(4)
    matrix[:3, :3] = (mapped[1:] - mapped[0]).T
    matrix[:3, 3] = mapped[0]
    return np.asarray(np.linalg.inv(matrix) if step.invert else matrix, dtype=np.float64)


# ----------------------------------------------------------------------------------------------------------------------
# the transform


@dataclass(frozen=True, eq=False)
class Transform:
    """A subject <-> template spatial transform made of ANTs transform files.

    Attributes
    ----------
    kind : str
        ``"rigid"``, ``"affine"``, ``"syn"`` (or ``"a+b"`` for a composition).
    template : Grid
        The fixed (template) grid: where ``apply(..., direction="to_template")`` resamples to.
    subject : Grid
        The moving subject's native grid: where ``direction="to_subject"`` resamples to.
    forward : tuple of TransformFile
        ANTs list pulling subject images onto the template grid (first entry applied first
        to a template point).
    inverse : tuple of TransformFile
        ANTs list pulling template images onto the subject grid.
    meta : dict
        Quality measures, options and timing of the registration (JSON-ready).

    Examples
    --------
    >>> tx = register_to_mni(t1, kind="affine")  # doctest: +SKIP
    >>> in_mni = tx.apply(t1)  # doctest: +SKIP
    >>> mask_native = tx.apply(mni_mask, direction="to_subject", interpolation="label")  # doctest: +SKIP

    """

    kind: str
    template: Grid
    subject: Grid
    forward: tuple[TransformFile, ...]
    inverse: tuple[TransformFile, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    _folders: tuple[TransformFolder, ...] = field(default=(), repr=False)

    def apply(
        self,
        image: ImageT,
        *,
        direction: Direction = "to_template",
        interpolation: Interpolation | None = None,
        fill: float = 0.0,
    ) -> ImageT:
        """Resample ``image`` through the transform onto the target grid.

        Parameters
        ----------
        image : Image or LabelImage
            An image in the subject's world space (``to_template``) or the template's
            (``to_subject``); any grid, the mapping is in physical space.
        direction : {"to_template", "to_subject"}
            Target grid: :attr:`template`, or :attr:`subject` (the native grid).
        interpolation : {"linear", "nearest", "label", "bspline"}, optional
            Default ``"linear"`` for images and ``"nearest"`` for label images; ``"label"``
            is ANTs ``genericLabel`` (label-wise linear, smoother boundaries).
        fill : float
            Value outside the source's field of view.

        Returns
        -------
        Image or LabelImage
            Same type as ``image``, exactly on the target grid's shape and affine.

        """
        method = _check_interpolation(image, interpolation)
        if direction not in ("to_template", "to_subject"):
            raise InputError(f"Expected direction 'to_template' or 'to_subject', found {direction!r}.")
        target = self.template if direction == "to_template" else self.subject
        steps = self.forward if direction == "to_template" else self.inverse
        warped = _apply_files(image, target, steps, method, fill)
        return type(image)(warped, target.affine.copy(), dict(image.meta))

    def template_coordinates(self) -> npt.NDArray[np.float32]:
        """Template world coordinates (RAS+ mm) of every voxel of the subject grid.

        Returns
        -------
        numpy.ndarray, shape (3, I, J, K), float32
            ``out[:, i, j, k]`` is where subject voxel ``(i, j, k)`` lands in the template
            (deformation included); NaN where it falls outside the template's field of view.
            Lets many template-space maps be sampled at the subject's voxels with one warp
            (three coordinate images) instead of one warp per map.

        """
        grid = self.template
        ijk = np.indices(grid.shape, dtype=np.float32).reshape(3, -1)
        world = (grid.affine[:3, :3].astype(np.float32) @ ijk + grid.affine[:3, 3:4].astype(np.float32)).reshape(
            3, *grid.shape
        )
        out = np.empty((3, *self.subject.shape), np.float32)
        for axis in range(3):
            coordinate = Image(world[axis], grid.affine.copy())
            out[axis] = _apply_files(coordinate, self.subject, self.inverse, "linear", _OUTSIDE)
        out[:, np.any(np.abs(out) > 1000.0, axis=0)] = np.nan  # mixed with the fill value: no head is 1 m wide
        return out

    def affine_ras(self) -> npt.NDArray[np.float64]:
        """The linear part as a 4x4 RAS+ world-to-world matrix mapping subject mm to template mm.

        Deformation fields are ignored. For a rigid or affine registration this is the whole
        transform: ``template_point = affine_ras() @ subject_point``.
        """
        template_to_subject = np.eye(4)
        for step in self.forward:  # first entry is applied first to a template point
            if step.role == "affine":
                template_to_subject = linear_matrix(step) @ template_to_subject
        return np.asarray(np.linalg.inv(template_to_subject), dtype=np.float64)

    def compose(self, other: Transform) -> Transform:
        """Chain this subject -> template with template -> ``other``'s subject.

        The result maps this subject to the other subject through the template: its
        ``template`` grid is ``other.subject`` (``to_template`` resamples this subject's
        images onto the other subject's grid) and ``to_subject`` goes back.
        """
        return Transform(
            kind=f"{self.kind}+{other.kind}",
            template=other.subject,
            subject=self.subject,
            forward=other.inverse + self.forward,
            inverse=self.inverse + other.forward,
            meta={"composed": [self.meta, other.meta]},
            _folders=self._folders + other._folders,
        )

    def describe(self, names: dict[Path, str]) -> dict[str, Any]:
        """The JSON description of this transform, its files named by ``names`` (source path -> file name)."""

        def listing(steps: tuple[TransformFile, ...]) -> list[dict[str, Any]]:
            return [{"file": names[s.path], "invert": s.invert, "role": s.role} for s in steps]

        return {
            "format": TRANSFORM_FORMAT,
            "version": 1,
            "kind": self.kind,
            "order": _ORDER_NOTE,
            "template_grid": self.template.as_dict(),
            "subject_grid": self.subject.as_dict(),
            "forward": listing(self.forward),
            "inverse": listing(self.inverse),
            "affine_ras": np.round(self.affine_ras(), 6).tolist(),
            "meta": self.meta,
        }



def _check_interpolation(image: Image, interpolation: str | None) -> str:
    """Return the ANTs interpolator name for ``image`` and the requested method."""
    is_label = isinstance(image, LabelImage)
    method = interpolation or ("nearest" if is_label else "linear")
    if method not in _INTERPOLATORS:
        raise InputError(f"Expected interpolation in {sorted(_INTERPOLATORS)}, found {method!r}; pick one of those.")
    if is_label and method not in ("nearest", "label"):
        raise InputError(f"Expected 'nearest' or 'label' interpolation for a label image, found {method!r}.")
    return _INTERPOLATORS[method]


def _apply_files(
    image: Image, target: Grid, steps: Sequence[TransformFile], method: str, fill: float
) -> npt.NDArray[Any]:
    """Run ``antsApplyTransforms`` and return the resampled array (int32 for labels)."""
    ants = ants_module()

    warped = ants.apply_transforms(
        fixed=_grid_image(target),
        moving=to_ants(image),
        transformlist=[str(s.path) for s in steps],
        interpolator=method,
        whichtoinvert=[s.invert for s in steps],
        defaultvalue=fill,
        singleprecision=True,
    )
    array: npt.NDArray[Any] = np.asarray(warped.numpy())
    return np.rint(array).astype(np.int32) if isinstance(image, LabelImage) else array.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------------
# quality
