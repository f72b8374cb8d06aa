"""Group DICOM images into stacks, check each stack's slice geometry, and choose one.

Vocabulary used here and in :mod:`mriquant.io.dicom`:

frame
    One 2D image: a classic single-frame file, one frame of an enhanced multi-frame
    file, or one tile of a Siemens mosaic.
stack
    The frames of one series that share image size, slice orientation, ImageType and
    (for classic files) EchoNumbers; it becomes one 3D or 4D volume.

The rules for grouping, selection and geometry are documented in the docstring of
:mod:`mriquant.io.dicom`; the constants below hold their tolerances. The last section
reads header values: report-header fields and the non-identifying JSON sidecar.
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

from mriquant import __version__
from mriquant.core.errors import DicomError

log = logging.getLogger(__name__)

Vector = npt.NDArray[np.float64]

#: Largest difference between ImageOrientationPatient components still counted as one orientation.
ORIENTATION_TOL = 1e-3
#: Frames closer than this along the slice normal (mm) share one slice position.
POSITION_TOL = 0.01
#: Relative deviation of a slice step from the median step accepted without comment.
SPACING_TOL = 0.01
#: Relative deviation accepted with a warning; beyond it the stack is refused.
SPACING_TOL_WARN = 0.05
#: Fewest slice positions a stack needs to be chosen automatically.
MIN_SLICES = 3
#: Series descriptions that mark a localizer / scout / survey.
_LOCALIZER = re.compile(r"locali[sz]er|scout|survey|3[- ]?plane", re.IGNORECASE)


@dataclass(eq=False)
class SourceFile:
    """One DICOM file and the series-level fields the grouping needs.

    Attributes
    ----------
    name : str
        Name shown to the user: path relative to the input folder, or the zip member name.
    path : pathlib.Path
        Readable file on disk (the original, or an extracted / decompressed copy).
    origin : str
        What ``meta["files"]`` lists: the file's full path, or the zip member name.
    dataset : pydicom.dataset.Dataset
        Header, with large values (pixel data) read lazily.
    kind : str
        ``"classic"``, ``"enhanced"`` or ``"mosaic"``.

    """

    name: str
    path: Path
    origin: str
    dataset: Any
    kind: str
    uid: str
    number: int | None
    description: str
    image_type: tuple[str, ...]
    echo: int | None


@dataclass(eq=False)
class Frame:
    """One 2D image and its geometry in DICOM patient coordinates (LPS, mm).

    Attributes
    ----------
    index : int
        Frame (or mosaic tile) number within the file's pixel data, 0-based.
    position : tuple of 3 float or None
        ImagePositionPatient: centre of the first transmitted pixel.
    orientation : tuple of 6 float or None
        ImageOrientationPatient: row direction then column direction.
    pixel_spacing : tuple of 2 float or None
        PixelSpacing: (distance between rows, distance between columns) in mm.
    rescale : tuple of 2 float
        (slope, intercept) turning stored values into output values.
    volume_key : tuple of float
        Orders frames that share a slice position into volumes (time, echo, ...).
    thickness : float or None
        SliceThickness (mm).
    spacing_between : float or None
        SpacingBetweenSlices (mm).

    """

    source: SourceFile
    index: int
    rows: int
    columns: int
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    pixel_spacing: tuple[float, ...] | None
    rescale: tuple[float, float] = (1.0, 0.0)
    volume_key: tuple[float, ...] = ()
    thickness: float | None = None
    spacing_between: float | None = None
    sop_uid: str = ""
    philips_float: bool = False


@dataclass
class Layout:
    """The checked slice geometry of a stack.

    Attributes
    ----------
    volumes : list of list of Frame
        ``volumes[t][k]``: frame of volume ``t`` at slice ``k``, slices sorted along the normal.
    row_dir, col_dir, normal : numpy.ndarray, shape (3,)
        Unit vectors (LPS) along a row, down a column, and their cross product.
    pixel_spacing : tuple of 2 float
        (row spacing, column spacing) in mm.
    origin : numpy.ndarray, shape (3,)
        Position (LPS, mm) of the first voxel of the first slice.
    step : numpy.ndarray, shape (3,)
        Vector (LPS, mm) from one slice to the next.
    warnings : list of str
        Geometry remarks that did not stop the read (gaps, slight unevenness).

    """

    volumes: list[list[Frame]]
    row_dir: Vector
    col_dir: Vector
    normal: Vector
    pixel_spacing: tuple[float, float]
    origin: Vector
    step: Vector
    warnings: list[str] = field(default_factory=list)


@dataclass(eq=False)
class Stack:
    """Frames that form one volume, with the outcome of the geometry check.

    Attributes
    ----------
    frames : list of Frame
        Unsorted frames.
    n_groups : int
        Number of (image size, orientation) groups in the stack's series; above 1
        the series mixes geometries and is never chosen automatically.
    index : int
        1-based position in the listing.
    layout : Layout or None
        Checked geometry, None if the check failed.
    error : DicomError or None
        Why the geometry check failed.

    """

    frames: list[Frame]
    n_groups: int = 1
    index: int = 0
    layout: Layout | None = None
    error: DicomError | None = None

    @property
    def first(self) -> SourceFile:
        """The source file of the first frame."""
        return self.frames[0].source

    @property
    def n_slices(self) -> int:
        """Slice positions (K), or frames when the geometry is unknown."""
        return len(self.layout.volumes[0]) if self.layout else len(self.frames)

    @property
    def n_files(self) -> int:
        """Distinct files holding the stack's frames."""
        return len({id(f.source) for f in self.frames})

    @property
    def is_localizer(self) -> bool:
        """True for localizers: fewer than MIN_SLICES positions, or marked as such."""
        marked = any("LOCALIZER" in t.upper() for t in self.first.image_type)
        return marked or self.n_slices < MIN_SLICES or bool(_LOCALIZER.search(self.first.description))

    @property
    def is_original(self) -> bool:
        """True when ImageType starts with ORIGINAL (acquired, not derived)."""
        return bool(self.first.image_type) and self.first.image_type[0].upper() == "ORIGINAL"

    @property
    def problem(self) -> str | None:
        """Why the stack is not chosen automatically, or None."""
        if self.n_groups > 1:
            return f"its series mixes {self.n_groups} image sizes/orientations"
        if self.error is not None:
            return str(self.error).split(";")[0]
        if self.is_localizer:
            return "localizer or fewer than 3 slices"
        return None

    def label(self) -> str:
        """Short one-line description for messages and logs."""
        number = self.first.number if self.first.number is not None else "?"
        return (
            f"{self.index}: series {number} '{self.first.description}' "
            f"({self.n_slices} slices of {self.frames[0].columns}x{self.frames[0].rows}) "
            f"[uid {self.first.uid}]"
        )


# ----------------------------------------------------------------------------- grouping


def _same_orientation(a: tuple[float, ...] | None, b: tuple[float, ...] | None) -> bool:
    if a is None or b is None:
        return a is b
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) <= ORIENTATION_TOL


def _geometry_groups(frames: list[Frame]) -> list[list[Frame]]:
    """Split frames by image size and orientation (within :data:`ORIENTATION_TOL`)."""
    groups: list[list[Frame]] = []
    for frame in frames:
        for group in groups:
            ref = group[0]
            same_size = (ref.rows, ref.columns) == (frame.rows, frame.columns)
            if same_size and _same_orientation(ref.orientation, frame.orientation):
                group.append(frame)
                break
        else:
            groups.append([frame])
    return groups


def _content_key(frame: Frame) -> tuple[tuple[str, ...], int]:
    return frame.source.image_type, frame.source.echo if frame.source.echo is not None else -1


def _split_content(frames: list[Frame]) -> list[list[Frame]]:
    """Split frames of one geometry group by ImageType and (classic) EchoNumbers."""
    parts: dict[tuple[tuple[str, ...], int], list[Frame]] = {}
    for frame in frames:
        parts.setdefault(_content_key(frame), []).append(frame)
    return [parts[key] for key in sorted(parts)]


def _series_order(stack: Stack) -> tuple[Any, ...]:
    """Listing order: SeriesNumber, UID, image size, orientation, ImageType, echo."""
    first, frame = stack.first, stack.frames[0]
    number = first.number if first.number is not None else math.inf
    orientation = tuple(round(v, 3) for v in frame.orientation or ())
    return (number, first.uid, frame.rows, frame.columns, orientation, _content_key(frame))


def group_stacks(frames: list[Frame], source: str) -> list[Stack]:
    """Group frames into stacks, check each stack's geometry and number the listing.

    Parameters
    ----------
    frames : list of Frame
        Every frame of every image file found.
    source : str
        Input path, for messages.

    Returns
    -------
    list of Stack
        In listing order (SeriesNumber, then SeriesInstanceUID), ``index`` 1-based.

    """
    frames = sorted(frames, key=lambda f: (f.source.name, f.index))
    by_uid: dict[str, list[Frame]] = {}
    for frame in frames:
        by_uid.setdefault(frame.source.uid, []).append(frame)
    stacks: list[Stack] = []
    for uid_frames in by_uid.values():
        groups = _geometry_groups(uid_frames)
        for group in groups:
            stacks.extend(Stack(part, n_groups=len(groups)) for part in _split_content(group))
    stacks.sort(key=_series_order)
    for index, stack in enumerate(stacks, start=1):
        stack.index = index
        try:
            stack.layout = analyse_layout(stack.frames, source)
        except DicomError as exc:
            stack.error = exc
    return stacks


# ----------------------------------------------------------------------------- geometry


def _where(frame: Frame, source: str) -> str:
    number = frame.source.number if frame.source.number is not None else "?"
    return f"{frame.source.name} (series {number}) in {source}"


def _require(frames: list[Frame], attr: str, tag: str, source: str) -> None:
    """Raise a DicomError naming ``tag`` if any frame lacks it."""
    for frame in frames:
        if getattr(frame, attr) is None:
            raise DicomError(
                f"Expected {tag} in every image, found it missing in {_where(frame, source)}; "
                "re-export the series with its geometry tags (or pick another with --series)."
            )


def _unit(values: tuple[float, ...]) -> Vector:
    vec = np.asarray(values, dtype=np.float64)
    norm = float(np.linalg.norm(vec))
    return vec / norm if norm > 0 else vec


def _directions(frame: Frame, source: str) -> tuple[Vector, Vector, Vector]:
    """Row direction, column direction and slice normal (unit vectors, LPS)."""
    assert frame.orientation is not None  # checked by _require
    row, col = _unit(frame.orientation[:3]), _unit(frame.orientation[3:])
    normal = np.cross(row, col)
    if float(np.linalg.norm(normal)) < 0.5:
        raise DicomError(
            f"Expected perpendicular row and column directions, found ImageOrientationPatient "
            f"{list(frame.orientation)} in {_where(frame, source)}; fix the header or re-export."
        )
    return row, col, np.asarray(normal / float(np.linalg.norm(normal)), dtype=np.float64)


def _locations(frames: list[Frame], normal: Vector) -> list[list[Frame]]:
    """Frames grouped by slice position, positions ascending along ``normal``."""
    depth = {id(f): float(np.dot(f.position or (0.0, 0.0, 0.0), normal)) for f in frames}
    ordered = sorted(frames, key=lambda f: (depth[id(f)], f.volume_key, f.source.name, f.index))
    locations: list[list[Frame]] = [[ordered[0]]]
    for prev, frame in itertools.pairwise(ordered):
        if depth[id(frame)] - depth[id(prev)] > POSITION_TOL:
            locations.append([])
        locations[-1].append(frame)
    return locations


def _volumes(locations: list[list[Frame]], source: str) -> list[list[Frame]]:
    """Turn per-position frame lists into ``volumes[t][k]``; every position needs T frames."""
    counts = sorted({len(loc) for loc in locations})
    if len(counts) > 1:
        raise DicomError(
            f"Expected the same number of images at every slice position, found between "
            f"{counts[0]} and {counts[-1]} in {_where(locations[0][0], source)}; the series is "
            "incomplete or mixes acquisitions - re-export it or pick another with --series."
        )
    ordered = [sorted(loc, key=lambda f: (f.volume_key, f.source.name, f.index)) for loc in locations]
    return [[loc[t] for loc in ordered] for t in range(counts[0])]


def _spacing_warning(depths: Vector, frame: Frame, source: str) -> str | None:
    """Check slice steps along the normal; None if even, a warning if nearly even.

    Raises
    ------
    DicomError
        If a step deviates from the median step by more than :data:`SPACING_TOL_WARN`.

    """
    steps = np.diff(depths)
    median = float(np.median(steps))
    deviation = float(np.max(np.abs(steps - median))) / median
    if deviation <= SPACING_TOL:
        return None
    lo, hi = float(steps.min()), float(steps.max())
    if deviation <= SPACING_TOL_WARN:
        return (
            f"slice steps vary from {lo:.3f} to {hi:.3f} mm ({deviation:.1%} of the median); "
            "the affine uses the mean step"
        )
    missing = int(np.sum(np.maximum(np.rint(steps / median) - 1, 0)))
    hint = f" (about {missing} missing slice{'s' if missing > 1 else ''})" if missing else ""
    raise DicomError(
        f"Expected evenly spaced slices, found slice steps from {lo:.3f} to {hi:.3f} mm{hint} "
        f"in {_where(frame, source)}; re-export the complete series or pick another with --series."
    )


def _single_step(frame: Frame, normal: Vector) -> Vector:
    """Slice step of a one-slice stack: the normal times the nominal slice spacing."""
    nominal = frame.spacing_between or frame.thickness or 1.0
    return normal * abs(nominal)


def _gap_warning(frame: Frame, step: float) -> str | None:
    """Warn when slices are thinner than the step between them (gaps, as in 2D scans)."""
    if frame.thickness is None or step <= frame.thickness * (1 + SPACING_TOL):
        return None
    return (
        f"slices are {frame.thickness:g} mm thick with {step - frame.thickness:.3g} mm gaps "
        f"(slice step {step:.4g} mm); the affine uses the {step:.4g} mm step, as dcm2niix does"
    )


def _shear_warning(step: Vector, normal: Vector) -> str | None:
    """Warn when slice positions drift sideways (gantry tilt): the affine keeps the shear."""
    cos = float(np.dot(step, normal)) / float(np.linalg.norm(step))
    angle = math.degrees(math.acos(min(1.0, abs(cos))))
    if angle <= 0.5:
        return None
    return f"slice positions are sheared by {angle:.1f} degrees (gantry tilt?); the affine keeps the shear"


def analyse_layout(frames: list[Frame], source: str) -> Layout:
    """Sort frames along the slice normal, split volumes and check the spacing.

    Parameters
    ----------
    frames : list of Frame
        The frames of one stack (one image size and orientation).
    source : str
        Input path, for messages.

    Returns
    -------
    Layout
        Sorted volumes, directions, origin and slice step (LPS, mm).

    Raises
    ------
    DicomError
        Missing geometry tags, unequal frame counts per position, or uneven spacing.

    """
    _require(frames, "orientation", "ImageOrientationPatient (0020,0037)", source)
    _require(frames, "position", "ImagePositionPatient (0020,0032)", source)
    _require(frames, "pixel_spacing", "PixelSpacing (0028,0030)", source)
    row, col, normal = _directions(frames[0], source)
    volumes = _volumes(_locations(frames, normal), source)
    positions = np.asarray([f.position for f in volumes[0]], dtype=np.float64)
    first = volumes[0][0]
    warnings: list[str] = []
    if len(positions) > 1:
        note = _spacing_warning(positions @ normal, first, source)
        step = (positions[-1] - positions[0]) / (len(positions) - 1)
        warnings += [w for w in (note, _shear_warning(step, normal)) if w]
    else:
        step = _single_step(first, normal)
    gap = _gap_warning(first, float(np.dot(step, normal)))
    warnings += [gap] if gap else []
    assert first.pixel_spacing is not None
    spacing = (float(first.pixel_spacing[0]), float(first.pixel_spacing[1]))
    return Layout(volumes, row, col, normal, spacing, positions[0], step, warnings)


# ----------------------------------------------------------------------------- selection


def _rank(stack: Stack) -> tuple[bool, int, float, int]:
    number = stack.first.number if stack.first.number is not None else math.inf
    return (stack.is_original, stack.n_slices, -number, -stack.index)


def listing(stacks: list[Stack], chosen: Stack | None) -> list[dict[str, Any]]:
    """The series listing stored in ``meta["series"]``."""
    return [
        {
            "index": s.index,
            "uid": s.first.uid,
            "number": s.first.number,
            "description": s.first.description,
            "image_type": list(s.first.image_type),
            "echo": s.first.echo,
            "n_files": s.n_files,
            "rows": s.frames[0].rows,
            "columns": s.frames[0].columns,
            "n_slices": s.n_slices,
            "n_volumes": len(s.layout.volumes) if s.layout else None,
            "problem": s.problem,
            "chosen": s is chosen,
        }
        for s in stacks
    ]


def _listing_text(stacks: list[Stack]) -> str:
    return "; ".join(s.label() for s in stacks)


def _mixed_error(stacks: list[Stack], source: str) -> DicomError:
    """Error for a series whose frames mix orientations or image sizes."""
    orientations = _geometry_groups([Frame(s.first, 0, 0, 0, None, s.frames[0].orientation, None) for s in stacks])
    sizes = {(s.frames[0].rows, s.frames[0].columns) for s in stacks}
    if len(orientations) > 1:
        what = f"one slice orientation per series, found {len(orientations)} different orientations"
    else:
        what = f"one image size per series, found {len(sizes)} different image sizes"
    series = f"series {stacks[0].first.number} '{stacks[0].first.description}'"
    return DicomError(
        f"Expected {what} in {source} ({series}); pass --series with the index of one of them: {_listing_text(stacks)}."
    )


def _matching(stacks: list[Stack], wanted: str, source: str) -> list[Stack]:
    """Stacks named by ``wanted``: a SeriesInstanceUID, a SeriesNumber, or a 1-based index."""
    text = wanted.strip()
    found = [s for s in stacks if s.first.uid == text]
    if not found and re.fullmatch(r"[+-]?\d+", text):
        found = [s for s in stacks if s.first.number == int(text)]
        if not found and 1 <= int(text) <= len(stacks):
            found = [stacks[int(text) - 1]]
    if not found:
        raise DicomError(
            f"Expected --series to be a SeriesInstanceUID, a SeriesNumber or an index 1..{len(stacks)}, "
            f"found {text!r} for {source}; available: {_listing_text(stacks)}."
        )
    return found


def _best(stacks: list[Stack], source: str) -> Stack:
    """The best stack among candidates named together (by UID or number)."""
    if len(stacks) == 1:
        return stacks[0]
    if any(s.n_groups > 1 for s in stacks):
        raise _mixed_error(stacks, source)
    valid = [s for s in stacks if s.problem is None] or stacks
    return max(valid, key=_rank)


def choose_stack(stacks: list[Stack], wanted: str | None, source: str) -> Stack:
    """Choose the stack to read (rule in :mod:`mriquant.io.dicom`) and log the others.

    Raises
    ------
    DicomError
        For an unknown ``wanted`` value, or when no stack qualifies and several exist.

    """
    named = None if wanted is None else _matching(stacks, wanted, source)
    chosen = _automatic(stacks, source) if named is None else _best(named, source)
    for stack in stacks:
        if stack is not chosen:
            log.info(
                "%s: also found %s (not read%s)", source, stack.label(), f": {stack.problem}" if stack.problem else ""
            )
    return chosen


def _automatic(stacks: list[Stack], source: str) -> Stack:
    valid = [s for s in stacks if s.problem is None]
    if valid:
        return max(valid, key=_rank)
    if len(stacks) == 1:
        return stacks[0]
    mixed = [s for s in stacks if s.n_groups > 1]
    if mixed and all(s.first.uid == mixed[0].first.uid for s in mixed):
        raise _mixed_error(mixed, source)
    reasons = "; ".join(f"{s.label()}: {s.problem}" for s in stacks)
    raise DicomError(
        f"Expected a series that forms a 3D volume in {source}, found {len(stacks)} stacks and none "
        f"qualifies ({reasons}); pass --series to read one anyway."
    )


# ----------------------------------------------------------------------------- header values

#: Header fields for a report header (identifying fields included, as plain str).
HEADER_FIELDS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "PatientAge",
    "PatientWeight",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "StudyID",
    "AccessionNumber",
    "SeriesDate",
    "SeriesTime",
    "SeriesDescription",
    "SeriesNumber",
    "ProtocolName",
    "Modality",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
    "MagneticFieldStrength",
    "SoftwareVersions",
    "InstitutionName",
    "ReferringPhysicianName",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "SOPClassUID",
)


def as_float(value: Any) -> float | None:
    """``value`` as a finite float, or None (missing, empty, not a number)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def as_floats(value: Any, n: int) -> tuple[float, ...] | None:
    """A multi-valued number with exactly ``n`` finite values, or None."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def as_int(value: Any) -> int | None:
    """``value`` as an int (truncated), or None."""
    number = as_float(value)
    return int(number) if number is not None else None


def first_item(ds: Dataset, keyword: str) -> Dataset | None:
    """First item of sequence ``keyword`` in ``ds``, or None."""
    seq = ds.get(keyword)
    return seq[0] if seq else None


def private_value(ds: Dataset | None, group: int, offset: int, creator: str) -> Any:
    """Value of a private element, or None when absent."""
    if ds is None:
        return None
    try:
        return ds.get_private_item(group, offset, creator).value
    except KeyError:
        return None


def nested_value(groups: Iterable[Dataset | None], sequence: str, keyword: str) -> Any:
    """``keyword`` of the first item of ``sequence`` in the first group that has it."""
    for group in groups:
        item = first_item(group, sequence) if group is not None else None
        if item is not None and keyword in item:
            return item.get(keyword)
    return None


def find_value(ds: Dataset, keyword: str) -> Any:
    """``keyword`` at top level, else in any functional-group macro (shared, then first frame)."""
    if keyword in ds:
        return ds.get(keyword)
    for group_keyword in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        group = first_item(ds, group_keyword)
        for elem in group or ():
            if elem.VR == "SQ" and elem.value and keyword in elem.value[0]:
                return elem.value[0].get(keyword)
    return None


def header_fields(ds: Dataset) -> dict[str, str]:
    r"""Report-header fields present in ``ds`` (identifying ones included), as DICOM's string form.

    Multiple values are joined by a backslash as DICOM encodes them (``"5.7.1\5.7.1.1"``), not by Python's
    list repr; :func:`mriquant.report.dicom_text.format_value` turns the strings into display text.
    """
    out: dict[str, str] = {}
    for keyword in HEADER_FIELDS:
        value = find_value(ds, keyword)
        parts = value if isinstance(value, MultiValue | list | tuple) else [] if value is None else [value]
        text = "\\".join(str(v).strip() for v in parts).strip()
        if text:
            out[keyword] = text
    return out


def _seconds(value: Any) -> float | None:
    number = as_float(value[0] if _is_multi(value) else value)
    return number / 1000.0 if number is not None else None


def _is_multi(value: Any) -> bool:
    return hasattr(value, "__len__") and not isinstance(value, str | bytes) and len(value) > 0


def _text(value: Any) -> str | None:
    if value is None:
        return None
    text = "\\".join(str(v) for v in value) if _is_multi(value) else str(value)
    return text.strip() or None


def _lookup(ds: Dataset, *keywords: str) -> Any:
    for keyword in keywords:
        value = find_value(ds, keyword)
        if value is not None and value != "":
            return value
    return None


#: Sidecar key -> (DICOM keywords tried in order, converter). Nothing identifying.
_SIDECAR: dict[str, tuple[tuple[str, ...], Any]] = {
    "Modality": (("Modality",), _text),
    "Manufacturer": (("Manufacturer",), _text),
    "ManufacturersModelName": (("ManufacturerModelName",), _text),
    "MagneticFieldStrength": (("MagneticFieldStrength",), as_float),
    "ImagingFrequency": (("ImagingFrequency",), as_float),
    "SoftwareVersions": (("SoftwareVersions",), _text),
    "BodyPartExamined": (("BodyPartExamined",), _text),
    "PatientPosition": (("PatientPosition",), _text),
    "SeriesDescription": (("SeriesDescription",), _text),
    "ProtocolName": (("ProtocolName",), _text),
    "SeriesNumber": (("SeriesNumber",), as_int),
    "AcquisitionNumber": (("AcquisitionNumber",), as_int),
    "MRAcquisitionType": (("MRAcquisitionType",), _text),
    "ScanningSequence": (("ScanningSequence",), _text),
    "SequenceVariant": (("SequenceVariant",), _text),
    "ScanOptions": (("ScanOptions",), _text),
    "SequenceName": (("SequenceName", "PulseSequenceName"), _text),
    "SliceThickness": (("SliceThickness",), as_float),
    "SpacingBetweenSlices": (("SpacingBetweenSlices",), as_float),
    "RepetitionTime": (("RepetitionTime",), _seconds),
    "EchoTime": (("EchoTime", "EffectiveEchoTime"), _seconds),
    "InversionTime": (("InversionTime", "InversionTimes"), _seconds),
    "FlipAngle": (("FlipAngle",), as_float),
    "EchoTrainLength": (("EchoTrainLength",), as_int),
    "PixelBandwidth": (("PixelBandwidth",), as_float),
    "PercentPhaseFOV": (("PercentPhaseFieldOfView",), as_float),
    "InPlanePhaseEncodingDirectionDICOM": (("InPlanePhaseEncodingDirection",), _text),
}


def _philips_inversion_time(ds: Dataset) -> float | None:
    """Philips classic images keep TI as the prepulse delay (2001,101B, ms) of an INV prepulse."""
    creator = "Philips Imaging DD 001"
    if str(private_value(ds, 0x2001, 0x1C, creator) or "").strip().upper() != "INV":
        return None
    delay = as_float(private_value(ds, 0x2001, 0x1B, creator))
    return delay / 1000.0 if delay else None


def sidecar(ds: Dataset, frame: Frame) -> dict[str, Any]:
    """BIDS-like, non-identifying acquisition parameters (times in seconds, like dcm2niix)."""
    out: dict[str, Any] = {}
    for key, (keywords, convert) in _SIDECAR.items():
        value = _lookup(ds, *keywords)
        converted = convert(value) if value is not None else None
        if converted is not None:
            out[key] = converted
    image_type = _lookup(ds, "ImageType", "FrameType")
    if image_type is not None:
        out["ImageType"] = [str(v) for v in image_type] if _is_multi(image_type) else [str(image_type)]
    if "InversionTime" not in out:
        inversion = _philips_inversion_time(ds)
        out.update({"InversionTime": inversion} if inversion is not None else {})
    if frame.orientation is not None:
        out["ImageOrientationPatientDICOM"] = list(frame.orientation)
    if frame.philips_float:
        out["UsePhilipsFloatNotDisplayScaling"] = 1
    out["ConversionSoftware"] = "mriquant"
    out["ConversionSoftwareVersion"] = __version__
    return out
