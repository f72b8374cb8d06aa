"""Quality control of a scan and its segmentations: image metrics and flags with a human reason.

:func:`quality_control` is a pure function: it measures, it never writes files. It returns

``metrics``
    Signal-to-noise ratio, grey/white contrast-to-noise ratio, the brain mask's volume (``brain_mask_ml``:
    intracranial, GM + WM + CSF; ``brain_volume_ml`` is its deprecated old name, removed in the next release),
    tissue volumes and the registration metrics passed in. An undefined metric is None and
    ``metrics["reasons"]`` says why.
``flags``
    ``{"code", "severity", "message"}`` (plus ``"label"`` and ``"table"`` for one label: the id and the map it
    belongs to, ``"freesurfer"``, ``"tissues"`` or ``"brain_mask"``), severity ``"info"``,
    ``"warning"`` or ``"error"``. Codes: ``volume_out_of_range``, ``fragmented``, ``left_right_swap``,
    ``missing_structure``, ``low_snr``, ``low_cnr``, ``registration_quality``, ``low_confidence``,
    ``empty_mask``, ``fov_cut`` (the brain mask reaches the edge of the field of view: volumes are partial)
    and ``not_checked`` (info: a check needs an input that was not given).
``structures``
    Per label name, ``{"label", "confidence"}``: the mean over the label's voxels of the largest
    posterior at each voxel, when posteriors are given.

Noise
-----
The noise standard deviation comes from the air around the head when there is enough of it
(``snr_method`` ``"background_rayleigh"``): in a magnitude image air holds only noise, whose
magnitude follows a Rayleigh distribution with median ``sigma sqrt(2 ln 2)``, so the median
gives ``sigma`` without the bias of the plain standard deviation (Henkelman 1985, Med Phys 12:232;
Gudbjartsson & Patz 1995, MRM 34:910). A background with many negative values is real-valued,
Gaussian noise (``"background_gaussian"``: ``1.4826 x MAD``). Exact zeros are left out (zero-filled
or defaced regions hold no noise; in an integer image with a noise sd below about one unit rounding
zeroes real noise too, and the estimate reads high); when no usable air remains (a skull-stripped or masked image)
the noise comes from inside white matter (``"wm_residual"``): the residual of each voxel minus the
mean of its six neighbours, where all seven are white matter, has standard deviation
``sigma sqrt(7/6)`` for independent noise, and its MAD is insensitive to the smooth bias field.
Interpolated or filtered images have correlated noise, which this residual under-estimates.

Thresholds live in :class:`QCThresholds`; the adult volume ranges in
``mriquant/data/qc/adult_ranges.tsv`` (sources cited in the file).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.geometry import FOV_CUT_MM2, border_contact_mm2, describe_contact
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import BILATERAL_PAIRS, TISSUES, LabelTable, freesurfer
from mriquant.quantify.shape import structure_layout

__all__ = ["QCThresholds", "VolumeRange", "adult_ranges", "estimate_noise", "quality_control"]

Severity = Literal["info", "warning", "error"]
Flag = dict[str, Any]
Mask = npt.NDArray[np.bool_]

#: FreeSurfer ids of cerebral white matter and cortex (SNR/CNR when no tissue map is given).
_FS_WM, _FS_GM = (2, 41), (3, 42)
_TISSUE_CSF, _TISSUE_GM, _TISSUE_WM = 1, 2, 3
#: Rayleigh median = sigma sqrt(2 ln 2); Gaussian sd = 1.4826 MAD.
_RAYLEIGH_MEDIAN = math.sqrt(2.0 * math.log(2.0))
_MAD_TO_SD = 1.4826
#: Bright pieces at least this share of the largest one belong to the head.
_HEAD_PIECE_FRACTION = 0.05


@dataclass(frozen=True)
class QCThresholds:
    """Limits of the QC flags (the defaults are deliberately lenient; see each attribute).

    Attributes
    ----------
    snr_warning, snr_error : float
        White-matter SNR below which the scan is flagged (a clinical 3D T1 at 1 mm has about 15-40).
    cnr_warning, cnr_error : float
        |GM - WM| / noise below which the scan is flagged.
    min_largest_fraction : float
        A structure whose largest 26-connected piece holds less than this share is fragmented.
    max_components : int
        A structure with more pieces than this is fragmented (labels in ``fragment_exempt`` excepted).
    fragment_exempt : tuple of int
        FreeSurfer ids whose piece count is not checked (sheet-like or space-filling labels: cerebral
        white matter and cortex, cerebellum, CSF), only their largest-piece share.
    ncc_warning, ncc_error : float
        Registration correlation (``ncc`` or ``correlation`` key) limits; 0.4 is
        ``RegistrationOptions.min_ncc``, a good T1 registration gives 0.5-0.75.
    nmi_warning : float
        Normalised mutual information ``(H(a) + H(b)) / H(a, b)`` (1 = independent) limit.
    scale_range : tuple of float
        Accepted range of a registration's scale factors (``min_scale``/``max_scale`` keys).
    confidence_warning, confidence_error : float
        Mean largest posterior of a structure below which it is flagged.
    range_error_factor : float
        A volume below ``min_ml / factor`` or above ``max_ml * factor`` is an error, not a warning.
    expected_structures : tuple of int
        FreeSurfer ids every structure map must hold (those of any whole-brain segmentation).
    min_background_voxels : int
        Fewest air voxels for the background noise estimate.
    head_margin_mm : float
        Air starts this far outside the thresholded head (keeps ghosts and partial volume out).
    fov_cut_mm2 : float
        Brain-mask area on the image's faces (mm²) from which the field of view counts as cutting the brain
        (:data:`mriquant.core.geometry.FOV_CUT_MM2`, 1 cm²: a few stray voxels on an edge are not a cut).

    """

    snr_warning: float = 10.0
    snr_error: float = 5.0
    cnr_warning: float = 2.0
    cnr_error: float = 1.0
    min_largest_fraction: float = 0.9
    max_components: int = 10
    fragment_exempt: tuple[int, ...] = (2, 41, 3, 42, 7, 46, 8, 47, 24)
    ncc_warning: float = 0.5
    ncc_error: float = 0.4
    nmi_warning: float = 1.05
    scale_range: tuple[float, float] = (0.6, 1.6)
    confidence_warning: float = 0.7
    confidence_error: float = 0.5
    range_error_factor: float = 2.0
    expected_structures: tuple[int, ...] = (2, 3, 4, 10, 11, 12, 41, 42, 43, 49, 50, 51)
    min_background_voxels: int = 1000
    head_margin_mm: float = 10.0
    fov_cut_mm2: float = FOV_CUT_MM2


@dataclass(frozen=True)
class VolumeRange:
    """Accepted adult volume of one label (a row of ``data/qc/adult_ranges.tsv``).

    Attributes
    ----------
    table : str
        ``"freesurfer"``, ``"tissues"`` or ``"brain_mask"``: the map the label belongs to.
    label : int
        Voxel value.
    name : str
        Label name.
    min_ml, max_ml : float
        Range in mL.
    source : str
        Short keys of the references (listed in the file's header).

    """

    table: str
    label: int
    name: str
    min_ml: float
    max_ml: float
    source: str


@cache
def adult_ranges() -> tuple[VolumeRange, ...]:
    """Return the adult volume ranges shipped in ``mriquant/data/qc/adult_ranges.tsv``."""
    text = resources.files("mriquant").joinpath("data/qc/adult_ranges.tsv").read_text("utf-8")
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    header = lines[0].split("\t")
    rows = []
    for line in lines[1:]:
        cell = dict(zip(header, line.split("\t"), strict=True))
        rows.append(VolumeRange(cell["table"], int(cell["label"]), cell["name"], float(cell["min_ml"]),
                                float(cell["max_ml"]), cell["source"]))
    return tuple(rows)


@dataclass
class _Report:
    """Metrics and flags gathered while checking."""

    metrics: dict[str, Any] = field(default_factory=dict)
    flags: list[Flag] = field(default_factory=list)
    reasons: dict[str, str] = field(default_factory=dict)

    def flag(self, code: str, severity: Severity, message: str, label: int | None = None,
             table: str | None = None) -> None:
        where = {} if label is None else {"label": label, "table": table}
        self.flags.append({"code": code, "severity": severity, "message": message, **where})

    def undefined(self, metric: str, reason: str) -> None:
        self.metrics[metric] = None
        self.reasons[metric] = reason


def quality_control(
    image: Image,
    *,
    brain_mask: LabelImage | None = None,
    tissue: LabelImage | None = None,
    dseg: LabelImage | None = None,
    probabilities: dict[str, Image] | None = None,
    registration: dict[str, float] | None = None,
    shapes: list[dict[str, Any]] | None = None,
    thresholds: QCThresholds | None = None,
) -> dict[str, Any]:
    """Measure image quality and check segmentations for gross failures.

    Parameters
    ----------
    image : Image
        The scan, shape (I, J, K), in its native grid (before skull stripping if possible: the air
        around the head gives the best noise estimate).
    brain_mask : LabelImage, optional
        Intracranial mask (non-zero inside) on the image grid.
    tissue : LabelImage, optional
        Tissue map (1 CSF, 2 GM, 3 WM) on the image grid.
    dseg : LabelImage, optional
        Structure map with FreeSurfer ids on the image grid.
    probabilities : dict of str to Image, optional
        Posteriors keyed by label name (``"GM"`` or ``"Left-Thalamus"``, as in the label table),
        on the image grid; tissue names go with ``tissue``, others with ``dseg``.
    registration : dict of str to float, optional
        Registration metrics, e.g. :func:`mriquant.preprocess.register.registration_quality`
        (``ncc``, ``nmi``, ``min_scale``, ``max_scale``); copied to ``metrics["registration"]``.
    shapes : list of dict, optional
        Rows of :func:`mriquant.quantify.shape.structure_shapes` on ``dseg`` (``label``,
        ``centroid_mm``, ``components``, ``largest_component_fraction``); measured when omitted.
    thresholds : QCThresholds, optional
        Limits of the flags.

    Returns
    -------
    dict
        ``{"metrics": {...}, "flags": [...], "structures": {...}}``. Metrics: ``snr``, ``snr_method``,
        ``noise_sd``, ``background_voxels``, ``wm_mean``, ``gm_mean``, ``cnr_gm_wm``, ``brain_mask_ml``
        (``brain_volume_ml``: deprecated alias), ``brain_mask_border_mm2``, ``tissue_volumes_ml``
        ({"CSF", "GM", "WM"}), ``parenchyma_ml``, ``registration`` and ``reasons`` (metric -> why it is None).
        See the module docstring.

    Raises
    ------
    InputError
        If a label map or posterior is not on the image grid.

    Examples
    --------
    >>> from mriquant.testing import make_phantom
    >>> ph = make_phantom(spacing=(4.0, 4.0, 4.0), seed=1)
    >>> qc = quality_control(ph.image, tissue=ph.tissue, brain_mask=ph.brain_mask)
    >>> qc["metrics"]["snr_method"], qc["metrics"]["snr"] > 10
    ('background_rayleigh', True)

    """
    limits = thresholds or QCThresholds()
    for name, other in {"brain_mask": brain_mask, "tissue": tissue, "dseg": dseg}.items():
        _check_grid(image, other, name)
    for name, posterior in (probabilities or {}).items():
        _check_grid(image, posterior, f"the {name} posterior")
    report = _Report()
    _noise_metrics(report, image, tissue, dseg, limits)
    _volume_checks(report, brain_mask, tissue, dseg, limits)
    if dseg is not None:
        _structure_checks(report, dseg, shapes, limits)
    _registration_checks(report, registration, limits)
    structures = _confidence(report, probabilities, tissue, dseg, limits) if probabilities else {}
    report.metrics["reasons"] = report.reasons
    return {"metrics": report.metrics, "flags": report.flags, "structures": structures}


def _check_grid(image: Image, other: Image | None, name: str) -> None:
    if other is not None and not image.same_grid(other):
        found = "another affine" if other.shape == image.shape else f"shape {other.shape}"
        raise InputError(
            f"Expected {name} on the image grid {image.shape}, found {found}; "
            "resample it onto the image (nearest neighbour for labels) before quality control."
        )


# ----------------------------------------------------------------------------------------------------------------------
# noise, SNR and CNR


def estimate_noise(
    image: Image, *, wm: Mask | None = None, min_background_voxels: int = 1000, head_margin_mm: float = 10.0
) -> tuple[float | None, str | None, int]:
    """Noise standard deviation of ``image`` (see the module docstring for the methods).

    Parameters
    ----------
    image : Image
        The scan.
    wm : numpy.ndarray of bool, shape (I, J, K), optional
        White-matter mask, for the fallback when there is no usable air.
    min_background_voxels : int
        Fewest air voxels the background estimate needs.
    head_margin_mm : float
        Distance (mm) from the thresholded head where the air starts.

    Returns
    -------
    sigma : float or None
        Noise sd in image units; None when neither method applies.
    method : str or None
        ``"background_rayleigh"``, ``"background_gaussian"``, ``"wm_residual"`` or None.
    background_voxels : int
        Air voxels used (0 for the other methods).

    """
    air = _air_values(image, head_margin_mm)
    if air.size >= min_background_voxels:
        if np.mean(air < 0) > 0.1:
            mad = float(np.median(np.abs(air - np.median(air))))
            return _MAD_TO_SD * mad, "background_gaussian", int(air.size)
        return float(np.median(air)) / _RAYLEIGH_MEDIAN, "background_rayleigh", int(air.size)
    if wm is not None:
        sigma = _wm_residual_sigma(image.array, wm)
        if sigma is not None:
            return sigma, "wm_residual", 0
    return None, None, 0


def _air_values(image: Image, margin_mm: float) -> npt.NDArray[np.float64]:
    """Non-zero values farther than ``margin_mm`` from the head (large pieces above Otsu's threshold, filled)."""
    from skimage.filters import threshold_otsu

    values = image.array
    sample = values.ravel()[:: max(1, values.size // 200_000)]
    if np.ptp(sample) == 0:
        return np.empty(0)
    pieces, count = ndimage.label(values > threshold_otsu(sample))
    if count == 0:
        return np.empty(0)
    sizes = np.bincount(pieces.ravel())
    sizes[0] = 0
    # brain and scalp can be separate pieces (dark skull between them): keep every large piece
    head_mask = ndimage.binary_fill_holes((sizes >= _HEAD_PIECE_FRACTION * sizes.max())[pieces])
    air = np.asarray(values[_far_from(head_mask, image.spacing, margin_mm)], dtype=np.float64)
    nonzero: npt.NDArray[np.float64] = air[air != 0]
    return nonzero


def _far_from(mask: Mask, spacing: tuple[float, float, float], margin_mm: float) -> Mask:
    """Voxels at least ``margin_mm`` from ``mask`` (a few mm more where blocks round it up).

    The distance transform runs on blocks of up to ``margin_mm / 4`` per axis (a block is inside when
    any of its voxels is; about 8 times faster on a 1 mm grid); adding one block diagonal to the
    threshold keeps every selected voxel at least ``margin_mm`` from the mask.
    """
    from skimage.measure import block_reduce

    factors = tuple(max(1, int(margin_mm / (4.0 * s))) for s in spacing)
    coarse = block_reduce(mask, factors, np.max)
    coarse_spacing = np.array([s * f for s, f in zip(spacing, factors, strict=True)])
    threshold = margin_mm + (float(np.linalg.norm(coarse_spacing)) if max(factors) > 1 else 0.0)
    far = ndimage.distance_transform_edt(~coarse, sampling=coarse_spacing) > threshold
    for axis, factor in enumerate(factors):
        far = np.repeat(far, factor, axis=axis)
    result: Mask = far[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    return result


def _wm_residual_sigma(values: npt.NDArray[Any], wm: Mask, min_voxels: int = 100) -> float | None:
    """Noise sd from ``x - mean(6 neighbours)`` where a voxel and its six neighbours are all white matter."""
    x = values.astype(np.float64)
    core = (slice(1, -1),) * 3
    neighbours = np.zeros_like(x[core])
    inside = wm[core].copy()
    for axis in range(3):
        for shift in (-1, 1):
            shifted = tuple(slice(1 + shift, x.shape[a] - 1 + shift) if a == axis else slice(1, -1) for a in range(3))
            neighbours += x[shifted]
            inside &= wm[shifted]
    if np.count_nonzero(inside) < min_voxels:
        return None
    residual = x[core][inside] - neighbours[inside] / 6.0
    mad = float(np.median(np.abs(residual - np.median(residual))))
    return _MAD_TO_SD * mad / math.sqrt(7.0 / 6.0)


def _class_masks(tissue: LabelImage | None, dseg: LabelImage | None) -> tuple[Mask | None, Mask | None]:
    """White- and grey-matter masks from the tissue map, else from the structure map."""
    if tissue is not None:
        return tissue.array == _TISSUE_WM, tissue.array == _TISSUE_GM
    if dseg is not None:
        return np.isin(dseg.array, _FS_WM), np.isin(dseg.array, _FS_GM)
    return None, None


def _noise_metrics(
    report: _Report, image: Image, tissue: LabelImage | None, dseg: LabelImage | None, limits: QCThresholds
) -> None:
    wm, gm = _class_masks(tissue, dseg)
    sigma, method, air = estimate_noise(image, wm=wm, min_background_voxels=limits.min_background_voxels,
                                        head_margin_mm=limits.head_margin_mm)
    report.metrics.update(noise_sd=_round(sigma), snr_method=method, background_voxels=air)
    wm_mean = _mean_in(image, wm)
    gm_mean = _mean_in(image, gm)
    report.metrics.update(wm_mean=_round(wm_mean), gm_mean=_round(gm_mean))
    if not sigma:
        why = ("the noise estimate is 0 (a noise-free or coarsely quantised image)" if sigma == 0.0
               else "no air around the head and no white matter to estimate the noise from")
        report.undefined("snr", why)
        report.undefined("cnr_gm_wm", why)
        report.flag("not_checked", "info", f"SNR and CNR not measured: {why}.")
        return
    _ratio_metric(report, "snr", None if wm_mean is None else wm_mean / sigma, "no white matter (tissue or dseg)")
    cnr = None if wm_mean is None or gm_mean is None else abs(gm_mean - wm_mean) / sigma
    _ratio_metric(report, "cnr_gm_wm", cnr, "no grey and white matter (tissue or dseg)")
    _low_flag(report, "low_snr", "SNR", report.metrics["snr"], limits.snr_warning, limits.snr_error)
    _low_flag(report, "low_cnr", "GM/WM CNR", report.metrics["cnr_gm_wm"], limits.cnr_warning, limits.cnr_error)


def _mean_in(image: Image, mask: Mask | None) -> float | None:
    if mask is None or not mask.any():
        return None
    return float(np.mean(image.array[mask], dtype=np.float64))


def _ratio_metric(report: _Report, name: str, value: float | None, reason: str) -> None:
    if value is None:
        report.undefined(name, reason)
    else:
        report.metrics[name] = _round(value)


def _low_flag(report: _Report, code: str, what: str, value: float | None, warning: float, error: float) -> None:
    if value is None or value >= warning:
        return
    severity: Severity = "error" if value < error else "warning"
    limit = error if severity == "error" else warning
    report.flag(code, severity, f"{what} is {_beside(value, limit, 2)}, below {_limit_text(limit)}: the image is "
                                "too noisy or lacks contrast for reliable segmentation; check the acquisition.")


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _limit_text(limit: float) -> str:
    """A threshold as written in a message (``0.9 * 100`` reads ``90``)."""
    return f"{limit:.12g}"


def _beside(value: float, limit: float, digits: int = 1) -> str:
    """``value`` with ``digits`` decimals, more when needed to stay on its side of ``limit`` as shown.

    A message must not contradict its verdict: a largest piece of 89.96 % against a 90 % limit reads
    "89.96 %", not "90 %", and an SNR of 9.999 below 10 reads "9.999", not "10.00".

    Examples
    --------
    >>> _beside(89.96, 90.0, 0), _beside(9.999, 10.0, 2), _beside(151.234, 150.0)
    ('89.96', '9.999', '151.2')

    """
    shown = float(_limit_text(limit))
    side = (value > limit) - (value < limit)
    text = f"{value:.{digits}f}"
    while side and (float(text) > shown) - (float(text) < shown) != side and digits < 15:
        digits += 1
        text = f"{value:.{digits}f}"
    return text


def _apart(first: float, second: float, digits: int = 1) -> tuple[str, str]:
    """Two values with the same decimals, as many as it takes for their order to show (``first != second``)."""
    while digits < 15 and first != second and round(first, digits) == round(second, digits):
        digits += 1
    return f"{first:.{digits}f}", f"{second:.{digits}f}"


# ----------------------------------------------------------------------------------------------------------------------
# volumes


def _counts(labels: LabelImage) -> npt.NDArray[np.int64]:
    array = labels.array
    if array.size and int(array.min()) < 0:
        raise InputError(f"Expected non-negative labels, found {int(array.min())}; relabel before quality control.")
    return np.bincount(array.ravel())


def _volume_checks(
    report: _Report, brain_mask: LabelImage | None, tissue: LabelImage | None, dseg: LabelImage | None,
    limits: QCThresholds,
) -> None:
    if brain_mask is None:
        for key in ("brain_mask_ml", "brain_volume_ml"):
            report.undefined(key, "no brain mask given")
    else:
        volume = float(np.count_nonzero(brain_mask.array)) * brain_mask.voxel_volume_ml
        # the mask holds GM, WM and the CSF inside the dura: an intracranial volume, not the brain's;
        # "brain_volume_ml" is the old, misleading name of the same value (kept for one release)
        report.metrics["brain_mask_ml"] = report.metrics["brain_volume_ml"] = _round(volume)
        if volume == 0:
            report.flag("empty_mask", "error", "The brain mask is empty: skull stripping failed.")
        _range_checks(report, "brain_mask", {1: volume}, limits)
        _fov_check(report, brain_mask, limits)
    if tissue is None:
        report.undefined("tissue_volumes_ml", "no tissue map given")
        report.undefined("parenchyma_ml", "no tissue map given")
    else:
        _tissue_volumes(report, tissue, limits)
    if dseg is not None:
        counts = _counts(dseg)
        volumes = {label: float(n) * dseg.voxel_volume_ml for label, n in enumerate(counts) if n and label}
        _range_checks(report, "freesurfer", volumes, limits)


def _fov_check(report: _Report, brain_mask: LabelImage, limits: QCThresholds) -> None:
    contact = border_contact_mm2(brain_mask)
    total = sum(contact.values())
    report.metrics["brain_mask_border_mm2"] = _round(total, 1)
    if total >= limits.fov_cut_mm2:
        report.flag("fov_cut", "warning", "The brain mask reaches the edge of the field of view: "
                    f"{describe_contact(contact)}; the scan does not cover the whole brain, so brain and tissue "
                    "volumes are partial.")  # fmt: skip


def _tissue_volumes(report: _Report, tissue: LabelImage, limits: QCThresholds) -> None:
    counts = np.pad(_counts(tissue), (0, 4))
    volumes = {t.id: float(counts[t.id]) * tissue.voxel_volume_ml for t in TISSUES}
    report.metrics["tissue_volumes_ml"] = {t.name: _round(volumes[t.id]) for t in TISSUES}
    report.metrics["parenchyma_ml"] = _round(volumes[_TISSUE_GM] + volumes[_TISSUE_WM])
    for t in TISSUES:
        if volumes[t.id] == 0:
            report.flag("missing_structure", "error", f"Tissue class {t.name} is empty in the tissue map.", t.id,
                        "tissues")
    _range_checks(report, "tissues", {k: v for k, v in volumes.items() if v > 0}, limits)


def _range_checks(report: _Report, table: str, volumes: dict[int, float], limits: QCThresholds) -> None:
    """Flag every present label of ``table`` whose volume lies outside its adult range."""
    for row in adult_ranges():
        volume = volumes.get(row.label)
        if row.table != table or volume is None or row.min_ml <= volume <= row.max_ml:
            continue
        far = volume < row.min_ml / limits.range_error_factor or volume > row.max_ml * limits.range_error_factor
        side = "below" if volume < row.min_ml else "above"
        shown = _beside(volume, row.min_ml if side == "below" else row.max_ml)
        report.flag(
            "volume_out_of_range", "error" if far else "warning",
            f"{row.name} is {shown} mL, {side} the adult range {_limit_text(row.min_ml)}-{_limit_text(row.max_ml)} mL "
            f"({row.source}); check the segmentation and the voxel size.",
            row.label, row.table,
        )


# ----------------------------------------------------------------------------------------------------------------------
# structure map: missing, fragmented, left/right


def _structure_checks(
    report: _Report, dseg: LabelImage, shapes: list[dict[str, Any]] | None, limits: QCThresholds
) -> None:
    rows = shapes if shapes is not None else structure_layout(dseg)
    by_label = {int(r["label"]): r for r in rows if r.get("voxels", 1) and r.get("centroid_mm") is not None}
    present = set(dseg.labels)
    names = freesurfer()
    _missing_checks(report, present, names, limits)
    for label, row in sorted(by_label.items()):
        if label in present:
            _fragment_check(report, row, names.name_of(label), limits)
    _swap_checks(report, by_label, names)


def _missing_checks(report: _Report, present: set[int], names: LabelTable, limits: QCThresholds) -> None:
    missing = [label for label in limits.expected_structures if label not in present]
    for label in missing:
        report.flag("missing_structure", "error", f"{names.name_of(label)} is missing from the structure map.", label,
                    "freesurfer")
    for left, right in BILATERAL_PAIRS:
        for have, lack in ((left, right), (right, left)):
            if have in present and lack not in present and lack not in missing:
                report.flag("missing_structure", "error",
                            f"{names.name_of(lack)} is missing while {names.name_of(have)} is present.", lack,
                            "freesurfer")


def _fragment_check(report: _Report, row: dict[str, Any], name: str, limits: QCThresholds) -> None:
    label, pieces, largest = int(row["label"]), row.get("components"), row.get("largest_component_fraction")
    limit = limits.min_largest_fraction
    if largest is not None and largest < limit:
        report.flag("fragmented", "warning",
                    f"{name} is fragmented: its largest piece holds {_beside(100 * largest, 100 * limit, 0)} % of its "
                    f"voxels (expected >= {_limit_text(100 * limit)} %).", label, "freesurfer")
    elif pieces is not None and pieces > limits.max_components and label not in limits.fragment_exempt:
        report.flag("fragmented", "warning",
                    f"{name} is in {pieces} separate pieces (expected at most {limits.max_components}).", label,
                    "freesurfer")


def _swap_checks(report: _Report, by_label: dict[int, dict[str, Any]], names: LabelTable) -> None:
    """Flag pairs whose Left-* centroid lies right of the Right-* one (RAS+: +x is the subject's right)."""
    for left, right in BILATERAL_PAIRS:
        if left in by_label and right in by_label:
            lx, rx = by_label[left]["centroid_mm"][0], by_label[right]["centroid_mm"][0]
            if lx > rx:
                lx_text, rx_text = _apart(lx, rx)
                report.flag(
                    "left_right_swap", "error",
                    f"{names.name_of(left)} (x = {lx_text} mm) lies to the right of {names.name_of(right)} "
                    f"(x = {rx_text} mm): left and right are swapped (check the labels or the image orientation).",
                    left, "freesurfer",
                )


# ----------------------------------------------------------------------------------------------------------------------
# registration and posteriors


def _registration_checks(report: _Report, registration: dict[str, float] | None, limits: QCThresholds) -> None:
    if registration is None:
        return
    report.metrics["registration"] = {k: _round(v) if math.isfinite(v) else None for k, v in registration.items()}
    ncc = registration.get("ncc", registration.get("correlation"))
    nmi = registration.get("nmi")
    if ncc is not None:
        if not math.isfinite(ncc):
            report.flag("registration_quality", "error", "Registration correlation is undefined (too little overlap).")
        elif ncc < limits.ncc_warning:
            severity: Severity = "error" if ncc < limits.ncc_error else "warning"
            limit = limits.ncc_error if severity == "error" else limits.ncc_warning
            report.flag("registration_quality", severity,
                        f"Registration correlation with the template is {_beside(ncc, limit, 3)}, below "
                        f"{_limit_text(limit)}: check the alignment.")
    if nmi is not None and (not math.isfinite(nmi) or nmi < limits.nmi_warning):
        report.flag("registration_quality", "warning",
                    f"Registration normalised mutual information is {_nmi_text(nmi, limits.nmi_warning)}, below "
                    f"{_limit_text(limits.nmi_warning)}.")
    _scale_check(report, registration, limits)


def _nmi_text(nmi: float, limit: float) -> str:
    return _beside(nmi, limit, 3) if math.isfinite(nmi) else "undefined"


def _scale_check(report: _Report, registration: dict[str, float], limits: QCThresholds) -> None:
    low, high = registration.get("min_scale"), registration.get("max_scale")
    lo, hi = limits.scale_range
    if (low is not None and low < lo) or (high is not None and high > hi):
        low_text = "?" if low is None else _beside(low, lo, 3)
        high_text = "?" if high is None else _beside(high, hi, 3)
        report.flag("registration_quality", "warning",
                    f"Registration scale factors {low_text}-{high_text} lie outside "
                    f"{_limit_text(lo)}-{_limit_text(hi)}: the head size or the voxel size looks wrong.")


def _confidence(
    report: _Report, probabilities: dict[str, Image], tissue: LabelImage | None, dseg: LabelImage | None,
    limits: QCThresholds,
) -> dict[str, dict[str, Any]]:
    """Mean largest posterior over each label's voxels; flags the labels below the limits."""
    tissue_names = {t.name.lower() for t in TISSUES}
    if tissue is not None and (dseg is None or {k.lower() for k in probabilities} <= tissue_names):
        labels, table = tissue, TISSUES
    elif dseg is not None:
        labels, table = dseg, freesurfer()
    else:
        report.flag("not_checked", "info", "Posterior confidence not measured: no tissue or structure map given.")
        return {}
    largest = np.zeros(labels.shape, np.float32)
    for posterior in probabilities.values():
        np.maximum(largest, posterior.array.astype(np.float32, copy=False), out=largest)
    counts = _counts(labels)
    sums = np.bincount(labels.array.ravel(), weights=largest.ravel(), minlength=len(counts))
    structures = {}
    for label in np.flatnonzero(counts[1:]) + 1:
        confidence = float(sums[label] / counts[label])
        name = table.name_of(int(label))
        structures[name] = {"label": int(label), "confidence": round(confidence, 4)}
        _low_confidence(report, (name, int(label), table.name), confidence, limits)
    return structures


def _low_confidence(report: _Report, which: tuple[str, int, str], confidence: float, limits: QCThresholds) -> None:
    """Flag a label (``(name, id, table name)``) whose mean posterior confidence is below the limits."""
    if confidence >= limits.confidence_warning:
        return
    name, label, table = which
    severity: Severity = "error" if confidence < limits.confidence_error else "warning"
    limit = limits.confidence_error if severity == "error" else limits.confidence_warning
    report.flag("low_confidence", severity,
                f"{name}: mean posterior confidence {_beside(confidence, limit, 2)} is below {_limit_text(limit)}; "
                "its boundary is uncertain, review it.", label, table)
