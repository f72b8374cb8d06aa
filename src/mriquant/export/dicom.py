"""Export results as DICOM objects in the source scan's study: SEG, TID 1500 SR and encapsulated PDF.

Objects
-------
``seg.dcm``
    A BINARY DICOM Segmentation (the type every SEG viewer reads), one segment per structure
    present in the label map, coded with SNOMED CT (``data/labels/freesurfer-snomed.tsv``;
    a generic "Anatomical Structure" where no code exists), Left/Right as a property type
    modifier, the table's colour and mriquant's algorithm identification. Each frame is derived
    from one source slice: one frame per segment and slice that holds it (empty frames omitted).
``sr.dcm``
    A Comprehensive 3D SR holding a TID 1500 measurement report: one measurement group per
    structure with its volume in UCUM ``ml``, a tracking identifier and UID, and a reference
    to the SEG segment and the source images it covers; a structure listed in the volumes but
    absent from the label map gets a group without a region (TID 1501). The intracranial volume
    is a further group when known. No TID 1600 image library is written: it repeated ~20
    attributes per source slice (740 kB for 170 slices) and tripled the export time, while the
    segment references and the evidence sequence already name every source instance.
``report_pdf.dcm``
    The PDF report as an Encapsulated PDF, when a PDF is given.

All objects share the source's study and patient module, each has a new series, and the
equipment is "mriquant" with its version.

Geometry
--------
The label map lies on the grid of :func:`mriquant.io.read_image` (RAS+, mm). Each source
frame is mapped by world position, not by index: its pixel centres (ImagePositionPatient,
ImageOrientationPatient and PixelSpacing, LPS) are converted to RAS and then to voxel indices
of the label map, which must land within :data:`GRID_TOLERANCE` voxels of whole numbers. No
axis order is assumed, so sagittal, oblique or reversed slice orders export correctly.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import platform
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import EncapsulatedPDFStorage

import mriquant
from mriquant.core import outputs as out
from mriquant.core.errors import DicomError, FormatError, GeometryError, InputError
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import LabelTable, freesurfer
from mriquant.io import detect_format, read_image
from mriquant.io.base import check_file
from mriquant.io.dicom import series_headers
from mriquant.io.dicom_series import as_floats, first_item, nested_value
from mriquant.io.write import atomic_path

__all__ = ["GRID_TOLERANCE", "export_dicom", "structure_code"]

log = logging.getLogger(__name__)

#: Largest distance (voxels) between a source pixel centre and the nearest label-map voxel centre.
GRID_TOLERANCE = 0.25
#: RAS+ <-> LPS: negate x and y.
_FLIP = np.array([-1.0, -1.0, 1.0])
_MANUFACTURER = "mriquant"
_UCUM_ML = hd.sr.CodedConcept("ml", "UCUM", "milliliter")
_GENERIC: Code = codes.SCT.AnatomicalStructure
_SIDES: dict[str, Code] = {"left-": codes.SCT.Left, "right-": codes.SCT.Right}
#: Property category of a property type code (default: anatomical structure).
_CATEGORIES: dict[str, Code] = {codes.SCT.CerebrospinalFluid.value: codes.SCT.BodySubstance}
#: Algorithm family (CID 7162) by ``dseg.meta["segmentation"]``; other or unnamed methods are taken to be
#: trained models ("Artificial Intelligence").
_FAMILIES = {
    "otsu": codes.cid7162.HistogramAnalysis,
    "kmeans": codes.cid7162.ClusterAnalysis,
    "fcm": codes.cid7162.ClusterAnalysis,
    "gmm": codes.cid7162.ClusterAnalysis,
    "mrf": codes.cid7162.ClusterAnalysis,
    "region-growing": codes.cid7162.NeighborhoodAnalysis,
    "level-set": codes.cid7162.DeformableModels,
    "atlas": codes.cid7162.DeformableModels,  # labels propagated by deformable registration
}
#: Type 2 attributes highdicom copies from the source without a default.
_TYPE2 = ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber", "StudyID")

FloatArray = npt.NDArray[np.float64]


# ----------------------------------------------------------------------------- codes


@cache
def _snomed_table() -> dict[int, hd.sr.CodedConcept]:
    """FreeSurfer id -> coded concept, from ``data/labels/freesurfer-snomed.tsv``."""
    text = resources.files("mriquant").joinpath("data/labels/freesurfer-snomed.tsv").read_text("utf-8")
    out: dict[int, hd.sr.CodedConcept] = {}
    for line in text.splitlines():
        if not line.strip() or line.startswith(("#", "label\t")):
            continue
        label, code, meaning, scheme = line.split("\t")
        out[int(label)] = hd.sr.CodedConcept(code, scheme, meaning)
    return out


def structure_code(label: int, table: LabelTable) -> hd.sr.CodedConcept:
    """SNOMED CT property type of ``label``, or the generic "Anatomical Structure".

    The FreeSurfer mapping is used only when ``table`` names ``label`` as FreeSurfer does, so a
    tissue table (1 CSF, 2 GM, 3 WM) never borrows FreeSurfer's meaning of those ids.

    Examples
    --------
    >>> structure_code(17, freesurfer()).meaning
    'Hippocampus'

    """
    known = _snomed_table().get(label)
    if known is None or table.name_of(label) != freesurfer().name_of(label):
        return hd.sr.CodedConcept(_GENERIC.value, _GENERIC.scheme_designator, _GENERIC.meaning)
    return known


def _category(code: hd.sr.CodedConcept) -> Code:
    return _CATEGORIES.get(code.value, _GENERIC)


def _laterality(name: str) -> Code | None:
    """Left/Right from a FreeSurfer-style name (``Left-Hippocampus``), else None."""
    lowered = name.lower()
    return next((code for prefix, code in _SIDES.items() if lowered.startswith(prefix)), None)


# ----------------------------------------------------------------------------- source


@dataclass(frozen=True)
class Plane:
    """Geometry of one source frame (LPS, mm).

    Attributes
    ----------
    position : numpy.ndarray, shape (3,)
        Centre of the first pixel (ImagePositionPatient).
    row_dir, col_dir : numpy.ndarray, shape (3,)
        Unit vectors along a row (increasing column index) and down a column.
    spacing : tuple of float
        PixelSpacing: (between rows, between columns) in mm.
    shape : tuple of int
        (Rows, Columns).

    """

    position: FloatArray
    row_dir: FloatArray
    col_dir: FloatArray
    spacing: tuple[float, float]
    shape: tuple[int, int]


@dataclass(frozen=True)
class Source:
    """The source series: its image on the native grid and its datasets in highdicom's frame order."""

    image: Image
    datasets: list[Dataset]
    planes: list[Plane]

    @property
    def first(self) -> Dataset:
        """The dataset the patient and study modules are copied from."""
        return self.datasets[0]

    @property
    def name(self) -> str:
        """Name of the source as the user gave it (folder, zip or file), for messages."""
        return Path(str(self.image.meta.get("source", "image"))).name


def _require_dicom(source: Path) -> None:
    check_file(source)
    try:
        fmt = detect_format(source)
    except FormatError:
        fmt = "unknown format"
    if fmt != "dicom":
        raise DicomError(
            f"Expected a DICOM folder, zip or file as the source, found {source.name} ({fmt}); "
            "pass the DICOM series the label map was computed from."
        )


def _plane(item: Dataset | None, shared: Dataset | None, ds: Dataset) -> Plane:
    """Plane of a classic dataset (``item`` None) or of one enhanced frame."""
    groups = (item, shared)
    if item is None:
        position = as_floats(ds.get("ImagePositionPatient"), 3)
        orientation = as_floats(ds.get("ImageOrientationPatient"), 6)
        spacing = as_floats(ds.get("PixelSpacing"), 2)
    else:
        position = as_floats(nested_value(groups, "PlanePositionSequence", "ImagePositionPatient"), 3)
        orientation = as_floats(nested_value(groups, "PlaneOrientationSequence", "ImageOrientationPatient"), 6)
        spacing = as_floats(nested_value(groups, "PixelMeasuresSequence", "PixelSpacing"), 2)
    if position is None or orientation is None or spacing is None:
        raise DicomError(
            f"Expected ImagePositionPatient, ImageOrientationPatient and PixelSpacing in every source frame, "
            f"found a frame without them in {ds.get('SOPInstanceUID', '?')}; re-export the series."
        )
    row_dir, col_dir = np.asarray(orientation[:3]), np.asarray(orientation[3:])
    return Plane(np.asarray(position), row_dir, col_dir, (spacing[0], spacing[1]), (int(ds.Rows), int(ds.Columns)))


def planes_of(ds: Dataset) -> list[Plane]:
    """Planes of every frame of ``ds``, in frame order (one for a classic image)."""
    if "PerFrameFunctionalGroupsSequence" not in ds:
        return [_plane(None, None, ds)]
    shared = first_item(ds, "SharedFunctionalGroupsSequence")
    return [_plane(item, shared, ds) for item in ds.PerFrameFunctionalGroupsSequence]


def _slice_order(datasets: list[Dataset]) -> list[Dataset]:
    """Classic datasets sorted along the slice normal, then by InstanceNumber."""

    def key(ds: Dataset) -> tuple[float, int]:
        (plane,) = planes_of(ds)
        normal = np.cross(plane.row_dir, plane.col_dir)
        return float(plane.position @ normal), int(ds.get("InstanceNumber") or 0)

    return sorted(datasets, key=key)


def _fill_type2(ds: Dataset) -> Dataset:
    """``ds``, or a copy with the empty Type 2 patient/study attributes highdicom reads unconditionally.

    A copy, because ``ds`` belongs to the image the reader returned (in memory only; nothing is written back).
    """
    missing = [keyword for keyword in _TYPE2 if keyword not in ds]
    if not missing:
        return ds
    ds = copy.deepcopy(ds)
    for keyword in missing:
        setattr(ds, keyword, "")
    return ds


def read_source(source: Path) -> Image:
    """Read the DICOM series ``source`` (folder, zip or file) with its headers, for :func:`load_source`.

    Raises
    ------
    DicomError
        If ``source`` is not DICOM.

    """
    _require_dicom(source)
    return read_image(source)


def load_source(image: Image) -> Source:
    """The source series of ``image``, from the headers the reader kept (no file is read).

    Parameters
    ----------
    image : Image
        The scan as :func:`mriquant.io.read_image` returned it from the DICOM series; its
        ``meta["dicom_headers"]`` holds the series' datasets without pixel data.

    Raises
    ------
    DicomError
        If ``image`` was not read from DICOM, is a Siemens mosaic or a series of several multi-frame
        files (highdicom derives a SEG from one multi-frame image or from single-frame images),
        or lacks frame geometry.

    """
    name = Path(str(image.meta.get("source", "image"))).name
    headers = series_headers(image.meta)
    if headers is None:
        raise DicomError(
            f"Expected the image read from a DICOM series as the source, found {name} "
            f"({image.meta.get('format', 'unknown format')}, no DICOM headers); "
            "pass the image read_image returned for the DICOM series the label map was computed from."
        )
    if headers.kind == "mosaic":
        raise DicomError(
            f"Expected classic or enhanced DICOM images as the source, found a Siemens mosaic in {name}; "
            "export the segmentation as NIfTI instead."
        )
    datasets = [_fill_type2(ds) for ds in headers.datasets]
    enhanced = sum("PerFrameFunctionalGroupsSequence" in ds for ds in datasets)
    if enhanced and len(datasets) > 1:
        raise DicomError(
            f"Expected one multi-frame file or single-frame files as the source series, found {enhanced} "
            f"multi-frame files among {len(datasets)} in {name}; export the segmentation as NIfTI instead."
        )
    if len(datasets) > 1:
        datasets = _slice_order(datasets)
    planes = [plane for ds in datasets for plane in planes_of(ds)]
    return Source(image, datasets, planes)


# ----------------------------------------------------------------------------- geometry


def _check_grid(src: Source, dseg: LabelImage) -> None:
    image = src.image
    if not image.same_grid(dseg):
        raise GeometryError(
            f"Expected a label map on the native grid of {src.name} (shape {image.shape}, "
            f"spacing {tuple(round(s, 3) for s in image.spacing)} mm), found shape {dseg.shape} with "
            f"spacing {tuple(round(s, 3) for s in dseg.spacing)} mm or another affine; "
            "resample the labels to the source grid (nearest neighbour) before exporting."
        )


def frame_indices(plane: Plane, affine: FloatArray, shape: tuple[int, int, int]) -> npt.NDArray[np.intp]:
    """Voxel indices ``(3, rows, columns)`` of the label map at each pixel centre of ``plane``.

    Parameters
    ----------
    plane : Plane
        Geometry of one source frame (LPS, mm).
    affine : numpy.ndarray, shape (4, 4)
        Voxel-to-RAS+ affine of the label map (mm).
    shape : tuple of int
        Shape ``(I, J, K)`` of the label map.

    Raises
    ------
    GeometryError
        If a pixel centre lies off the voxel grid (beyond :data:`GRID_TOLERANCE`) or outside it.

    """
    inverse = np.linalg.inv(affine)
    to_voxel = inverse[:3, :3] @ np.diag(_FLIP)
    origin = to_voxel @ plane.position + inverse[:3, 3]
    down = to_voxel @ (plane.col_dir * plane.spacing[0])
    across = to_voxel @ (plane.row_dir * plane.spacing[1])
    rows, columns = plane.shape
    m = np.arange(rows, dtype=np.float64)[None, :, None]
    n = np.arange(columns, dtype=np.float64)[None, None, :]
    voxels = origin[:, None, None] + down[:, None, None] * m + across[:, None, None] * n
    index = np.rint(voxels)
    off = float(np.max(np.abs(voxels - index)))
    if off > GRID_TOLERANCE or np.any(index < 0) or np.any(index >= np.asarray(shape)[:, None, None]):
        where = ", ".join(f"{v:.2f}" for v in plane.position)
        raise GeometryError(
            f"Expected every source pixel on the label map's voxel grid, found the frame at ({where}) mm LPS "
            f"{off:.2f} voxels off the grid or outside shape {shape}; pass labels on the grid of read_image(source)."
        )
    out: npt.NDArray[np.intp] = index.astype(np.intp)
    return out


def segment_frames(dseg: LabelImage, planes: Sequence[Plane], numbers: dict[int, int]) -> npt.NDArray[np.uint16]:
    """Segment-number frames ``(F, rows, columns)``: ``numbers[label]`` where the label lies, else 0."""
    lookup = np.zeros(int(dseg.array.max()) + 1, dtype=np.uint16)
    for label, number in numbers.items():
        lookup[label] = number
    frames = []
    for plane in planes:
        i, j, k = frame_indices(plane, dseg.affine, dseg.shape)
        frames.append(lookup[np.clip(dseg.array[i, j, k], 0, None)])
    return np.stack(frames)


# ----------------------------------------------------------------------------- SEG


@dataclass(frozen=True)
class Equipment:
    """Manufacturer, model, software version and device serial number written on every object."""

    manufacturer: str
    model: str
    version: str
    serial: str

    @classmethod
    def here(cls) -> Equipment:
        """The mriquant software on this machine (serial: a hash of the host name, not the name itself)."""
        serial = hashlib.sha256(platform.node().encode()).hexdigest()[:16]
        return cls(_MANUFACTURER, _MANUFACTURER, mriquant.__version__, serial)


def _algorithm(dseg: LabelImage) -> hd.AlgorithmIdentificationSequence:
    method = str(dseg.meta.get("segmentation") or "")
    family = _FAMILIES.get(method, codes.cid7162.ArtificialIntelligence)
    parameters = {"method": method} if method else None
    return hd.AlgorithmIdentificationSequence(
        name=_MANUFACTURER, family=family, version=mriquant.__version__, parameters=parameters
    )


def _description(
    number: int, label: int, table: LabelTable, algorithm: hd.AlgorithmIdentificationSequence
) -> hd.seg.SegmentDescription:
    name = table.name_of(label)
    code = structure_code(label, table)
    rgb = table.by_id(label).rgb if label in table else (128, 128, 128)
    description = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name[:64],
        segmented_property_category=_category(code),
        segmented_property_type=code,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=name[:64],
        display_color=hd.color.CIELabColor.from_rgb(*rgb),
    )
    side = _laterality(name)
    if side is not None:  # highdicom has no argument for this standard modifier
        description.SegmentedPropertyTypeModifierCodeSequence = [hd.sr.CodedConcept.from_code(side)]
    return description


def segment_numbers(dseg: LabelImage) -> dict[int, int]:
    """Segment number (1, 2, ...) of each label present in ``dseg``, in label order.

    Raises
    ------
    InputError
        If ``dseg`` holds no label (nothing to export) or negative values.

    """
    labels = dseg.labels
    if not labels or min(labels) < 0:
        raise InputError(
            f"Expected positive structure labels in the label map, found {labels[:5] or 'none'}; "
            "export a non-empty FreeSurfer-id label map."
        )
    return {label: n for n, label in enumerate(labels, start=1)}


def build_segmentation(
    src: Source,
    dseg: LabelImage,
    numbers: dict[int, int],
    table: LabelTable,
    *,
    series_number: int,
    equipment: Equipment,
) -> hd.seg.Segmentation:
    """A BINARY Segmentation with one segment per entry of ``numbers``, frames derived from the source frames."""
    algorithm = _algorithm(dseg)
    return hd.seg.Segmentation(
        source_images=src.datasets,
        pixel_array=segment_frames(dseg, src.planes, numbers),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_description(n, label, table, algorithm) for label, n in numbers.items()],
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=equipment.manufacturer,
        manufacturer_model_name=equipment.model,
        software_versions=equipment.version,
        device_serial_number=equipment.serial,
        content_description="mriquant structure segmentation",
        content_label="MRIQUANT",
        series_description="mriquant segmentation",
    )


# ----------------------------------------------------------------------------- SR


def _observation_context(equipment: Equipment) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=hd.UID(),
        name=equipment.model,
        manufacturer_name=equipment.manufacturer,
        model_name=equipment.model,
        serial_number=equipment.serial,
    )
    observer = hd.sr.ObserverContext(observer_type=codes.cid270.Device, observer_identifying_attributes=device)
    return hd.sr.ObservationContext(observer_device_context=observer)


def _volume(value: Any, what: str) -> float:
    number = float(value) if isinstance(value, int | float) else math.nan
    if not math.isfinite(number) or number < 0:
        raise InputError(f"Expected a volume in mL (a number >= 0) for {what}, found {value!r}; recompute the volumes.")
    return number


def _structure_group(
    row: dict[str, Any], seg: hd.seg.Segmentation, numbers: dict[int, int], table: LabelTable
) -> hd.sr.MeasurementsAndQualitativeEvaluations | hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations:
    """One TID 1411 group (referencing its SEG segment), or TID 1501 when the label is not in the SEG."""
    label, name = int(row["label"]), str(row.get("name") or table.name_of(int(row["label"])))
    code = structure_code(label, table)
    site = hd.sr.FindingSite(anatomic_location=code, laterality=_laterality(name))
    measurement = hd.sr.Measurement(
        name=codes.SCT.Volume, value=_volume(row.get("volume_ml"), name), unit=_UCUM_ML, finding_sites=[site]
    )
    tracking = hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=name[:64])
    if label not in numbers:
        return hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=tracking, finding_type=code, measurements=[measurement]
        )
    return hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=tracking,
        referenced_segment=hd.sr.ReferencedSegment.from_segmentation(seg, numbers[label]),
        finding_type=code,
        measurements=[measurement],
    )


def _icv_group(etiv_ml: float) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    site = hd.sr.FindingSite(anatomic_location=codes.SCT.CranialCavity)
    measurement = hd.sr.Measurement(
        name=codes.SCT.Volume, value=_volume(etiv_ml, "etiv_ml"), unit=_UCUM_ML, finding_sites=[site]
    )
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="Intracranial volume"),
        finding_type=codes.SCT.CranialCavity,
        measurements=[measurement],
    )


def build_report(
    src: Source,
    seg: hd.seg.Segmentation,
    numbers: dict[int, int],
    volumes: dict[str, Any],
    table: LabelTable,
    *,
    series_number: int,
    equipment: Equipment,
) -> hd.sr.Comprehensive3DSR:
    """A Comprehensive 3D SR with a TID 1500 report of the structure volumes (mL).

    Parameters
    ----------
    src : Source
        The source series (evidence).
    seg : highdicom.seg.Segmentation
        The exported segmentation; each structure group references its segment.
    numbers : dict of int to int
        Segment number of each label in ``seg``.
    volumes : dict
        ``volumes["structures"]``: rows with ``label``, ``name``, ``volume_ml``;
        ``volumes["etiv_ml"]``: intracranial volume in mL, or None.
    table : LabelTable
        Names of the labels.
    series_number : int
        SeriesNumber of the SR.
    equipment : Equipment
        Manufacturer and version.

    """
    groups = [_structure_group(row, seg, numbers, table) for row in volumes.get("structures", [])]
    if volumes.get("etiv_ml") is not None:
        groups.append(_icv_group(volumes["etiv_ml"]))
    report = hd.sr.MeasurementReport(
        observation_context=_observation_context(equipment),
        procedure_reported=codes.LN.BrainMRI,
        imaging_measurements=groups,
    )
    return hd.sr.Comprehensive3DSR(
        evidence=[*src.datasets, seg],
        content=report,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=equipment.manufacturer,
        is_complete=True,
        series_description="mriquant volumes",
        manufacturer_model_name=equipment.model,
        software_versions=equipment.version,
        device_serial_number=equipment.serial,
    )


# ----------------------------------------------------------------------------- PDF


def _pdf_bytes(pdf: Path) -> bytes:
    data = pdf.read_bytes() if pdf.is_file() else b""
    if not data.startswith(b"%PDF"):
        raise InputError(f"Expected a PDF report, found {pdf} that is missing or not a PDF; pass the report.pdf path.")
    return data


def build_pdf(src: Source, pdf: Path, *, series_number: int, equipment: Equipment) -> hd.SOPClass:
    """An Encapsulated PDF instance of ``pdf`` in the source's study (patient module copied)."""
    data = _pdf_bytes(pdf)
    first = src.first
    now = datetime.now()
    doc = hd.SOPClass(
        study_instance_uid=first.StudyInstanceUID,
        series_instance_uid=hd.UID(),
        series_number=series_number,
        sop_instance_uid=hd.UID(),
        sop_class_uid=EncapsulatedPDFStorage,
        instance_number=1,
        modality="DOC",
        manufacturer=equipment.manufacturer,
        manufacturer_model_name=equipment.model,
        software_versions=equipment.version,
        device_serial_number=equipment.serial,
        series_description="mriquant report",
        content_date=now.date(),
        content_time=now.time(),
        specific_character_set=first.get("SpecificCharacterSet"),
    )
    doc.copy_patient_and_study_information(first)
    # Encapsulated Document and SC Equipment modules: highdicom has no class for them.
    doc.ConversionType = "WSD"
    doc.BurnedInAnnotation = "YES"
    doc.DocumentTitle = "mriquant report"
    doc.ConceptNameCodeSequence = []
    doc.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    doc.MIMETypeOfEncapsulatedDocument = "application/pdf"
    doc.EncapsulatedDocument = data + b"\0" * (len(data) % 2)  # OB values have even length
    doc.EncapsulatedDocumentLength = len(data)
    return doc


# ----------------------------------------------------------------------------- entry point


def export_dicom(
    folder: Path,
    *,
    source: Path | None = None,
    image: Image | None = None,
    dseg: LabelImage,
    volumes: dict[str, Any],
    table: LabelTable,
    pdf: Path | None = None,
    series_number: int = 900,
) -> list[str]:
    """Write a DICOM SEG, a TID 1500 SR and optionally an Encapsulated PDF into ``folder``.

    Every object is built before any file is written, and each file is written atomically,
    so bad input writes nothing. With ``image`` no source file is opened: the headers come from
    the reader (``image.meta["dicom_headers"]``).

    Parameters
    ----------
    folder : pathlib.Path
        Output folder (created if needed).
    source : pathlib.Path, optional
        The DICOM input as the user gave it (folder, zip or file); read only when ``image`` is not given.
    image : Image, optional
        The scan :func:`mriquant.io.read_image` returned for the DICOM input (the pipeline's ``case.image``).
        One of ``source`` and ``image`` is required.
    dseg : LabelImage
        FreeSurfer-id label map on the native grid of the source image (same shape and affine).
    volumes : dict
        ``"structures"``: rows ``{"label", "name", "volume_ml", ...}`` (mL); ``"etiv_ml"``: float or None.
    table : LabelTable
        Names and colours of the labels (usually :func:`mriquant.core.labels.freesurfer`).
    pdf : pathlib.Path, optional
        A PDF report to encapsulate as ``report_pdf.dcm``.
    series_number : int
        SeriesNumber of the SEG; the SR and PDF take the next two numbers.

    Returns
    -------
    list of str
        Names of the files written: ``seg.dcm``, ``sr.dcm`` and, with ``pdf``, ``report_pdf.dcm``.

    Raises
    ------
    DicomError
        If the source is not a usable DICOM series.
    GeometryError
        If ``dseg`` is not on the source grid.
    InputError
        For neither ``source`` nor ``image``, an empty label map, a bad volume or a missing PDF.

    Examples
    --------
    >>> image = read_image("scan_dicom")  # doctest: +SKIP
    >>> export_dicom(Path("out/dicom"), image=image, dseg=dseg,
    ...              volumes=volumes, table=freesurfer())  # doctest: +SKIP
    ['seg.dcm', 'sr.dcm']

    """
    folder = Path(folder)
    if image is None:
        if source is None:
            raise InputError("Expected the source image or its path, found neither; pass image= or source=.")
        image = read_source(Path(source))
    src = load_source(image)
    _check_grid(src, dseg)
    equipment = Equipment.here()
    numbers = segment_numbers(dseg)
    with warnings.catch_warnings():
        # The patient name is copied as the source holds it, even when it has a single component.
        warnings.filterwarnings("ignore", message=".*intended person name", category=UserWarning)
        seg = build_segmentation(src, dseg, numbers, table, series_number=series_number, equipment=equipment)
        report = build_report(src, seg, numbers, volumes, table, series_number=series_number + 1, equipment=equipment)
        objects: dict[str, Dataset] = {out.SEG_DCM: seg, out.SR_DCM: report}
        if pdf is not None:
            pdf_object = build_pdf(src, Path(pdf), series_number=series_number + 2, equipment=equipment)
            objects[out.REPORT_PDF_DCM] = pdf_object
    for name, dataset in objects.items():
        with atomic_path(folder / name) as tmp:
            dataset.save_as(tmp, enforce_file_format=True)
    log.info("DICOM export of %s: %s", image.meta.get("source", src.name), ", ".join(objects))
    return list(objects)
