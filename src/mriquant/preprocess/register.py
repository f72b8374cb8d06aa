"""Registration of a subject to the MNI152 2009a template with ANTsPy.

ANTsPy (``antspyx``) is the registration library: it runs the ANTs ``antsRegistration``
optimiser in-process (real SyN), reads and writes ITK transform files other tools
understand, and ships wheels for the platforms we support.

How :func:`register_to_mni` works (the ordering matters):

1. The subject is masked (if a brain mask is given), clipped to its 0.5-99.5 intensity
   percentiles, scaled to [0, 1] and resampled with a Gaussian pre-filter to
   ``options.resolution_mm`` (2 mm). The template is the brain-extracted MNI152 2009a T1 at
   the same resolution. Registering at 2 mm is about 8x cheaper than at 1 mm and loses
   little: the result is a physical-space transform, applied later to 1 mm (or any) grids.
2. Initialisation (``options.init="search"``): centres of mass aligned, then a coarse 6 mm
   rigid registration; if that correlates poorly with the template, it is retried from
   starts rotated by 30 degrees about each axis and the best is kept. (ANTs' own
   ``affine_initializer`` was tried and failed on whole-head scans against the brain
   template.)
3. One rigid or affine stage (Mattes mutual information, 3 levels: 8, 4, 2 mm), then for
   ``kind="syn"`` a SyN stage (Mattes, 8, 4, 2 mm) on top of the affine.
4. The result is checked (:func:`registration_quality` and the affine's scale factors);
   a failed registration raises :class:`RegistrationError`.

Determinism: every ``ants.registration`` call gets ANTs' ``--random-seed`` (``options.seed``,
through :func:`mriquant.core.ants_bridge.ants_seed`), and ANTs runs with one ITK thread
(:func:`mriquant.core.ants_bridge.ants_module`): with two threads the metric's partial sums meet
in a varying order and repeated runs differed. The thread setting in effect is recorded in
``Transform.meta["itk_threads"]``.

Transform files follow the ANTs conventions: a list of ITK transforms applied, for a point
of the reference grid, first entry first (``antsApplyTransforms -t A -t B`` maps a point
``x`` to ``B(A(x))``). ANTs physical space is LPS; :func:`mriquant.core.ants_bridge.to_ants`
converts images, and :func:`mriquant.core.transform.linear_matrix` flips the first two axes of ANTs matrices.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from mriquant.core.ants_bridge import ants_module, ants_seed, itk_threads, to_ants
from mriquant.core.case import Case
from mriquant.core.errors import InputError, MriquantError
from mriquant.core.image import Image, LabelImage
from mriquant.core.step import CaseStep
from mriquant.core.transform import Grid, Transform, TransformFile, TransformFolder
from mriquant.preprocess.template import downsample, mni_template, template_brain_mask

__all__ = [
    "RegisterOptions",
    "RegisterStep",
    "RegistrationError",
    "RegistrationOptions",
    "register_step",
    "register_to_mni",
    "registration_quality",
]

logger = logging.getLogger(__name__)

Kind = Literal["rigid", "affine", "syn"]

_KINDS = ("rigid", "affine", "syn")
#: Starting rotations (degrees about the x, y, z axes, LPS) tried by ``init="search"``.
_SEARCH_ANGLES: tuple[tuple[float, float, float], ...] = (
    (0.0, 0.0, 0.0),
    (30.0, 0.0, 0.0),
    (-30.0, 0.0, 0.0),
    (0.0, 30.0, 0.0),
    (0.0, -30.0, 0.0),
    (0.0, 0.0, 30.0),
    (0.0, 0.0, -30.0),
)
#: Grid (mm) of the search's coarse rigid registrations.
SEARCH_MM = 6.0
#: Correlation with the template (coarse grid, inside the template) that accepts a start without trying others.
SEARCH_ACCEPT_NCC = 0.4


class RegistrationError(MriquantError):
    """A registration failed: the result is degenerate or does not match the template."""


# ----------------------------------------------------------------------------------------------------------------------
# options, grids and transform files


@dataclass(frozen=True)
class RegistrationOptions:
    """Settings of :func:`register_to_mni` (defaults measured on MICCAI 2012 T1 brains, 2 CPU cores).

    Attributes
    ----------
    resolution_mm : float
        Isotropic grid (mm) the template and the subject are resampled to for the optimiser.
    sampling_rate : float
        Fraction of template voxels the linear stages sample (Mattes mutual information).
    linear_iterations, linear_shrink, linear_smoothing : tuple of int
        Iterations, shrink factors and smoothing sigmas (voxels) per level of the rigid or
        affine stage (ANTs ``--convergence``, ``--shrink-factors``, ``--smoothing-sigmas``).
    syn_iterations : tuple of int
        SyN iterations per level; levels are shrunk 2^(n-1), ..., 2, 1 (ANTsPy convention).
    syn_metric : str
        ``"mattes"`` (fast) or ``"CC"`` (neighbourhood cross-correlation, slower, sharper).
    syn_sampling : int
        Histogram bins for Mattes, or the CC radius in voxels.
    flow_sigma, total_sigma : float
        SyN regularisation of the update and total fields (voxels of the registration grid).
    init : str
        ``"search"`` (a coarse rigid registration from the centres of mass, retried from
        rotated starts if it fails; handles tilts of 40 degrees and long necks) or ``"com"``
        (centres of mass only; ~0.5 s faster, fails for large tilts).
    seed : int
        ANTs random seed (non-zero).
    min_ncc : float
        Lowest accepted magnitude of the normalised cross-correlation inside the template brain (see
        :func:`registration_quality`; negative for contrasts with dark white matter such as T2 and PD);
        below it the registration is a failure.
    scale_range : tuple of float
        Accepted range of the affine's scale factors (singular values).

    """

    resolution_mm: float = 2.0
    sampling_rate: float = 0.2
    linear_iterations: tuple[int, ...] = (200, 100, 20)
    linear_shrink: tuple[int, ...] = (4, 2, 1)
    linear_smoothing: tuple[int, ...] = (2, 1, 0)
    syn_iterations: tuple[int, ...] = (60, 40, 20)
    syn_metric: str = "mattes"
    syn_sampling: int = 32
    flow_sigma: float = 3.0
    total_sigma: float = 0.0
    init: str = "search"
    seed: int = 20120
    min_ncc: float = 0.4
    scale_range: tuple[float, float] = (0.5, 2.0)

    def __post_init__(self) -> None:
        levels = {len(self.linear_iterations), len(self.linear_shrink), len(self.linear_smoothing)}
        if len(levels) != 1:
            raise InputError(
                f"Expected as many linear iterations, shrink factors and smoothing sigmas, found {levels} "
                "levels; give one value per level to each."
            )
        if self.init not in ("com", "search"):
            raise InputError(f"Expected init 'com' or 'search', found {self.init!r}; pick one of those.")
        if self.seed == 0:
            raise InputError("Expected a non-zero ANTs random seed, found 0; pass e.g. seed=1.")


def registration_quality(image_in_template: Image, template: Image, mask: Image | None = None) -> dict[str, float]:
    """Similarity of a registered image and the template inside the brain.

    Parameters
    ----------
    image_in_template : Image
        The subject resampled onto the template grid.
    template : Image
        The template, same grid.
    mask : Image or LabelImage, optional
        Brain mask on the same grid (non-zero = inside); default: template > 0.

    Returns
    -------
    dict
        ``ncc``: Pearson correlation of the intensities (-1..1; a good T1 registration to
        the 2009a brain gives about 0.5-0.75, pure noise about 0); ``nmi``: normalised mutual
        information ``(H(a) + H(b)) / H(a, b)`` on 32-bin histograms (1..2); ``voxels``:
        voxels compared. NaN values (with ``voxels`` < 100) mean too little overlap.

    """
    if not template.same_grid(image_in_template):
        raise InputError(
            f"Expected the image on the template grid {template.shape}, found {image_in_template.shape}; "
            "resample it with Transform.apply first."
        )
    inside = (mask.array != 0) if mask is not None else (template.array > 0)
    a = image_in_template.array[inside].astype(np.float64)
    b = template.array[inside].astype(np.float64)
    if a.size < 100 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return {"ncc": float("nan"), "nmi": float("nan"), "voxels": float(a.size)}
    ncc = float(np.corrcoef(a, b)[0, 1])
    return {"ncc": ncc, "nmi": _nmi(a, b), "voxels": float(a.size)}


def _nmi(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64], bins: int = 32) -> float:
    """Normalised mutual information ``(H(a) + H(b)) / H(a, b)`` of two samples."""
    joint, _, _ = np.histogram2d(a, b, bins=bins)
    p = joint / joint.sum()

    def entropy(q: npt.NDArray[np.float64]) -> float:
        q = q[q > 0]
        return float(-(q * np.log(q)).sum())

    return (entropy(p.sum(axis=0)) + entropy(p.sum(axis=1))) / entropy(p.ravel())


# ----------------------------------------------------------------------------------------------------------------------
# registration


def _moving_image(image: Image, mask: Image | None, resolution_mm: float) -> Image:
    """Masked, percentile-scaled to [0, 1] and downsampled subject image (the optimiser's moving image)."""
    array = image.array.astype(np.float32)
    if mask is not None:
        if not mask.same_grid(image):
            raise InputError(
                f"Expected the brain mask on the image grid {image.shape}, found {mask.shape}; resample the mask."
            )
        array = np.where(mask.array != 0, array, 0.0).astype(np.float32)
    foreground = array[array > 0]
    if foreground.size < 1000:
        raise RegistrationError(
            f"Expected an image with a head in it, found {foreground.size} positive voxels; check the input scan."
        )
    low, high = np.percentile(foreground, [0.5, 99.5])
    scaled = np.clip((array - low) / max(float(high - low), 1e-6), 0.0, 1.0).astype(np.float32)
    return downsample(image.with_array(scaled), resolution_mm)


def _fixed_image(template: Image | None, resolution_mm: float) -> tuple[Image, LabelImage]:
    """The template at the registration resolution and its brain mask."""
    if template is None:
        return mni_template(resolution_mm=resolution_mm, brain=True), template_brain_mask(resolution_mm=resolution_mm)
    fixed = downsample(template, resolution_mm)
    return fixed, LabelImage((fixed.array > 0).astype(np.int32), fixed.affine.copy())


def _ants_stage(fixed: Any, moving: Any, transform_type: str, prefix: Path, **kwargs: Any) -> dict[str, Any]:
    """One ``ants.registration`` call writing its files under ``prefix``."""
    ants = ants_module()

    result: dict[str, Any] = ants.registration(
        fixed, moving, type_of_transform=transform_type, outprefix=str(prefix), verbose=False, **kwargs
    )
    return result


def _linear_stage(fixed: Any, moving: Any, kind: str, folder: Path, opts: RegistrationOptions) -> Path:
    """Initialise, then one rigid or affine stage; return the ``.mat`` (template -> subject points)."""
    initial = _initial_transform(fixed, moving, folder, opts)
    result = _ants_stage(
        fixed,
        moving,
        "Rigid" if kind == "rigid" else "Affine",
        folder / "linear_",
        initial_transform=initial,
        aff_iterations=opts.linear_iterations,
        aff_shrink_factors=opts.linear_shrink,
        aff_smoothing_sigmas=opts.linear_smoothing,
        aff_random_sampling_rate=opts.sampling_rate,
    )
    return Path(result["fwdtransforms"][0])


def _initial_transform(fixed: Any, moving: Any, folder: Path, opts: RegistrationOptions) -> str | None:
    """Starting transform: ``None`` lets ANTs align centres of mass (``init="com"``).

    ``init="search"``: a coarse (:data:`SEARCH_MM`) rigid registration from the centres of
    mass; if it correlates poorly with the template (< :data:`SEARCH_ACCEPT_NCC`), further
    starts rotated by 30 degrees about each axis are tried and the best one is kept.
    """
    if opts.init == "com":
        return None
    ants = ants_module()

    coarse = [ants.resample_image(img, (SEARCH_MM,) * 3, False, 0) for img in (fixed, moving)]
    best = (-np.inf, "")
    for number, angles in enumerate(_SEARCH_ANGLES):
        ncc, path = _coarse_rigid(coarse[0], coarse[1], angles, folder / f"search{number}_")
        logger.debug("search start %s: ncc %.3f", angles, ncc)
        best = max(best, (ncc, path))
        if ncc >= SEARCH_ACCEPT_NCC:
            break
    return best[1]


def _coarse_rigid(fixed: Any, moving: Any, angles: tuple[float, float, float], prefix: Path) -> tuple[float, str]:
    """Rigid registration on the coarse grid from a rotated start; return (correlation, ``.mat`` path)."""
    start = _rotated_start(fixed, moving, angles, Path(f"{prefix}start.mat"))
    result = _ants_stage(
        fixed,
        moving,
        "Rigid",
        prefix,
        initial_transform=start,
        aff_iterations=(100,),
        aff_shrink_factors=(1,),
        aff_smoothing_sigmas=(1,),
        aff_random_sampling_rate=0.5,
    )
    template, warped = fixed.numpy(), result["warpedmovout"].numpy()
    inside = template > 0
    ncc = float(np.corrcoef(template[inside], warped[inside])[0, 1]) if np.ptp(warped[inside]) > 0 else -1.0
    return ncc, str(result["fwdtransforms"][0])


def _rotated_start(fixed: Any, moving: Any, angles: tuple[float, float, float], path: Path) -> str:
    """Write an ITK rigid start: centres of mass aligned, then rotated by ``angles`` (degrees about x, y, z)."""
    ants = ants_module()

    a, b, c = np.deg2rad(angles)
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    ry = np.array([[np.cos(b), 0, np.sin(b)], [0, 1, 0], [-np.sin(b), 0, np.cos(b)]])
    rz = np.array([[np.cos(c), -np.sin(c), 0], [np.sin(c), np.cos(c), 0], [0, 0, 1]])
    centre_fixed = np.asarray(ants.get_center_of_mass(fixed), dtype=np.float64)
    centre_moving = np.asarray(ants.get_center_of_mass(moving), dtype=np.float64)
    tx = ants.create_ants_transform(
        transform_type="AffineTransform",
        dimension=3,
        matrix=rz @ ry @ rx,
        center=tuple(centre_fixed),
        translation=tuple(centre_moving - centre_fixed),
    )
    ants.write_transform(tx, str(path))
    return str(path)


def _syn_stage(fixed: Any, moving: Any, affine: Path, folder: Path, opts: RegistrationOptions) -> tuple[Path, Path]:
    """SyN on top of ``affine``; return the forward and inverse warp fields."""
    result = _ants_stage(
        fixed,
        moving,
        "SyNOnly",
        folder / "syn_",
        initial_transform=str(affine),
        reg_iterations=opts.syn_iterations,
        syn_metric=opts.syn_metric,
        syn_sampling=opts.syn_sampling,
        flow_sigma=opts.flow_sigma,
        total_sigma=opts.total_sigma,
    )
    warp = next(Path(p) for p in result["fwdtransforms"] if str(p).endswith("Warp.nii.gz"))
    inverse = next(Path(p) for p in result["invtransforms"] if str(p).endswith("InverseWarp.nii.gz"))
    return warp, inverse


def _build(kind: str, template: Grid, subject: Grid, affine: Path, warps: tuple[Path, Path] | None) -> Transform:
    """Assemble the forward/inverse ANTs lists of a registration result."""
    forward = [TransformFile(affine, False, "affine")]
    inverse = [TransformFile(affine, True, "affine")]
    if warps is not None:
        forward.insert(0, TransformFile(warps[0], False, "warp"))
        inverse.append(TransformFile(warps[1], False, "invwarp"))
    return Transform(kind, template, subject, tuple(forward), tuple(inverse))


def _check_kind(kind: str) -> None:
    if kind not in _KINDS:
        raise InputError(f"Expected kind in {list(_KINDS)}, found {kind!r}; pick one of those.")


def _check_result(
    transform: Transform, fixed: Image, fixed_mask: LabelImage, moving: Image, opts: RegistrationOptions
) -> dict[str, float]:
    """Raise :class:`RegistrationError` for a degenerate or non-matching result; return the quality."""
    scales = np.linalg.svd(transform.affine_ras()[:3, :3], compute_uv=False)
    low, high = opts.scale_range
    if scales.min() < low or scales.max() > high:
        raise RegistrationError(
            f"Expected affine scale factors in [{low}, {high}], found {np.round(scales, 2).tolist()}; the registration "
            "failed: check the image is a T1 head/brain scan with a correct header, or pass a brain mask."
        )
    warped = replace(transform, template=Grid.of(fixed)).apply(moving)
    quality = registration_quality(warped, fixed, fixed_mask)
    quality["min_scale"], quality["max_scale"] = float(scales.min()), float(scales.max())
    if not abs(quality["ncc"]) >= opts.min_ncc:  # negative for T2/PD: Mattes MI aligns any contrast
        raise RegistrationError(
            f"Expected a correlation with the template of magnitude >= {opts.min_ncc} inside the brain, found "
            f"{quality['ncc']:.3f}; the registration failed: check the image is an MR head/brain scan with a "
            "correct header, or pass a brain mask."
        )
    return quality


def register_to_mni(
    image: Image,
    *,
    mask: Image | None = None,
    kind: Kind = "affine",
    template: Image | None = None,
    options: RegistrationOptions | None = None,
) -> Transform:
    """Register a T1-weighted scan to the MNI152 2009a template.

    Parameters
    ----------
    image : Image
        T1-weighted head or brain scan in its native grid (any orientation).
    mask : Image or LabelImage, optional
        Brain mask on ``image``'s grid; the brain alone is registered to the brain template.
    kind : {"rigid", "affine", "syn"}
        Rigid (6 dof), affine (12 dof), or affine + SyN deformation.
    template : Image, optional
        Fixed image (default: the brain-extracted MNI152 2009a T1 at 1 mm); its grid is
        the transform's template grid. The optimiser uses a copy downsampled to
        ``options.resolution_mm``. The only 2009a T1 available offline is brain-extracted,
        so whole-head scans without ``mask`` are registered to the brain template directly
        (measured on the bundled head-and-neck demo scan, tilted up to 40 degrees: within
        0.3 mm of the untilted result).
    options : RegistrationOptions, optional
        Optimiser settings; see :class:`RegistrationOptions`.

    Returns
    -------
    Transform
        With ``meta["quality"]`` (see :func:`registration_quality`), ``meta["seconds"]``.

    Raises
    ------
    RegistrationError
        If the result is degenerate (scale outside ``options.scale_range``) or does not
        correlate with the template (``|ncc| < options.min_ncc``).

    Examples
    --------
    >>> tx = register_to_mni(read_image("t1.nii.gz"), kind="syn")  # doctest: +SKIP
    >>> write_transform(tx, "out")  # doctest: +SKIP (mriquant.io.transform_files)

    """
    _check_kind(kind)
    opts = options or RegistrationOptions()
    started = time.perf_counter()
    grid = Grid.of(template) if template is not None else Grid.of(mni_template(resolution_mm=1.0, brain=True))
    fixed, fixed_mask = _fixed_image(template, opts.resolution_mm)
    moving = _moving_image(image, mask, opts.resolution_mm)
    folder = TransformFolder()
    fixed_ants, moving_ants = to_ants(fixed), to_ants(moving)
    with ants_seed(opts.seed):
        affine = _linear_stage(fixed_ants, moving_ants, kind, folder.path, opts)
        warps = _syn_stage(fixed_ants, moving_ants, affine, folder.path, opts) if kind == "syn" else None
    transform = replace(_build(kind, grid, Grid.of(image), affine, warps), _folders=(folder,))
    quality = _check_result(transform, fixed, fixed_mask, moving, opts)
    meta = {
        "quality": quality,
        "seconds": round(time.perf_counter() - started, 2),
        "options": asdict(opts),
        "itk_threads": itk_threads()["itk_threads"],
    }
    logger.info("registered to MNI (%s) in %.1f s, ncc %.3f", kind, meta["seconds"], quality["ncc"])
    return replace(transform, meta=meta)


@dataclass(frozen=True)
class RegisterOptions:
    """Options of :class:`RegisterStep`: the kind of registration and its settings."""

    kind: Kind = "affine"
    registration: RegistrationOptions = field(default_factory=RegistrationOptions)

    def __post_init__(self) -> None:
        _check_kind(self.kind)


class RegisterStep(CaseStep[RegisterOptions]):
    """Case step ``"register"``: register the preprocessed image (the brain, if masked) to MNI152.

    Uses ``case.images["preproc"]`` if present (else ``case.image``) and ``case.labels["brain_mask"]`` if
    present; sets ``case.transforms["to_mni"]``; records the kind, options and quality.
    """

    name = "register"
    options_type = RegisterOptions

    def params(self) -> dict[str, Any]:
        """The kind, the template, the library and the registration settings."""
        return {"kind": self.options.kind, "template": "MNI152NLin2009aSym", "library": _ants_version(),
                "options": asdict(self.options.registration)}  # fmt: skip

    def apply(self, case: Case, record: dict[str, Any]) -> None:
        """Register and record the quality."""
        mask = case.labels.get("brain_mask")
        record["masked"] = mask is not None
        image = case.images.get("preproc", case.image)
        transform = register_to_mni(image, mask=mask, kind=self.options.kind, options=self.options.registration)
        record["quality"] = transform.meta["quality"]
        record["affine_ras"] = np.round(transform.affine_ras(), 6).tolist()
        case.transforms["to_mni"] = transform


def register_step(case: Case, *, kind: Kind = "affine", options: RegistrationOptions | None = None) -> Case:
    """``RegisterStep(RegisterOptions(kind, options))(case)``."""
    return RegisterStep(RegisterOptions(kind, options or RegistrationOptions()))(case)


def _ants_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"antspyx {version('antspyx')}"
    except PackageNotFoundError:
        return "antspyx"
