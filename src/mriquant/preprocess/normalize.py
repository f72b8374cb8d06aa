"""Intensity normalisation: white-matter peak scaling, z-score and Nyúl-Udupa standardisation.

MR intensities have no physical unit, so segmenters that use fixed intensity models need every
scan on one scale. Three methods, all computed from the voxels inside a (brain) mask and
applied to the whole image:

* :func:`wm_peak` scales so the white-matter mode maps to a target (T1: the brightest prominent
  peak of the brain histogram);
* :func:`zscore` shifts and scales to mean 0, sd 1 inside the mask;
* :func:`nyul` maps the image's intensity percentiles piecewise-linearly onto standard landmarks
  learned from training scans (Nyúl & Udupa 1999; Nyúl, Udupa & Zhang 2000) with
  :func:`learn_nyul`. T1 landmarks ship in ``mriquant/data/nyul/t1.json`` (see
  :func:`shipped_landmarks` for where they came from and how to regenerate them).

Normalise after bias correction (N4): a bias field spreads the tissue peaks and every method
here then picks up the spread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
from scipy import ndimage, signal

from mriquant.core.case import Case
from mriquant.core.errors import GeometryError, InputError
from mriquant.core.image import Image, LabelImage
from mriquant.core.step import CaseStep

__all__ = [
    "DEFAULT_PERCENTILES",
    "NormalizeOptions",
    "NormalizeStep",
    "NyulLandmarks",
    "learn_nyul",
    "learn_nyul_from_folder",
    "normalize_step",
    "nyul",
    "shipped_landmarks",
    "white_matter_mode",
    "wm_peak",
    "zscore",
]

Method = Literal["wm-peak", "zscore", "nyul"]
#: Nyúl landmarks: the 1st and 99th percentiles (ends of the standard scale) and the deciles.
DEFAULT_PERCENTILES: tuple[float, ...] = (1.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 99.0)
#: Histogram bins between the 0.5th and 99.5th percentiles of the masked intensities.
HISTOGRAM_BINS = 256
#: Gaussian smoothing of the histogram in bins (a binned KDE with bandwidth ~0.8 % of the range).
HISTOGRAM_SMOOTHING_BINS = 2.0
#: A peak counts when its prominence is at least this fraction of the highest smoothed bin.
MIN_PEAK_PROMINENCE = 0.1
_LANDMARK_FORMAT = "mriquant-nyul-landmarks"


def _masked_values(image: Image, mask: LabelImage, what: str) -> npt.NDArray[np.float64]:
    """Finite intensities inside ``mask`` (> 0) as float64, checked to be usable."""
    source = str(image.meta.get("source", "image"))
    if not mask.same_grid(image):
        raise GeometryError(
            f"Expected the {what} mask on the image's grid {image.shape}, found shape {mask.shape} with another "
            f"affine for {source}; resample the mask with mriquant.core.geometry.resample_like first."
        )
    values = image.array[mask.array > 0].astype(np.float64)
    values = values[np.isfinite(values)]
    if values.size < 2 or float(values.min()) == float(values.max()):
        raise InputError(
            f"Expected varying intensities inside the {what} mask, found {values.size} voxels"
            + (f" all equal to {values[0]:g}" if values.size else "")
            + f" in {source}; pass the brain mask of this scan."
        )
    return np.asarray(values)


# --------------------------------------------------------------------------- WM peak


def white_matter_mode(values: npt.NDArray[np.float64]) -> float:
    """Return the white-matter mode of T1 brain intensities: the brightest prominent histogram peak.

    The histogram (:data:`HISTOGRAM_BINS` bins between the 0.5th and 99.5th percentiles, so a
    few extreme voxels do not stretch it) is smoothed with a Gaussian of
    :data:`HISTOGRAM_SMOOTHING_BINS` bins (a binned kernel density estimate); peaks whose
    prominence reaches :data:`MIN_PEAK_PROMINENCE` of the highest bin count, and the brightest of
    them is refined to sub-bin precision by a parabola through its three bins. Small bright
    bumps (vessels, fat left in the mask) are not prominent and are skipped; on T1 the WM peak is
    the brightest of the CSF / GM / WM peaks, even when it is not the tallest.

    Parameters
    ----------
    values : numpy.ndarray, shape (N,)
        Intensities inside the brain mask.

    Returns
    -------
    float
        Intensity of the WM mode.

    """
    lo, hi = np.percentile(values, [0.5, 99.5])
    counts, edges = np.histogram(values, bins=HISTOGRAM_BINS, range=(float(lo), float(hi)))
    smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), HISTOGRAM_SMOOTHING_BINS, mode="constant")
    padded = np.concatenate([[0.0], smooth, [0.0]])  # a peak in the last bin still counts
    peaks, _ = signal.find_peaks(padded, prominence=MIN_PEAK_PROMINENCE * float(smooth.max()))
    top = int(peaks.max()) - 1 if peaks.size else int(np.argmax(smooth))
    offset = 0.0
    if 0 < top < smooth.size - 1:
        left, mid, right = smooth[top - 1 : top + 2]
        curvature = left - 2.0 * mid + right
        offset = 0.5 * (left - right) / curvature if curvature < 0 else 0.0
    width = float(edges[1] - edges[0])
    return float(edges[0] + (top + 0.5 + offset) * width)


def wm_peak(image: Image, mask: LabelImage, *, target: float = 110.0) -> Image:
    """Scale ``image`` so its white-matter mode inside ``mask`` maps to ``target``.

    Parameters
    ----------
    image : Image
        T1-weighted scan, ideally bias-corrected.
    mask : LabelImage
        Brain mask (> 0 inside) on ``image``'s grid; a head mask works when the WM peak stays
        the brightest prominent one.
    target : float
        Intensity the WM mode is mapped to (110 is FreeSurfer's WM normalisation level).

    Returns
    -------
    Image
        ``image * target / mode`` as float32; ``meta["wm_mode"]`` holds the mode found.

    Raises
    ------
    InputError
        If the masked intensities are constant or the mode is not positive.

    Examples
    --------
    >>> scaled = wm_peak(t1, brain, target=110.0)  # doctest: +SKIP

    """
    mode = white_matter_mode(_masked_values(image, mask, "WM-peak"))
    if mode <= 0:
        raise InputError(
            f"Expected a positive white-matter mode, found {mode:g} in {image.meta.get('source', 'image')}; "
            "pass a magnitude T1 image (non-negative intensities)."
        )
    with np.errstate(all="raise", under="ignore"):
        scaled = (image.array.astype(np.float64) * (target / mode)).astype(np.float32)
    return image.with_array(scaled, wm_mode=mode)


# --------------------------------------------------------------------------- z-score


def zscore(image: Image, mask: LabelImage) -> Image:
    """Shift and scale ``image`` to mean 0 and standard deviation 1 inside ``mask``.

    Parameters
    ----------
    image : Image
        Any intensity image.
    mask : LabelImage
        Region (> 0) whose statistics define the scale, on ``image``'s grid.

    Returns
    -------
    Image
        ``(image - mean) / sd`` as float32 (population sd, ``ddof=0``).

    """
    values = _masked_values(image, mask, "z-score")
    mean, sd = float(values.mean()), float(values.std())
    with np.errstate(all="raise", under="ignore"):
        out = ((image.array.astype(np.float64) - mean) / sd).astype(np.float32)
    return image.with_array(out, zscore_mean=mean, zscore_sd=sd)


# --------------------------------------------------------------------------- Nyúl-Udupa


@dataclass(frozen=True)
class NyulLandmarks:
    """Standard-scale landmarks of Nyúl-Udupa histogram standardisation.

    Attributes
    ----------
    percentiles : tuple of float
        Increasing percentiles (0-100) of the masked intensities; the first and last are the
        ends of the standard scale (``pc1``, ``pc2``), the rest the landmarks between.
    landmarks : tuple of float
        Standard-scale value of each percentile (same length, increasing).
    contrast : str
        Contrast the landmarks are for, e.g. ``"t1"``.
    scale : tuple of float
        ``(s1, s2)``: where the first and last percentiles are put before averaging.
    n_images : int
        Number of training images.
    source : str
        Where the training images came from.
    regenerate : str
        How to regenerate the landmarks.

    """

    percentiles: tuple[float, ...]
    landmarks: tuple[float, ...]
    contrast: str = "t1"
    scale: tuple[float, float] = (0.0, 100.0)
    n_images: int = 0
    source: str = ""
    regenerate: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        p, lm = np.asarray(self.percentiles, float), np.asarray(self.landmarks, float)
        if p.ndim != 1 or p.size < 2 or p.shape != lm.shape:
            raise InputError(
                f"Expected as many landmarks as percentiles (>= 2), found {p.size} percentiles and {lm.size} "
                "landmarks; relearn them with learn_nyul."
            )
        if np.any(np.diff(p) <= 0) or p[0] <= 0 or p[-1] >= 100 or np.any(np.diff(lm) <= 0):
            raise InputError(
                f"Expected increasing percentiles inside (0, 100) and increasing landmarks, found {p.tolist()} and "
                f"{lm.tolist()}; relearn them with learn_nyul."
            )

    def as_dict(self) -> dict[str, Any]:
        """Return the landmarks as a JSON-serialisable dictionary (with a format tag)."""
        return {"format": _LANDMARK_FORMAT, "version": 1, **asdict(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NyulLandmarks:
        """Build landmarks from :meth:`as_dict` output."""
        if data.get("format") != _LANDMARK_FORMAT:
            raise InputError(
                f"Expected a '{_LANDMARK_FORMAT}' JSON document, found format {data.get('format')!r}; "
                "pass a file written by NyulLandmarks.save."
            )
        return cls(
            percentiles=tuple(float(v) for v in data["percentiles"]),
            landmarks=tuple(float(v) for v in data["landmarks"]),
            contrast=str(data.get("contrast", "")),
            scale=(float(data["scale"][0]), float(data["scale"][1])),
            n_images=int(data.get("n_images", 0)),
            source=str(data.get("source", "")),
            regenerate=str(data.get("regenerate", "")),
            extra=dict(data.get("extra", {})),
        )

    def save(self, path: str | Path) -> Path:
        """Write the landmarks as JSON to ``path`` and return it."""
        path = Path(path)
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> NyulLandmarks:
        """Read landmarks written by :meth:`save`."""
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(
                f"Expected a readable Nyúl landmarks JSON file, found {type(exc).__name__} reading {path}; "
                "pass a file written by NyulLandmarks.save."
            ) from exc
        return cls.from_dict(data)


def _image_percentiles(values: npt.NDArray[np.float64], percentiles: Sequence[float], source: str) -> Any:
    points = np.percentile(values, list(percentiles))
    if np.any(np.diff(points) <= 0):
        raise InputError(
            f"Expected distinct intensities at the Nyúl percentiles, found {np.round(points, 4).tolist()} in "
            f"{source}; the mask holds too few distinct values (pass the brain mask, or fewer percentiles)."
        )
    return points


def learn_nyul(
    images: Sequence[Image],
    masks: Sequence[LabelImage],
    *,
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    scale: tuple[float, float] = (0.0, 100.0),
    contrast: str = "t1",
    source: str = "",
    regenerate: str = "",
) -> NyulLandmarks:
    """Learn Nyúl-Udupa standard landmarks from training images.

    Each image's percentiles are mapped linearly so the first and last land on ``scale``;
    the standard landmarks are the means of the mapped percentiles over the images.

    Parameters
    ----------
    images : sequence of Image
        Training scans of one contrast (bias-corrected).
    masks : sequence of LabelImage
        Brain mask of each image, on its grid.
    percentiles : sequence of float
        Increasing percentiles in (0, 100); default :data:`DEFAULT_PERCENTILES`.
    scale : tuple of float
        Standard scale ``(s1, s2)`` of the first and last percentiles.
    contrast, source, regenerate : str
        Stored with the landmarks.

    Returns
    -------
    NyulLandmarks

    """
    if len(images) == 0 or len(images) != len(masks):
        raise InputError(
            f"Expected one mask per training image (>= 1 image), found {len(images)} images and {len(masks)} "
            "masks; pass matching lists."
        )
    s1, s2 = float(scale[0]), float(scale[1])
    mapped = []
    for image, mask in zip(images, masks, strict=True):
        points = _image_percentiles(_masked_values(image, mask, "Nyúl"), percentiles, str(image.meta.get("source")))
        mapped.append(s1 + (points - points[0]) / (points[-1] - points[0]) * (s2 - s1))
    landmarks = np.mean(mapped, axis=0)
    return NyulLandmarks(
        tuple(float(p) for p in percentiles),
        tuple(float(v) for v in landmarks),
        contrast,
        (s1, s2),
        len(images),
        source,
        regenerate,
    )


def _piecewise_linear(
    x: npt.NDArray[np.float64], xp: npt.NDArray[np.float64], fp: npt.NDArray[np.float64]
) -> npt.NDArray[np.float64]:
    """``np.interp`` with linear extrapolation along the first and last segments."""
    y = np.interp(x, xp, fp)
    first = (fp[1] - fp[0]) / (xp[1] - xp[0])
    last = (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    y = np.where(x < xp[0], fp[0] + (x - xp[0]) * first, y)
    return np.asarray(np.where(x > xp[-1], fp[-1] + (x - xp[-1]) * last, y))


def nyul(image: Image, mask: LabelImage, landmarks: NyulLandmarks) -> Image:
    """Standardise ``image`` with Nyúl-Udupa landmarks.

    The image's own percentiles inside ``mask`` are mapped onto ``landmarks.landmarks`` and
    every voxel is transformed by the piecewise-linear map through those points, extended
    linearly beyond the first and last percentile (so the map is monotonic everywhere).

    Parameters
    ----------
    image : Image
        Scan of the landmarks' contrast.
    mask : LabelImage
        Brain mask on ``image``'s grid.
    landmarks : NyulLandmarks
        From :func:`learn_nyul` or :func:`shipped_landmarks`.

    Returns
    -------
    Image
        Float32 image on the standard scale (voxels outside the mask are mapped too).

    Examples
    --------
    >>> standard = nyul(t1, brain, shipped_landmarks("t1"))  # doctest: +SKIP

    """
    values = _masked_values(image, mask, "Nyúl")
    points = _image_percentiles(values, landmarks.percentiles, str(image.meta.get("source", "image")))
    with np.errstate(all="raise", under="ignore"):
        out = _piecewise_linear(image.array.astype(np.float64), points, np.asarray(landmarks.landmarks, float))
    return image.with_array(out.astype(np.float32), nyul_contrast=landmarks.contrast)


def shipped_landmarks(contrast: str = "t1") -> NyulLandmarks:
    """Load the Nyúl landmarks bundled with mriquant for ``contrast``.

    ``t1``: learned from the 15 MICCAI 2012 Multi-Atlas Labeling training T1 scans (OASIS,
    skull-stripped ``NNNN_SS`` with ``NNNN_mask``, 1 mm) with :func:`learn_nyul_from_folder`;
    the JSON's ``source`` and ``regenerate`` fields say exactly how.
    """
    name = f"{contrast.lower()}.json"
    ref = resources.files("mriquant") / "data" / "nyul" / name
    if not ref.is_file():
        raise InputError(
            f"Expected bundled Nyúl landmarks for contrast {contrast!r}, found no data/nyul/{name}; use 't1' or "
            "learn your own with learn_nyul."
        )
    return NyulLandmarks.from_dict(json.loads(ref.read_text(encoding="utf-8")))


def learn_nyul_from_folder(
    folder: str | Path,
    *,
    image_suffix: str = "_SS.nii.gz",
    mask_suffix: str = "_mask.nii.gz",
    exclude: Sequence[str] = (),
    percentiles: Sequence[float] = DEFAULT_PERCENTILES,
    scale: tuple[float, float] = (0.0, 100.0),
    contrast: str = "t1",
) -> NyulLandmarks:
    """Learn landmarks from every ``ID{image_suffix}`` in ``folder`` with its ``ID{mask_suffix}``.

    Parameters
    ----------
    folder : str or pathlib.Path
        E.g. the MICCAI 2012 ``train`` folder (``1000_SS.nii.gz`` + ``1000_mask.nii.gz``, ...).
    image_suffix, mask_suffix : str
        File name endings of the scans and their brain masks.
    exclude : sequence of str
        Subject ids to leave out (for leave-one-out evaluation).
    percentiles, scale, contrast
        See :func:`learn_nyul`.

    Returns
    -------
    NyulLandmarks
        With ``source`` listing the folder and subject ids and ``regenerate`` the call.

    Examples
    --------
    >>> learn_nyul_from_folder("shared/data/miccai2012/train").save("src/mriquant/data/nyul/t1.json")  # doctest: +SKIP

    """
    from mriquant.io import read_image, read_labels

    folder = Path(folder)
    ids = sorted(p.name[: -len(image_suffix)] for p in folder.glob(f"*{image_suffix}"))
    ids = [i for i in ids if i not in set(exclude) and (folder / f"{i}{mask_suffix}").is_file()]
    if not ids:
        raise InputError(
            f"Expected scans named ID{image_suffix} with masks ID{mask_suffix} in {folder}, found none; "
            "pass the folder holding them."
        )
    images = [read_image(folder / f"{i}{image_suffix}") for i in ids]
    masks = [read_labels(folder / f"{i}{mask_suffix}") for i in ids]
    where = f"{folder.parent.name}/{folder.name}"
    source = f"{len(ids)} scans ID{image_suffix} with brain masks ID{mask_suffix} from {where}/: {', '.join(ids)}"
    regenerate = (
        "from mriquant.preprocess.normalize import learn_nyul_from_folder; "
        f"learn_nyul_from_folder(FOLDER, image_suffix={image_suffix!r}, mask_suffix={mask_suffix!r}, "
        f"percentiles={tuple(percentiles)!r}, scale={tuple(scale)!r}, contrast={contrast!r}).save(PATH)"
    )
    return learn_nyul(
        images, masks, percentiles=percentiles, scale=scale, contrast=contrast, source=source, regenerate=regenerate
    )


# --------------------------------------------------------------------------- Case step


@dataclass(frozen=True)
class NormalizeOptions:
    """Options of :class:`NormalizeStep`.

    Attributes
    ----------
    method : {"wm-peak", "zscore", "nyul"}
        Normalisation method.
    mask_key : str
        Label image used as the mask when present; otherwise a foreground (head) mask.
    target : float
        WM target of ``"wm-peak"``.
    landmarks : NyulLandmarks, optional
        For ``"nyul"``; default :func:`shipped_landmarks` ``("t1")``.
    """

    method: Method = "wm-peak"
    mask_key: str = "brain_mask"
    target: float = 110.0
    landmarks: NyulLandmarks | None = None

    def __post_init__(self) -> None:
        if self.method not in ("wm-peak", "zscore", "nyul"):
            raise InputError(f"Expected method 'wm-peak', 'zscore' or 'nyul', found {self.method!r}; pick one of them.")


class NormalizeStep(CaseStep[NormalizeOptions]):
    """Case step ``"normalize"``: normalise ``images["preproc"]`` (or the input scan) into ``"normalized"``.

    ``"preproc"`` stays the bias-corrected image in its own intensity units (the public ``preproc.nii.gz``);
    the normalised copy is written as ``normalized.nii.gz`` by the pipeline.
    """

    name = "normalize"
    options_type = NormalizeOptions

    def params(self) -> dict[str, Any]:
        """The method (the mask and the method's own settings are added when known)."""
        return {"method": self.options.method}

    def apply(self, case: Case, record: dict[str, Any]) -> None:
        """Normalise inside the mask."""
        from mriquant.preprocess.bias import foreground_mask

        opts = self.options
        source = case.images.get("preproc", case.image)
        mask = case.labels.get(opts.mask_key)
        record["mask"] = opts.mask_key if mask is not None else "foreground"
        mask = mask if mask is not None else foreground_mask(source)
        if opts.method == "wm-peak":
            case.images["normalized"] = wm_peak(source, mask, target=opts.target)
            record |= {"target": opts.target, "wm_mode": case.images["normalized"].meta["wm_mode"]}
        elif opts.method == "zscore":
            case.images["normalized"] = zscore(source, mask)
        else:
            chosen = opts.landmarks or shipped_landmarks("t1")
            case.images["normalized"] = nyul(source, mask, chosen)
            record |= {"landmarks": chosen.as_dict()}


def normalize_step(
    case: Case,
    *,
    method: Method = "wm-peak",
    mask_key: str = "brain_mask",
    target: float = 110.0,
    landmarks: NyulLandmarks | None = None,
) -> Case:
    """``NormalizeStep(NormalizeOptions(method, mask_key, target, landmarks))(case)``."""
    return NormalizeStep(NormalizeOptions(method, mask_key, target, landmarks))(case)
