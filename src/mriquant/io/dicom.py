"""Read a DICOM series (folder, zip, single file) into a float32 volume with a RAS+ affine.

Inputs
------
A folder (searched recursively), a ``.zip`` (extracted into a temporary folder that is
removed afterwards), or a single file (that file only: a single slice, an enhanced
multi-frame object or a Siemens mosaic). Any of these may hold gzipped files
(``.dcm.gz``). A file is read as DICOM when it has the ``DICM`` preamble, whatever its
name; a file without preamble is tried (``force=True``) only when its first tag is in
group 0002 or 0008, and kept only if it has pixel data and ImagePositionPatient. Files
without pixel data (DICOMDIR, structured reports, ...) and non-DICOM files (README,
``.json``) are skipped quietly.

Grouping
--------
Images are grouped by SeriesInstanceUID, then split by image size (Rows/Columns) and
ImageOrientationPatient (components within 1e-3), then by ImageType and, for classic
files, EchoNumbers. Each part is a *stack*. Frames of a stack that share a slice position
(within 0.01 mm along the normal) are separate volumes and give a 4D array
``(I, J, K, T)``, ordered by TemporalPositionIdentifier, AcquisitionNumber, TriggerTime and
InstanceNumber (classic) or TemporalPositionIndex and EffectiveEchoTime (enhanced);
``--volume N`` picks one. Every position must hold the same number of frames.

Selection rule
--------------
Without ``--series``, the chosen stack is the best *valid* one: a valid stack has a
checked geometry (see below), at least 3 slice positions, no ``LOCALIZER`` in
ImageType and no localizer/scout/survey/3-plane in SeriesDescription, and comes from a
series that does not mix image sizes or orientations. Among valid stacks, ImageType
ORIGINAL beats DERIVED, then more slice positions win, then the lower SeriesNumber, then
the earlier listing index. If no stack is valid, a lone stack is read anyway (a single
slice gives shape ``(I, J, 1)``); a series mixing orientations raises "Expected one slice
orientation per series ..."; anything else raises an error listing every stack and why it
was refused. The other stacks are logged at INFO level. ``--series`` takes a
SeriesInstanceUID, else a SeriesNumber, else a 1-based index into ``meta["series"]``
(a SeriesNumber wins over an index with the same value).

Geometry rules (warning or error)
---------------------------------
* Slices are sorted by the projection of ImagePositionPatient on the normal
  (row direction x column direction).
* Missing ImagePositionPatient, ImageOrientationPatient or PixelSpacing: error naming the tag.
* Slice steps within 1 % of the median step: accepted. Within 5 %: accepted with a warning,
  the affine uses the mean step. Beyond (a missing slice, irregular spacing): error, since a
  silently stretched volume would corrupt every volume measured from it.
* Slices thinner than the step between them (gaps, e.g. 4 mm slices every 4.8 mm): accepted
  with a warning; the affine uses the real step between positions, as dcm2niix does.
* Positions drifting sideways (gantry tilt): warning; the affine keeps the shear.
* A single slice: the slice step is the normal times SpacingBetweenSlices, else
  SliceThickness, else 1 mm.

Values
------
Pixel data is decoded with pydicom (``pixel_array``: JPEG, JPEG-LS, JPEG 2000, RLE and
big-endian through the installed plugins; BitsStored masking and sign extension included),
then rescaled per frame in float32: ``stored * RescaleSlope + RescaleIntercept`` (enhanced:
PixelValueTransformationSequence). For Philips images that carry the private scale slope
(2005,100E), the value is the Philips floating-point value
``(stored * RescaleSlope + RescaleIntercept) / (RescaleSlope * ScaleSlope)``, which is what
dcm2niix writes by default and what is comparable between scans. A Siemens mosaic
(ImageType MOSAIC) is cut into its NumberOfImagesInMosaic tiles; the tiles follow the CSA
SliceNormalVector from the first tile's corner.

Metadata
--------
``meta`` holds ``format`` ("dicom"), ``source``, ``dicom_kind`` (classic, enhanced,
mosaic), ``series_uid``, ``study_uid``, ``frame_of_reference_uid``, ``modality``,
``files`` (paths, or zip member names, in slice order), ``sop_instance_uids`` (same
order), ``dicom`` (report-header fields as str, identifying ones included), ``sidecar``
(non-identifying acquisition parameters, times in seconds), ``series`` (the listing:
index, uid, number, description, n_files, rows, columns, n_slices, chosen, ...),
``warnings`` and ``dicom_headers`` (:data:`HEADERS_KEY`): a :class:`SeriesHeaders` holding the
pixel-less datasets of the files in ``files``, so that the DICOM export reuses them instead of
reading the series again. It is the one entry that is not JSON; no writer dumps ``meta`` whole
(the ``convert`` sidecar takes ``sidecar`` and ``warnings`` only), and a new one must skip it.
"""

from __future__ import annotations

import gzip
import logging
import math
import shutil
import struct
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from mriquant.core.errors import DicomError, FormatError
from mriquant.io.base import RawVolume, ReadOptions
from mriquant.io.dicom_series import (
    Frame,
    Layout,
    SourceFile,
    Stack,
    as_float,
    as_floats,
    as_int,
    choose_stack,
    first_item,
    group_stacks,
    header_fields,
    listing,
    nested_value,
    private_value,
    sidecar,
)

log = logging.getLogger(__name__)

#: Values larger than this (bytes) are read from disk only when used (pixel data, CSA blobs).
_DEFER = 4096
#: pydicom raises these on files that are not (well-formed) DICOM.
_READ_ERRORS = (
    InvalidDicomError,
    OSError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    struct.error,
    OverflowError,
    NotImplementedError,
    UnicodeError,
    RuntimeError,
)
#: First two bytes of a DICOM file without preamble: group 0002 or 0008, either byte order.
_RAW_STARTS = (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08")
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_PHILIPS_IMAGING = "Philips MR Imaging DD 001"
_PHILIPS_FRAME = "Philips MR Imaging DD 005"
#: FloatPixelData (7FE0,0008): where ``dcmread(stop_before_pixels=True)`` stops, and where kept headers end.
_FIRST_PIXEL_TAG = 0x7FE00008
#: ``meta`` key of the :class:`SeriesHeaders` of a DICOM read.
HEADERS_KEY = "dicom_headers"


@dataclass(frozen=True, eq=False, repr=False)
class SeriesHeaders:
    """The headers of the series read, kept for the DICOM export (which then opens no file).

    Attributes
    ----------
    kind : str
        ``"classic"``, ``"enhanced"`` or ``"mosaic"`` (as ``meta["dicom_kind"]``).
    datasets : tuple of pydicom.dataset.Dataset
        One per file of the chosen stack, in the order of ``meta["files"]``. Every value is loaded
        (nothing deferred to a file that may be gone) and every element from (7FE0,0008) on is dropped,
        as ``dcmread(..., stop_before_pixels=True)`` reads them: headers only, no pixel data.

    """

    kind: str
    datasets: tuple[Dataset, ...]

    def __repr__(self) -> str:
        return f"SeriesHeaders(kind={self.kind!r}, {len(self.datasets)} datasets)"


def series_headers(meta: Mapping[str, Any]) -> SeriesHeaders | None:
    """The :class:`SeriesHeaders` in an image's ``meta``, or None for an image not read from DICOM."""
    headers = meta.get(HEADERS_KEY)
    return headers if isinstance(headers, SeriesHeaders) else None


# ----------------------------------------------------------------------------- finding files


def _folder_files(folder: Path) -> list[tuple[str, Path, str]]:
    """(name, path, origin) of every file below ``folder``, sorted by path."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if not files:
        raise DicomError(
            f"Expected DICOM files in {folder}, found an empty folder; "
            "pass the folder that holds the scan's DICOM files."
        )
    return [(str(p.relative_to(folder)), p, str(p)) for p in files]


def _zip_files(archive: Path, staging: Path) -> list[tuple[str, Path, str]]:
    """Extract every member of ``archive`` into ``staging``; (member name, path, member name)."""
    out: list[tuple[str, Path, str]] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            for i, info in enumerate(zf.infolist()):
                if info.is_dir() or info.filename.startswith("__MACOSX/"):
                    continue
                target = staging / f"zip{i:06d}"
                with zf.open(info) as src, target.open("wb") as dst:
                    shutil.copyfileobj(src, dst)
                out.append((info.filename, target, info.filename))
    except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError, OSError) as exc:
        raise FormatError(
            f"Expected a readable zip archive, found {archive.name} that cannot be extracted "
            f"({type(exc).__name__}: {exc}); re-create the zip (no password) or pass the folder."
        ) from None
    if not out:
        raise DicomError(f"Expected DICOM files in {archive}, found an empty zip archive; zip the scan's DICOM folder.")
    return out


def _gunzip(path: Path, staging: Path, index: int) -> Path | None:
    """Decompress a gzipped file into ``staging``; None if it is not valid gzip."""
    target = staging / f"gz{index:06d}"
    try:
        with gzip.open(path, "rb") as src, target.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    except (OSError, EOFError) as exc:
        log.debug("%s: not readable as gzip (%s); skipped.", path, exc)
        return None
    return target


def _candidates(path: Path, staging: Path) -> list[tuple[str, Path, str]]:
    """Every file to try, gzipped ones decompressed into ``staging``."""
    if path.is_dir():
        files = _folder_files(path)
    elif zipfile.is_zipfile(path):
        files = _zip_files(path, staging)
    else:
        files = [(path.name, path, str(path))]
    out: list[tuple[str, Path, str]] = []
    for i, (name, file, origin) in enumerate(files):
        if _head(file, 2) == b"\x1f\x8b":
            unzipped = _gunzip(file, staging, i)
            if unzipped is None:
                continue
            file = unzipped
        out.append((name, file, origin))
    return out


def _head(path: Path, n: int) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


# ----------------------------------------------------------------------------- headers


def _has_pixels(ds: Dataset) -> bool:
    return any(k in ds for k in _PIXEL_KEYWORDS)


def _read_header(path: Path) -> Dataset | None:
    """The dataset in ``path`` (pixel data deferred), or None if it is not DICOM."""
    head = _head(path, 132)
    preamble = head[128:132] == b"DICM"
    if not preamble and head[:2] not in _RAW_STARTS:
        return None
    try:
        ds = pydicom.dcmread(path, force=not preamble, defer_size=_DEFER)
    except _READ_ERRORS as exc:
        log.debug("%s: not readable as DICOM (%s); skipped.", path, exc)
        return None
    if not preamble and not (_has_pixels(ds) and "ImagePositionPatient" in ds):
        return None
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = _syntax_from_encoding(ds.original_encoding)
    return ds


def _syntax_from_encoding(encoding: tuple[bool | None, bool | None]) -> UID:
    """Transfer syntax of a file without meta header, from the encoding pydicom detected."""
    implicit, little = encoding
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little or little is None else ExplicitVRBigEndian


def _mosaic_count(ds: Dataset) -> int | None:
    """NumberOfImagesInMosaic of a Siemens mosaic, or None for any other image."""
    image_type = [str(t).upper() for t in ds.get("ImageType") or ()]
    if "MOSAIC" not in image_type or "SIEMENS" not in str(ds.get("Manufacturer", "")).upper():
        return None
    value = private_value(ds, 0x0019, 0x0A, "SIEMENS MR HEADER")
    if isinstance(value, bytes):
        value = int.from_bytes(value[:2], "little") if len(value) >= 2 else None
    count = as_int(value)
    if count is None:
        items = _csa_items(ds, "NumberOfImagesInMosaic")
        count = as_int(items[0]) if items else None
    return count if count and count > 1 else None


def _kind(ds: Dataset) -> str:
    """``"enhanced"`` (functional groups), ``"mosaic"`` (Siemens) or ``"classic"``."""
    if "PerFrameFunctionalGroupsSequence" in ds:
        return "enhanced"
    return "mosaic" if _mosaic_count(ds) else "classic"


def _source_file(name: str, path: Path, origin: str, ds: Dataset) -> SourceFile:
    """Series-level fields of one file."""
    kind = _kind(ds)
    image_type = tuple(str(t) for t in (ds.get("ImageType") or ()))
    return SourceFile(
        name=name,
        path=path,
        origin=origin,
        dataset=ds,
        kind=kind,
        uid=str(ds.get("SeriesInstanceUID", "")) or f"(no SeriesInstanceUID: {name})",
        number=as_int(ds.get("SeriesNumber")),
        description=str(ds.get("SeriesDescription", "") or ""),
        image_type=image_type,
        echo=as_int(ds.get("EchoNumbers")) if kind == "classic" else None,
    )


# ----------------------------------------------------------------------------- frames


def _philips_scale(ds: Dataset, rescale: tuple[float, float], item: Dataset | None) -> tuple[float, float]:
    """Philips floating-point scaling: (SV*RS + RI) / (RS*SS), when the scale slope SS is given."""
    if "PHILIPS" not in str(ds.get("Manufacturer", "")).upper():
        return rescale
    scale = as_float(private_value(item if item is not None else ds, 0x2005, 0x0E, _PHILIPS_IMAGING))
    slope, intercept = rescale
    if not scale or not slope:
        return rescale
    return 1.0 / scale, intercept / (slope * scale)


def _rescale(item: Dataset | None, fallback: Dataset) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of ``item``, else of ``fallback``, else (1, 0)."""
    for source in (item, fallback):
        if source is not None and "RescaleSlope" in source:
            slope = as_float(source.get("RescaleSlope"))
            intercept = as_float(source.get("RescaleIntercept"))
            return (slope if slope else 1.0), (intercept or 0.0)
    return 1.0, 0.0


def _classic_volume_key(ds: Dataset) -> tuple[float, ...]:
    keys = ("TemporalPositionIdentifier", "AcquisitionNumber", "TriggerTime", "InstanceNumber")
    return tuple(as_float(ds.get(k)) or 0.0 for k in keys)


def _classic_frames(src: SourceFile) -> list[Frame]:
    """Frames of a classic image; a multi-frame file without functional groups has no positions."""
    ds = src.dataset
    n_frames = as_int(ds.get("NumberOfFrames")) or 1
    position = as_floats(ds.get("ImagePositionPatient"), 3) if n_frames == 1 else None
    plain = _rescale(ds, ds)
    rescale = _philips_scale(ds, plain, None)
    return [
        Frame(
            src,
            i,
            int(ds.Rows),
            int(ds.Columns),
            position,
            as_floats(ds.get("ImageOrientationPatient"), 6),
            as_floats(ds.get("PixelSpacing"), 2),
            rescale,
            _classic_volume_key(ds),
            as_float(ds.get("SliceThickness")),
            as_float(ds.get("SpacingBetweenSlices")),
            str(ds.get("SOPInstanceUID", "")),
            rescale != plain,
        )
        for i in range(n_frames)
    ]


def _enhanced_frame(src: SourceFile, index: int, item: Dataset, shared: Dataset | None) -> Frame:
    """One frame of an enhanced multi-frame image from its functional groups."""
    ds, groups = src.dataset, (item, shared)
    rescale_item = first_item(item, "PixelValueTransformationSequence")
    if rescale_item is None and shared is not None:
        rescale_item = first_item(shared, "PixelValueTransformationSequence")
    plain = _rescale(rescale_item, ds)
    philips = private_value(item, 0x2005, 0x0F, _PHILIPS_FRAME) or private_value(shared, 0x2005, 0x0F, _PHILIPS_FRAME)
    philips_item = philips[0] if philips and isinstance(philips[0], Dataset) else None
    key = (
        as_float(nested_value(groups, "FrameContentSequence", "TemporalPositionIndex")) or 0.0,
        as_float(nested_value(groups, "MREchoSequence", "EffectiveEchoTime")) or 0.0,
    )
    rescale = _philips_scale(ds, plain, philips_item)
    return Frame(
        src,
        index,
        int(ds.Rows),
        int(ds.Columns),
        as_floats(nested_value(groups, "PlanePositionSequence", "ImagePositionPatient"), 3),
        as_floats(nested_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6),
        as_floats(nested_value(groups, "PixelMeasuresSequence", "PixelSpacing"), 2),
        rescale,
        key,
        as_float(nested_value(groups, "PixelMeasuresSequence", "SliceThickness")),
        as_float(nested_value(groups, "PixelMeasuresSequence", "SpacingBetweenSlices")),
        str(ds.get("SOPInstanceUID", "")),
        rescale != plain,
    )


def _enhanced_frames(src: SourceFile) -> list[Frame]:
    ds = src.dataset
    shared = first_item(ds, "SharedFunctionalGroupsSequence")
    return [_enhanced_frame(src, i, item, shared) for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence)]


def _csa_items(ds: Dataset, name: str) -> list[str] | None:
    """Values of element ``name`` in the Siemens CSA image header (SV10 layout), or None."""
    blob = private_value(ds, 0x0029, 0x10, "SIEMENS CSA HEADER")
    if not isinstance(blob, bytes) or not blob.startswith(b"SV10"):
        return None
    try:
        return _csa_search(blob, name)
    except (struct.error, IndexError, UnicodeDecodeError):
        return None


def _csa_search(blob: bytes, name: str) -> list[str] | None:
    """Walk the CSA tags: 64-byte name, vm, vr, syngodt, item count, then 16-byte item headers."""
    (n_tags,) = struct.unpack_from("<I", blob, 8)
    pos = 16
    for _ in range(min(n_tags, 4096)):
        tag = blob[pos : pos + 64].split(b"\0", 1)[0].decode("latin-1")
        (n_items,) = struct.unpack_from("<i", blob, pos + 76)
        pos += 84
        values: list[str] = []
        for _ in range(max(0, min(n_items, 4096))):
            (length,) = struct.unpack_from("<i", blob, pos + 4)
            pos += 16
            values.append(blob[pos : pos + length].split(b"\0", 1)[0].decode("latin-1").strip())
            pos += (length + 3) // 4 * 4
        if tag == name:
            return [v for v in values if v]
    return None


def _vector(values: npt.NDArray[np.float64]) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _mosaic_frames(src: SourceFile) -> list[Frame]:
    """Tiles of a Siemens mosaic, each with its own position along the slice normal."""
    ds = src.dataset
    count = _mosaic_count(ds) or 1
    tiles = math.ceil(math.sqrt(count))
    rows, columns = int(ds.Rows) // tiles, int(ds.Columns) // tiles
    (template,) = _classic_frames(src)
    if template.position is None or template.orientation is None or template.pixel_spacing is None:
        return [template]  # the geometry check names the missing tag
    row_dir = np.asarray(template.orientation[:3])
    col_dir = np.asarray(template.orientation[3:])
    normal = as_floats(_csa_items(ds, "SliceNormalVector"), 3) or tuple(np.cross(row_dir, col_dir))
    # ImagePositionPatient is the corner of the whole mosaic; move it to the first tile's corner.
    origin = (
        np.asarray(template.position)
        + row_dir * template.pixel_spacing[1] * (int(ds.Columns) - columns) / 2
        + col_dir * template.pixel_spacing[0] * (int(ds.Rows) - rows) / 2
    )
    step = template.spacing_between or template.thickness or 1.0
    return [
        replace(template, index=k, rows=rows, columns=columns, position=_vector(origin + k * step * np.asarray(normal)))
        for k in range(count)
    ]


def frames_of(src: SourceFile) -> list[Frame]:
    """Every 2D frame in ``src`` with its geometry and rescaling."""
    if src.kind == "enhanced":
        return _enhanced_frames(src)
    if src.kind == "mosaic":
        return _mosaic_frames(src)
    return _classic_frames(src)


def _scan(path: Path, staging: Path) -> list[Frame]:
    """Read the headers of every candidate file; raise if none holds DICOM images."""
    files = _candidates(path, staging)
    frames: list[Frame] = []
    n_dicom = 0
    for name, file, origin in files:
        ds = _read_header(file)
        if ds is None:
            continue
        n_dicom += 1
        if not _has_pixels(ds) or "Rows" not in ds:
            log.debug("%s: DICOM without pixel data; skipped.", name)
            continue
        frames.extend(frames_of(_source_file(name, file, origin, ds)))
    if not frames:
        raise _nothing_found(path, len(files), n_dicom)
    return frames


def _nothing_found(path: Path, n_files: int, n_dicom: int) -> DicomError:
    """The error for inputs that hold no DICOM image."""
    if n_dicom:
        files = f"{n_dicom} DICOM file{'s' if n_dicom > 1 else ''}"
        return DicomError(
            f"Expected DICOM images with pixel data in {path}, found {files} without pixel data "
            "(DICOMDIR, reports, ...); pass the folder (or zip) that holds the image files."
        )
    if path.is_file() and not zipfile.is_zipfile(path):
        return DicomError(
            f"Expected a DICOM file, found {path} that is not DICOM (no DICM preamble and no readable "
            "header); pass a DICOM file, folder or zip."
        )
    return DicomError(
        f"Expected DICOM files in {path}, found {n_files} file{'s' if n_files != 1 else ''}, none of "
        "them DICOM; pass the folder (or zip) that holds the scan's DICOM files."
    )


# ----------------------------------------------------------------------------- pixels


def _decode(src: SourceFile) -> npt.NDArray[Any]:
    """Stored values of every frame of ``src``, shape (F, rows, columns)."""
    ds = src.dataset
    samples = as_int(ds.get("SamplesPerPixel")) or 1
    if samples != 1:
        raise DicomError(
            f"Expected grayscale images (SamplesPerPixel 1), found {samples} samples per pixel in "
            f"{src.name}; pass an MR/CT grayscale series."
        )
    try:
        array = pixel_array(ds)
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, OSError) as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise DicomError(
            f"Expected decodable pixel data, found {name} data that could not be decoded in "
            f"{src.name} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "re-export the series uncompressed."
        ) from None
    return array.reshape((-1, *array.shape[-2:]))


def _detile(array: npt.NDArray[Any], rows: int, columns: int, count: int) -> npt.NDArray[Any]:
    """Cut a mosaic (1, R, C) into ``count`` tiles of (rows, columns), row-major tile order."""
    tiles_down, tiles_across = array.shape[1] // rows, array.shape[2] // columns
    grid = array[0, : tiles_down * rows, : tiles_across * columns]
    tiles = grid.reshape(tiles_down, rows, tiles_across, columns).transpose(0, 2, 1, 3)
    return tiles.reshape(-1, rows, columns)[:count]


def _stored_frames(frames: list[Frame]) -> npt.NDArray[Any]:
    """Stored values of ``frames`` in order, shape (N, rows, columns); each file decoded once."""
    decoded: dict[int, npt.NDArray[Any]] = {}
    picked = []
    for frame in frames:
        src = frame.source
        if id(src) not in decoded:
            array = _decode(src)
            if src.kind == "mosaic":
                array = _detile(array, frame.rows, frame.columns, _mosaic_count(src.dataset) or 1)
            decoded[id(src)] = array
        picked.append(decoded[id(src)][frame.index])
    return np.stack(picked)


def _values(frames: list[Frame]) -> npt.NDArray[np.float32]:
    """Rescaled float32 values of ``frames``, shape (N, rows, columns).

    Rescaling is done in float32, as a NIfTI reader applies scl_slope/scl_inter.
    """
    values = _stored_frames(frames).astype(np.float32)
    slopes = np.asarray([f.rescale[0] for f in frames], dtype=np.float32)
    intercepts = np.asarray([f.rescale[1] for f in frames], dtype=np.float32)
    if np.any(slopes != 1):
        values *= slopes[:, None, None]
    if np.any(intercepts != 0):
        values += intercepts[:, None, None]
    return values


def volume_array(layout: Layout) -> npt.NDArray[np.float32]:
    """The stack's voxels, shape (I, J, K) or (I, J, K, T): I along rows, J down columns."""
    n_volumes, n_slices = len(layout.volumes), len(layout.volumes[0])
    values = _values([f for volume in layout.volumes for f in volume])
    values = values.reshape(n_volumes, n_slices, *values.shape[1:]).transpose(3, 2, 1, 0)
    return np.ascontiguousarray(values[..., 0] if n_volumes == 1 else values)


def volume_affine(layout: Layout) -> npt.NDArray[np.float64]:
    """Voxel-to-RAS+ affine (mm): DICOM's LPS patient axes with x and y negated."""
    lps = np.eye(4)
    lps[:3, 0] = layout.row_dir * layout.pixel_spacing[1]
    lps[:3, 1] = layout.col_dir * layout.pixel_spacing[0]
    lps[:3, 2] = layout.step
    lps[:3, 3] = layout.origin
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps


def _file_order(layout: Layout) -> list[SourceFile]:
    """The files of the stack, in slice order (the first frame of each file decides)."""
    seen: dict[str, SourceFile] = {}
    for volume in layout.volumes:
        for frame in volume:
            seen.setdefault(frame.source.origin, frame.source)
    return list(seen.values())


def _header_only(ds: Dataset) -> Dataset:
    """``ds`` with its pixel data (and any element after it) dropped and every other value read now.

    Call it once the pixels are decoded and before the staging folder is removed: a deferred value
    would otherwise be read from the file later, or from a copy that no longer exists.
    """
    tags = ds.keys()  # tags only: iterating the dataset itself would read the pixel data
    for tag in [tag for tag in tags if tag >= _FIRST_PIXEL_TAG]:
        del ds[tag]
    ds.walk(lambda _dataset, _element: None)  # reading each element loads deferred values
    return ds


def _series_headers(chosen: Stack, layout: Layout) -> SeriesHeaders:
    return SeriesHeaders(chosen.first.kind, tuple(_header_only(src.dataset) for src in _file_order(layout)))


def _meta(path: Path, stacks: list[Stack], chosen: Stack, layout: Layout) -> dict[str, Any]:
    ds = chosen.first.dataset
    return {
        "format": "dicom",
        "source": str(path),
        "dicom_kind": chosen.first.kind,
        "series_uid": str(ds.get("SeriesInstanceUID", "")),
        "study_uid": str(ds.get("StudyInstanceUID", "")),
        "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "")),
        "modality": str(ds.get("Modality", "")),
        "files": [src.origin for src in _file_order(layout)],
        "sop_instance_uids": list(dict.fromkeys(f.sop_uid for v in layout.volumes for f in v)),
        "dicom": header_fields(ds),
        "sidecar": sidecar(ds, layout.volumes[0][0]),
        "series": listing(stacks, chosen),
        "warnings": list(layout.warnings),
    }


# ----------------------------------------------------------------------------- entry point


def read_dicom(path: Path, options: ReadOptions) -> RawVolume:
    """Read a DICOM folder, zip or file into a float32 volume with a RAS+ affine.

    Parameters
    ----------
    path : pathlib.Path
        Folder (searched recursively), ``.zip``, or single DICOM file (``.dcm``, ``.dcm.gz``,
        or any name with the DICM preamble).
    options : ReadOptions
        ``options.series`` picks a series (UID, SeriesNumber or 1-based listing index).

    Returns
    -------
    RawVolume
        ``array`` float32 of shape (I, J, K) or (I, J, K, T) with I along the image rows
        (columns of pixels), J down the columns, K along the slice normal; ``affine`` 4x4
        voxel-to-RAS+ in mm; ``meta`` as described in the module docstring.

    Raises
    ------
    DicomError
        No DICOM images, unknown ``--series``, or a geometry that cannot form a volume.
    FormatError
        An unreadable zip archive.

    Examples
    --------
    >>> raw = read_dicom(Path("scan_dicom"), ReadOptions())  # doctest: +SKIP
    >>> raw.array.shape, raw.meta["sidecar"]["RepetitionTime"]  # doctest: +SKIP
    ((256, 256, 170), 0.0065)

    """
    with tempfile.TemporaryDirectory(prefix="mriquant-dicom-") as staging:
        stacks = group_stacks(_scan(path, Path(staging)), str(path))
        chosen = choose_stack(stacks, options.series, str(path))
        if chosen.layout is None:
            assert chosen.error is not None
            raise chosen.error
        array = volume_array(chosen.layout)
        meta = _meta(path, stacks, chosen, chosen.layout)
        meta[HEADERS_KEY] = _series_headers(chosen, chosen.layout)  # after decoding: drops the pixel data
    for warning in chosen.layout.warnings:
        log.warning("%s: %s", path, warning)
    return RawVolume(array, volume_affine(chosen.layout), meta)
