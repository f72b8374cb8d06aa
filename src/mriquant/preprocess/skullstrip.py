"""Skull stripping: a brain mask (GM + WM + CSF inside the dura) for any MR contrast, in the native grid.

Default method ``atlas``: a simulated head with a known brain is registered to the scan
(:mod:`mriquant.preprocess.skullstrip_atlas`), its brain is carried onto the native grid and thresholded, and
the voxels within ~4 mm of that outline are re-decided from the scan's own intensities
(:mod:`mriquant.preprocess.brain_boundary`).

Method ``cnn`` (the idea of SynthStrip, Hoopes et al. 2022; our own code and weights): a compact 3D U-Net
(:mod:`mriquant.models.unet`) trained only on synthetic heads with random contrast, shape, bias, noise,
resolution and field of view (:mod:`mriquant.training.synth`) predicts the brain probability on a 2 mm
RAS grid covering the scan. The probability is interpolated (trilinear) back to the native grid, so the
boundary is placed between the coarse voxels, thresholded (at the model's threshold, calibrated on the
validation anatomy and stored in the weights manifest; 0.5 if absent), reduced to its largest connected
component and hole-filled.

An input that is already skull stripped (a large exactly-constant background around one non-zero region of
brain size, with no dark skull layer under its surface: :func:`detect_stripped`) is detected and its
non-zero region (filled) returned as the mask, with a note.

Order matters: the image is smoothed to the working resolution *before* it is resampled (so noise is
averaged as in training) and normalised *after* (percentiles of the working-grid image).

Examples
--------
>>> result = skullstrip(read_image("t1.nii.gz"))  # doctest: +SKIP
>>> result.mask.shape == result.probability.shape  # doctest: +SKIP
True

"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.case import Case
from mriquant.core.errors import GeometryError, InputError
from mriquant.core.geometry import (
    FOV_CUT_MM2,
    border_contact_mm2,
    describe_contact,
    isotropic_grid,
    resample_to,
    smooth_to,
)
from mriquant.core.image import Image, LabelImage
from mriquant.core.step import CaseStep
from mriquant.preprocess.brain_boundary import largest_filled, refine_boundary

log = logging.getLogger(__name__)

__all__ = [
    "SkullStripOptions",
    "SkullStripResult",
    "SkullStripStep",
    "detect_stripped",
    "load_model",
    "predict_probability",
    "skullstrip",
    "skullstrip_step",
]

#: Name of the bundled model in ``mriquant/models/weights/manifest.json``.
MODEL_NAME = "skullstrip"


@dataclass(frozen=True)
class SkullStripOptions:
    """Options of :func:`skullstrip`.

    Attributes
    ----------
    method : {"atlas", "cnn"}
        ``atlas``: register simulated heads with known brains to the scan
        (:mod:`mriquant.preprocess.skullstrip_atlas`; the default: measured on real scans where the
        CNN still fails); ``cnn``: the synthesis-trained U-Net.
    atlases : int
        Head atlases registered by the ``atlas`` method (more: slower, slightly more accurate).
    threshold : float, optional
        Probability above which a voxel is brain; default: 0.5 for ``atlas``, the model's calibrated
        threshold for ``cnn``.
    detect_stripped : bool
        Return the non-zero region of an already skull-stripped input instead of running the network.
    keep_probability : bool
        Return the native-grid probability map in the result.
    min_brain_ml, max_brain_ml : float
        A predicted brain outside this range means no (whole) brain in the field of view: InputError.
    max_slice_mm : float
        Thickest voxel accepted (mm); thicker slices raise InputError.
    max_grid : tuple of int
        Largest working grid (voxels at 2 mm); bigger fields of view are cropped around the head's top.
    threads : int or None
        Torch intra-op threads during inference (None: leave torch's setting alone).
    refine : bool
        ``atlas`` only: re-decide the voxels within ~4 mm of the registered outline from the scan's own
        intensities (:mod:`mriquant.preprocess.brain_boundary`); the probability returned is then that
        step's posterior.

    """

    method: Literal["atlas", "cnn"] = "atlas"
    atlases: int = 1
    threshold: float | None = None
    detect_stripped: bool = True
    keep_probability: bool = True
    min_brain_ml: float = 300.0
    max_brain_ml: float = 2500.0
    max_slice_mm: float = 8.0
    max_grid: tuple[int, int, int] = (128, 144, 136)
    threads: int | None = None
    refine: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("atlas", "cnn") or self.atlases < 1:
            raise InputError(f"Expected method 'atlas' or 'cnn' and atlases >= 1, found {self.method!r} and "
                             f"{self.atlases}; fix the skull-stripping options.")  # fmt: skip


@dataclass
class SkullStripResult:
    """Output of :func:`skullstrip`.

    Attributes
    ----------
    mask : LabelImage
        Brain mask (uint8 0/1) on the input's native grid.
    probability : Image or None
        Brain probability in [0, 1] on the native grid (None when stripped input or not kept).
    already_stripped : bool
        The input was detected as skull stripped and the mask is its non-zero region.
    notes : list of str
        Human-readable remarks (detection, cropping, ...).
    brain_ml : float
        Mask volume in mL.

    """

    mask: LabelImage
    probability: Image | None
    already_stripped: bool
    notes: list[str] = field(default_factory=list)
    brain_ml: float = 0.0


# --------------------------------------------------------------------------- model


@lru_cache(maxsize=2)
def load_model(folder: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Load the bundled skull-stripping network (eval mode, float32) and its manifest entry.

    The weights' SHA-256 is checked against the manifest first (:func:`mriquant.models.load_weights`).
    """
    import torch

    from mriquant.models import load_weights
    from mriquant.models.unet import UNet3D, UNetConfig

    state, config, entry = load_weights(MODEL_NAME, folder=folder)
    net = UNet3D(UNetConfig.from_dict(config))
    net.load_state_dict({k: v.float() for k, v in state.items()})
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if not isinstance(net, torch.nn.Module):  # pragma: no cover - keeps mypy's Any honest
        raise TypeError("not a module")
    return net, entry


# --------------------------------------------------------------------------- working grid


def _pad_to_multiple(shape: tuple[int, int, int], affine: npt.NDArray[np.float64], multiple: int
                     ) -> tuple[tuple[int, int, int], npt.NDArray[np.float64]]:  # fmt: skip
    new = tuple(int(np.ceil(s / multiple) * multiple) for s in shape)
    out = affine.copy()
    shift = np.array([(n - s) // 2 for n, s in zip(new, shape, strict=True)], dtype=np.float64)
    out[:3, 3] = affine[:3, 3] - affine[:3, :3] @ shift
    return (new[0], new[1], new[2]), out


def _crop_grid(image: Image, shape: tuple[int, int, int], affine: npt.NDArray[np.float64],
               limit: tuple[int, int, int]) -> tuple[tuple[int, int, int], npt.NDArray[np.float64], bool]:  # fmt: skip
    """Limit a RAS grid to ``limit`` voxels: centred on the head in R-L / A-P, at the top in S-I."""
    if all(s <= m for s, m in zip(shape, limit, strict=True)):
        return shape, affine, False
    coarse = resample_to(image, shape, affine, order=1)
    fg = coarse.array > _foreground_threshold(coarse.array)
    idx = np.argwhere(fg) if fg.any() else np.argwhere(np.ones(shape, bool))
    lo = np.zeros(3, int)
    for ax in range(3):
        if shape[ax] <= limit[ax]:
            continue
        centre = idx[:, ax].mean() if ax < 2 else idx[:, ax].max() - limit[ax] / 2 + 8
        lo[ax] = int(np.clip(round(centre - limit[ax] / 2), 0, shape[ax] - limit[ax]))
    new = tuple(min(s, m) for s, m in zip(shape, limit, strict=True))
    out = affine.copy()
    out[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return (new[0], new[1], new[2]), out, True


def _foreground_threshold(values: npt.NDArray[Any]) -> float:
    """A loose head/background threshold: 10 % of the 99th percentile above the 1st."""
    lo, hi = np.percentile(values[::3, ::3, ::3], [1, 99])
    return float(lo + 0.1 * (hi - lo))


def working_grid(image: Image, spacing: float, multiple: int, limit: tuple[int, int, int]
                 ) -> tuple[tuple[int, int, int], npt.NDArray[np.float64], bool]:  # fmt: skip
    """RAS grid of ``spacing`` mm over the scan, sizes multiples of ``multiple``, at most ``limit``.

    Returns the shape, the affine and whether the field of view was cropped.
    """
    shape, affine = isotropic_grid(image, spacing)
    shape, affine, cropped = _crop_grid(image, shape, affine, limit)
    shape, affine = _pad_to_multiple(shape, affine, multiple)
    return shape, affine, cropped


def predict_probability(net: Any, image: Image, *, limit: tuple[int, int, int] = (128, 144, 136),
                        threads: int | None = None) -> tuple[Image, Image, bool]:  # fmt: skip
    """Run the network on ``image``; return (native-grid probability, working-grid probability, cropped)."""
    import torch

    from mriquant.models.inputs import normalise_intensity

    spacing, multiple = float(net.config.spacing_mm), int(net.config.multiple)
    shape, affine, cropped = working_grid(image, spacing, multiple, limit)
    smooth = image.with_array(smooth_to(image, spacing))
    work = resample_to(smooth, shape, affine, order=1, fill=float(np.min(image.array)))
    x = normalise_intensity(torch.from_numpy(np.ascontiguousarray(work.array, dtype=np.float32)))
    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            prob = torch.sigmoid(net(x[None, None]))[0, 0].numpy()
    finally:
        torch.set_num_threads(old_threads)
    coarse = Image(prob.astype(np.float32), affine, {"source": "brain probability (working grid)"})
    native = resample_to(coarse, image.shape, image.affine, order=1, fill=0.0)
    return native, coarse, cropped


def postprocess(probability: npt.NDArray[np.float32], threshold: float = 0.5) -> npt.NDArray[np.bool_]:
    """Threshold, keep the largest 6-connected component, fill holes."""
    return largest_filled(probability > threshold)


# --------------------------------------------------------------------------- input checks


def _check_geometry(image: Image, options: SkullStripOptions) -> None:
    thickest = max(image.spacing)
    if thickest > options.max_slice_mm:
        raise GeometryError(
            f"Expected voxels at most {options.max_slice_mm:g} mm thick for skull stripping, found spacing "
            f"{tuple(round(s, 2) for s in image.spacing)} mm in {image.meta.get('source', 'the image')}; "
            "use a 3D or thinner-slice acquisition."
        )


def _check_values(image: Image) -> None:
    data = image.array
    source = image.meta.get("source", "the image")
    if not np.all(np.isfinite(data[::4, ::4, ::4])):
        raise InputError(f"Expected finite intensities, found NaN/inf in {source}; fix or mask the scan.")
    sample = data[::2, ::2, ::2]
    lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        raise InputError(f"Expected an MR head scan, found a constant image (value {lo:g}) in {source}.")
    air = float(np.mean(sample < -500))
    if air > 0.05 and lo < -900 and hi > 1000:
        raise InputError(
            f"Expected an MR scan, found CT-like intensities ({air:.0%} of voxels below -500, range {lo:g} to "
            f"{hi:g}) in {source}; skull stripping needs an MR image."
        )


#: Smallest mean correlation of neighbouring voxels for an image to hold anatomy (pure noise: about 0).
MIN_NEIGHBOUR_CORRELATION = 0.3


def neighbour_correlation(data: npt.NDArray[Any], max_pairs: int = 400_000) -> float:
    """Mean correlation of each voxel with its next neighbour along the three axes.

    Pairs are taken on every ``step``-th voxel of each axis, ``step`` the smallest even number that keeps
    them below ``max_pairs`` per axis (every second voxel up to 3.2 M voxels; every fourth on a 1 mm head).
    """
    step = 2
    while data.size / step**3 > max_pairs:
        step += 2
    values = []
    for axis in range(3):  # a loop over the 3 axes, each vectorised
        lo = [slice(None, None, step)] * 3
        hi = [slice(None, None, step)] * 3
        lo[axis], hi[axis] = slice(0, -1, step), slice(1, None, step)
        a, b = data[tuple(lo)].ravel().astype(np.float64), data[tuple(hi)].ravel().astype(np.float64)
        n = min(a.size, b.size)
        if n > 1 and a[:n].std() > 0 and b[:n].std() > 0:
            values.append(float(np.corrcoef(a[:n], b[:n])[0, 1]))
    return float(np.mean(values)) if values else 0.0


def _check_structure(image: Image) -> None:
    corr = neighbour_correlation(image.array)
    if corr < MIN_NEIGHBOUR_CORRELATION:
        raise InputError(
            f"Expected an MR head scan, found no spatial structure (neighbouring voxels correlate at {corr:.2f}, "
            f"below {MIN_NEIGHBOUR_CORRELATION}) in {image.meta.get('source', 'the image')}: the input looks like "
            "noise, so no brain can be found; pass an anatomical scan."
        )


def _check_brain(mask: npt.NDArray[np.bool_], image: Image, options: SkullStripOptions) -> float:
    volume = float(mask.sum()) * image.voxel_volume_ml
    source = image.meta.get("source", "the image")
    if volume < options.min_brain_ml:
        raise InputError(
            f"Expected a whole brain in the field of view, found a predicted brain of {volume:.0f} mL "
            f"(< {options.min_brain_ml:g} mL) in {source}; pass a head scan covering the whole brain."
        )
    if volume > options.max_brain_ml:
        raise InputError(
            f"Expected a brain of at most {options.max_brain_ml:g} mL, found {volume:.0f} mL in {source}; "
            "the input does not look like a head MR scan."
        )
    border = _border_fraction(mask)
    if border > 0.5:
        raise InputError(
            f"Expected the brain inside the field of view, found the mask touching {border:.0%} of the image "
            f"border in {source}; pass a scan covering the whole head."
        )
    return volume


def _border_fraction(mask: npt.NDArray[np.bool_]) -> float:
    """Fraction of the six faces' voxels that are inside the mask."""
    faces = [mask[0], mask[-1], mask[:, 0], mask[:, -1], mask[:, :, 0], mask[:, :, -1]]
    return float(sum(f.sum() for f in faces)) / float(sum(f.size for f in faces))


def _cut_note(mask: LabelImage) -> list[str]:
    """A note when the mask reaches the edge of the field of view (the scan cuts the brain), else nothing."""
    contact = border_contact_mm2(mask)
    if sum(contact.values()) < FOV_CUT_MM2:
        return []
    return [f"brain mask reaches the edge of the field of view ({describe_contact(contact)}): the scan cuts the "
            "brain, so its volumes are partial"]  # fmt: skip


# --------------------------------------------------------------------------- already stripped


@dataclass(frozen=True)
class StrippedEvidence:
    """Measurements behind :func:`detect_stripped`.

    Attributes
    ----------
    background : float
        The background value: the most common value on the image's six faces.
    background_fraction : float
        Fraction of voxels exactly equal to ``background``.
    largest_fraction : float
        Share of the non-background voxels in the largest connected region.
    largest_ml : float
        Volume of the largest region (holes filled) in mL.
    dark_band : float
        Fraction of the region's voxels 4-12 mm under its surface darker than a quarter of the region's
        median (above background): a head has its dark skull there, a stripped brain has cortex.
    is_stripped : bool
        The decision.

    """

    background: float
    background_fraction: float
    largest_fraction: float
    largest_ml: float
    dark_band: float
    is_stripped: bool


#: Thresholds of :func:`detect_stripped`, measured on MICCAI 2012 ``_SS`` scans, the MS patient's stripped
#: T1/T2/FLAIR, the stripped stroke FLAIR, chris_t1 and BrainWeb heads (see bench/skullstrip_results).
STRIPPED_MIN_BACKGROUND = 0.3
STRIPPED_MIN_SHARE = 0.9
STRIPPED_VOLUME_ML = (300.0, 2500.0)
STRIPPED_MAX_DARK_BAND = 0.08

#: Images larger than this (voxels) are subsampled by 2 along each axis for the detection.
DETECT_MAX_VOXELS = 2_000_000


def _face_mode(data: npt.NDArray[Any]) -> float:
    faces = np.concatenate(
        [f.ravel() for f in (data[0], data[-1], data[:, 0], data[:, -1], data[:, :, 0], data[:, :, -1])]
    )
    values, counts = np.unique(faces, return_counts=True)
    return float(values[np.argmax(counts)])


def _largest_region(nonzero: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.bool_], float]:
    """Largest 6-connected region (holes filled) and its share of ``nonzero``."""
    labels, n = ndimage.label(nonzero)
    if n == 0:
        return nonzero, 0.0
    sizes = np.bincount(labels.ravel())[1:]
    largest = labels == int(np.argmax(sizes)) + 1
    return np.asarray(ndimage.binary_fill_holes(largest), dtype=bool), float(sizes.max() / sizes.sum())


def _dark_band(image: Image, region: npt.NDArray[np.bool_], background: float) -> float:
    depth = ndimage.distance_transform_edt(region, sampling=image.spacing)
    band = (depth > 4.0) & (depth <= 12.0)
    if not band.any():
        return 1.0
    level = background + 0.25 * (float(np.median(image.array[region])) - background)
    return float(np.mean(image.array[band] < level))


def detect_stripped(image: Image) -> StrippedEvidence:
    """Decide whether ``image`` is already skull stripped.

    Stripped means: at least 30 % of the voxels exactly equal the background value (the most common
    value on the faces), the largest connected non-background region holds >= 90 % of the rest and
    measures 300-2500 mL, and under its surface (4-12 mm deep) at most 8 % of the voxels are dark (a
    head has skull there). Measured margins: stripped scans 0.000-0.04 dark, 1070-2080 mL; heads
    3400-3900 mL, T1 heads 0.11-0.19 dark.
    """
    background = _face_mode(image.array)
    bg_fraction = float(np.mean(image.array == background))
    if bg_fraction < STRIPPED_MIN_BACKGROUND:
        return StrippedEvidence(background, bg_fraction, 0.0, 0.0, float("nan"), False)
    if image.array.size > DETECT_MAX_VOXELS:  # decide on every second voxel: 8x less work, same answer
        image = Image(image.array[::2, ::2, ::2], image.affine @ np.diag([2.0, 2.0, 2.0, 1.0]))
    region, share = _largest_region(image.array != background)
    volume = float(region.sum()) * image.voxel_volume_ml
    if not (share >= STRIPPED_MIN_SHARE and STRIPPED_VOLUME_ML[0] <= volume <= STRIPPED_VOLUME_ML[1]):
        return StrippedEvidence(background, bg_fraction, share, volume, float("nan"), False)
    dark = _dark_band(image, region, background)
    return StrippedEvidence(background, bg_fraction, share, volume, dark, dark <= STRIPPED_MAX_DARK_BAND)


# --------------------------------------------------------------------------- entry points


def _stripped_result(image: Image, evidence: StrippedEvidence) -> SkullStripResult:
    region, _ = _largest_region(image.array != evidence.background)
    mask = region.astype(np.uint8)
    note = (
        f"input already skull stripped ({evidence.background_fraction:.0%} constant background, one region of "
        f"{evidence.largest_ml:.0f} mL, dark band {evidence.dark_band:.2f}): mask = non-zero region, holes filled"
    )
    out = LabelImage(mask, image.affine.copy(), {**image.meta, "source": "brain_mask (input non-zero region)"})
    return SkullStripResult(out, None, True, [note], float(mask.sum()) * image.voxel_volume_ml)


def skullstrip(image: Image, *, options: SkullStripOptions | None = None) -> SkullStripResult:
    """Compute the brain mask of an MR head scan of any contrast, orientation and field of view.

    Parameters
    ----------
    image : Image
        T1, T2, PD or FLAIR scan (any orientation, spacing up to ``options.max_slice_mm``).
    options : SkullStripOptions, optional
        Threshold, detection and sanity limits.

    Returns
    -------
    SkullStripResult
        Mask (uint8 0/1, native grid), probability (native grid), whether the input was already
        stripped, and notes.

    Raises
    ------
    InputError
        Non-MR (CT-like), constant or structureless (noise) intensities, slices thicker than
        ``max_slice_mm`` (GeometryError), or no whole brain in the field of view (predicted brain
        < 300 mL or > 2500 mL, or on most of the image border).

    """
    opts = options or SkullStripOptions()
    _check_values(image)
    _check_geometry(image, opts)
    _check_structure(image)
    if opts.detect_stripped:
        evidence = detect_stripped(image)
        if evidence.is_stripped:
            return _stripped_result(image, evidence)
    if opts.method == "atlas":
        from mriquant.preprocess.skullstrip_atlas import atlas_brain_probability

        probability, _ = atlas_brain_probability(image, atlases=opts.atlases)
        cropped, threshold = False, opts.threshold if opts.threshold is not None else 0.5
    else:
        net, entry = load_model()
        probability, _, cropped = predict_probability(net, image, limit=opts.max_grid, threads=opts.threads)
        threshold = opts.threshold if opts.threshold is not None else float(entry.get("threshold", 0.5))
    mask = postprocess(probability.array, threshold)
    source = "brain probability"
    if opts.method == "atlas" and opts.refine:
        mask, refined = refine_boundary(image.array, mask, image.spacing)
        probability, source = probability.with_array(refined), "brain probability (outline re-decided)"
    volume = _check_brain(mask, image, opts)
    out = LabelImage(mask.astype(np.uint8), image.affine.copy(), {**image.meta, "source": "brain_mask"})
    notes = ["field of view larger than the working grid: cropped around the top of the head"] if cropped else []
    notes += _cut_note(out)
    prob = probability.with_array(probability.array, source=source) if opts.keep_probability else None
    return SkullStripResult(out, prob, False, notes, volume)


class SkullStripStep(CaseStep[SkullStripOptions]):
    """Case step ``"skullstrip"``: set ``case.labels["brain_mask"]`` from ``images["preproc"]`` (or the input).

    Records the options, the head atlases or the model version and SHA-256, whether the input was already
    stripped, the brain volume and the notes.
    """

    name = "skullstrip"
    options_type = SkullStripOptions

    def apply(self, case: Case, record: dict[str, Any]) -> None:
        """Strip the skull and record what was used."""
        opts = self.options
        record["input"] = "preproc" if "preproc" in case.images else "image"
        result = skullstrip(case.images.get("preproc", case.image), options=opts)
        if not result.already_stripped and opts.method == "atlas":
            from mriquant.preprocess.skullstrip_atlas import load_head_atlases

            record.update(head_atlases=list(load_head_atlases().names[: opts.atlases]))
        if not result.already_stripped and opts.method == "cnn":
            _, entry = load_model()
            threshold = opts.threshold if opts.threshold is not None else entry.get("threshold", 0.5)
            record.update(model=MODEL_NAME, model_version=entry.get("version"), model_sha256=entry.get("sha256"),
                          threshold=threshold)  # fmt: skip
        record.update(already_stripped=result.already_stripped, brain_ml=round(result.brain_ml, 2), notes=result.notes)
        case.labels["brain_mask"] = result.mask
        if result.probability is not None:
            case.images["brain_probability"] = result.probability
        stripped = " (input already stripped)" if result.already_stripped else ""
        log.info("skullstrip: %.0f mL%s", result.brain_ml, stripped)


def skullstrip_step(case: Case, *, options: SkullStripOptions | None = None) -> Case:
    """``SkullStripStep(options)(case)``."""
    return SkullStripStep(options)(case)
