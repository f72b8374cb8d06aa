"""DICOM export: SEG geometry and codes, TID 1500 SR volumes, encapsulated PDF, bad input.

The geometry checks do not reuse the exporter's mapping: on synthetic series the truth is a
function of world position evaluated at each source pixel centre computed from the DICOM header;
on the real series it is the reader's slice order (``meta["sop_instance_uids"]``).
"""

from __future__ import annotations

import shutil
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import numpy.typing as npt
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from scipy.spatial.transform import Rotation

from mriquant.core.errors import DicomError, GeometryError, InputError
from mriquant.core.image import LabelImage
from mriquant.core.labels import TISSUES, freesurfer
from mriquant.export import export_dicom, structure_code
from mriquant.io import read_image
from mriquant.quantify.volumes import label_volumes

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PHILIPS = DATA / "dicom" / "philips-t1-mprage" / "dicom"
needs_philips = pytest.mark.skipif(
    not PHILIPS.is_dir(), reason=f"../shared/data not present: the real DICOM series is expected in {PHILIPS}"
)

LPS_TO_RAS = np.array([-1.0, -1.0, 1.0])
PATIENT = {"PatientName": "Doe^Jane", "PatientID": "MRQ-0042", "PatientBirthDate": "19700101", "PatientSex": "F"}
MINIMAL_PDF = (
    b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[]/Count 0>>endobj\n%%EOF\n"
)

WorldLabels = Callable[[npt.NDArray[np.float64]], npt.NDArray[np.int32]]


# ----------------------------------------------------------------------------- synthetic series


@dataclass
class Series:
    folder: Path
    datasets: list[Dataset]


def _dataset(
    k: int, position: npt.NDArray[np.float64], rotation: npt.NDArray[np.float64], uids: dict[str, str]
) -> Dataset:
    rows, columns = 20, 16
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    for key, value in PATIENT.items():
        setattr(ds, key, value)
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = (
        "20240102",
        "101010",
        "7",
        "",
        "",
    )
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MR", 3, k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M"]
    ds.ImageOrientationPatient = [f"{v:.10f}" for v in (*rotation[:, 0], *rotation[:, 1])]
    ds.ImagePositionPatient = [f"{v:.10f}" for v in position]
    ds.PixelSpacing, ds.SliceThickness = ["1.2", "0.9"], "1.5"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(rows * columns, dtype=np.uint16) + 7 * k).tobytes()
    return ds


def make_series(folder: Path, *, seed: int) -> Series:
    """12 oblique slices (20 x 16 pixels, 1.2 x 0.9 mm, 1.5 mm apart), files in shuffled order."""
    rotation = Rotation.from_euler("xyz", [25.0, -10.0, 35.0], degrees=True).as_matrix()
    uids = {"study": generate_uid(), "series": generate_uid(), "frame": generate_uid()}
    corner = np.array([-8.0, -12.0, 5.0])
    datasets = [_dataset(k, corner + k * 1.5 * rotation[:, 2], rotation, uids) for k in range(12)]
    folder.mkdir(parents=True)
    order = np.random.default_rng(seed).permutation(len(datasets))
    for name, index in enumerate(order):
        datasets[index].save_as(folder / f"IM{name:04d}", enforce_file_format=True)
    return Series(folder, datasets)


def world_labels(ras: npt.NDArray[np.float64]) -> npt.NDArray[np.int32]:
    """Truth as a function of RAS position (..., 3): spheres 17 and 53, a block labelled 4."""
    centre = np.array([8.23, 3.80, 18.28])  # RAS centre of the synthetic series
    out = np.zeros(ras.shape[:-1], dtype=np.int32)
    out[np.linalg.norm(ras - centre - [-2.0, -5.0, -2.0], axis=-1) < 4.3] = 17
    out[np.linalg.norm(ras - centre - [2.0, 5.0, 3.0], axis=-1) < 3.1] = 53
    out[np.all(np.abs(ras - centre - [1.0, 0.0, -5.5]) < [2.6, 3.3, 2.1], axis=-1)] = 4
    return out


def labels_on_grid(source: Path, truth: WorldLabels) -> LabelImage:
    image = read_image(source)
    ijk = np.stack(np.indices(image.shape), axis=-1).astype(np.float64)
    ras = ijk @ image.affine[:3, :3].T + image.affine[:3, 3]
    return LabelImage(truth(ras), image.affine.copy(), {"segmentation": "test-model"})


def pixel_centres(ds: Dataset) -> npt.NDArray[np.float64]:
    """RAS position (rows, columns, 3) of every pixel centre of a classic source image."""
    iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
    dr, dc = (float(v) for v in ds.PixelSpacing)
    m = np.arange(int(ds.Rows))[:, None, None]
    n = np.arange(int(ds.Columns))[None, :, None]
    lps = np.asarray(ds.ImagePositionPatient, dtype=np.float64) + n * dc * iop[:3] + m * dr * iop[3:]
    return lps * LPS_TO_RAS


def volumes_of(dseg: LabelImage, etiv_ml: float | None = 1234.5678) -> dict[str, Any]:
    rows = [v.as_dict() for v in label_volumes(dseg, table=freesurfer(), etiv_ml=etiv_ml)]
    return {"structures": rows, "etiv_ml": etiv_ml}


# ----------------------------------------------------------------------------- read-back helpers


def frame_sources(seg: hd.seg.Segmentation) -> list[tuple[str, int, list[float]]]:
    """(source SOPInstanceUID, segment number, ImagePositionPatient) of every SEG frame."""
    out = []
    for item in seg.PerFrameFunctionalGroupsSequence:
        source = item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(item.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        out.append((str(source), number, position))
    return out


def segment_masks(seg: hd.seg.Segmentation, uids: list[str]) -> npt.NDArray[np.bool_]:
    """Masks (n_sources, rows, columns, n_segments) at the given source instances."""
    numbers = list(range(1, seg.number_of_segments + 1))
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=numbers, assert_missing_frames_are_empty=True)
    return np.asarray(pixels, dtype=bool)


def label_of_segment(seg: hd.seg.Segmentation) -> dict[int, int]:
    table = freesurfer()
    return {int(d.SegmentNumber): table.by_name(str(d.SegmentLabel)).id for d in seg.SegmentSequence}


def check_geometry(seg: hd.seg.Segmentation, sources: dict[str, Dataset], expected: dict[str, Any]) -> None:
    """Frame positions equal their source's, and decoded masks equal the expected label slices."""
    frames = frame_sources(seg)
    assert frames, "the SEG has no frames"
    for uid, _, position in frames:
        np.testing.assert_allclose(position, [float(v) for v in sources[uid].ImagePositionPatient], atol=1e-4)
    uids = list(sources)
    masks = segment_masks(seg, uids)
    for s, (number, label) in enumerate(sorted(label_of_segment(seg).items())):
        want = np.stack([expected[uid] == label for uid in uids])
        assert np.array_equal(masks[..., s], want), f"segment {number} (label {label}) differs from the labels"


def check_report(sr: hd.sr.Comprehensive3DSR, seg: hd.seg.Segmentation, volumes: dict[str, Any]) -> None:
    report = sr.content
    groups = report.get_volumetric_roi_measurement_groups()
    by_name = {row["name"]: row for row in volumes["structures"]}
    assert sorted(str(g.tracking_identifier) for g in groups) == sorted(by_name)
    assert len({str(g.tracking_uid) for g in groups}) == len(groups)
    segment_of = {str(d.SegmentLabel): int(d.SegmentNumber) for d in seg.SegmentSequence}
    for group in groups:
        name = str(group.tracking_identifier)
        (measurement,) = group.get_measurements()
        assert measurement.name == codes.SCT.Volume
        assert measurement.unit.value == "ml" and measurement.unit.scheme_designator == "UCUM"
        assert abs(measurement.value - by_name[name]["volume_ml"]) < 1e-6
        assert group.referenced_segment.referenced_sop_instance_uid == seg.SOPInstanceUID
        assert group.referenced_segment.referenced_segment_numbers == [segment_of[name]]
        assert group.referenced_segment.has_source_images()
    (icv,) = report.get_image_measurement_groups()
    (measurement,) = icv.get_measurements()
    assert abs(measurement.value - volumes["etiv_ml"]) < 1e-6 and measurement.unit.value == "ml"


def check_identity(obj: Dataset, first: Dataset) -> None:
    assert obj.StudyInstanceUID == first.StudyInstanceUID
    assert obj.SeriesInstanceUID != first.SeriesInstanceUID
    assert str(obj.PatientName) == str(first.PatientName) and obj.PatientID == first.PatientID
    assert obj.Manufacturer == "mriquant" and obj.DeviceSerialNumber


# ----------------------------------------------------------------------------- codes


def test_structure_codes_follow_snomed() -> None:
    table = freesurfer()
    expected = {
        17: codes.SCT.Hippocampus,
        53: codes.SCT.Hippocampus,
        10: codes.SCT.Thalamus,
        11: codes.SCT.CaudateNucleus,
        12: codes.SCT.Putamen,
        4: codes.SCT.LateralVentricle,
        16: codes.SCT.BrainStem,
        8: codes.SCT.CerebellarCortex,
        2: codes.SCT.CerebralWhiteMatter,
        3: codes.SCT.CerebralCortex,
    }
    for label, code in expected.items():
        got = structure_code(label, table)
        assert (got.value, got.scheme_designator) == (code.value, "SCT"), table.name_of(label)
    assert structure_code(28, table).value == codes.SCT.AnatomicalStructure.value  # VentralDC: no code
    assert structure_code(2, TISSUES).value == codes.SCT.AnatomicalStructure.value  # GM is not FreeSurfer's 2


# ----------------------------------------------------------------------------- synthetic


@pytest.fixture
def series(tmp_path: Path) -> Series:
    return make_series(tmp_path / "scan", seed=1)


def _expected_by_uid(datasets: list[Dataset]) -> dict[str, Any]:
    return {str(ds.SOPInstanceUID): world_labels(pixel_centres(ds)) for ds in datasets}


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_synthetic_oblique_export(series: Series, tmp_path: Path, as_zip: bool) -> None:
    source = series.folder
    if as_zip:
        source = tmp_path / "scan.zip"
        with zipfile.ZipFile(source, "w") as zf:
            for path in sorted(series.folder.iterdir(), reverse=True):
                zf.write(path, f"dicom/{path.name}")
    dseg = labels_on_grid(source, world_labels)
    assert dseg.labels == [4, 17, 53]
    volumes = volumes_of(dseg)
    names = export_dicom(tmp_path / "out", source=source, dseg=dseg, volumes=volumes, table=freesurfer())
    assert names == ["seg.dcm", "sr.dcm"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == names

    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    assert seg.SegmentationType == "BINARY" and seg.number_of_segments == 3
    assert label_of_segment(seg) == {1: 4, 2: 17, 3: 53}
    description = seg.get_segment_description(2)
    assert description.segmented_property_type.value == codes.SCT.Hippocampus.value
    assert description.segmented_property_category.value == codes.SCT.AnatomicalStructure.value
    assert description.SegmentedPropertyTypeModifierCodeSequence[0].CodeValue == codes.SCT.Left.value
    assert description.algorithm_identification[0].AlgorithmName == "mriquant"
    rgb = hd.color.CIELabColor.from_dicom_value(description.RecommendedDisplayCIELabValue).to_rgb()
    assert np.allclose(rgb, freesurfer().by_id(17).rgb, atol=1)
    sources = {str(ds.SOPInstanceUID): ds for ds in series.datasets}
    check_geometry(seg, sources, _expected_by_uid(series.datasets))
    assert {uid for uid, _, _ in frame_sources(seg)} <= set(sources)

    sr = hd.sr.srread(tmp_path / "out" / "sr.dcm")
    check_report(sr, seg, volumes)
    for obj in (seg, sr):
        check_identity(obj, series.datasets[0])
    evidence = {s.SeriesInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence}
    assert evidence == {series.datasets[0].SeriesInstanceUID, seg.SeriesInstanceUID}


def test_pdf_is_encapsulated_in_the_study(series: Series, tmp_path: Path) -> None:
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(MINIMAL_PDF)
    dseg = labels_on_grid(series.folder, world_labels)
    volumes = volumes_of(dseg, None)
    volumes["structures"].append({"label": 18, "name": "Left-Amygdala", "volume_ml": 0.0})  # not in the label map
    names = export_dicom(
        tmp_path / "out", source=series.folder, dseg=dseg, volumes=volumes, table=freesurfer(), pdf=pdf
    )
    assert names == ["seg.dcm", "sr.dcm", "report_pdf.dcm"]
    doc = pydicom.dcmread(tmp_path / "out" / "report_pdf.dcm")
    assert (
        doc.SOPClassUID == pydicom.uid.EncapsulatedPDFStorage
        and doc.MIMETypeOfEncapsulatedDocument == "application/pdf"
    )
    assert bytes(doc.EncapsulatedDocument)[: len(MINIMAL_PDF)] == MINIMAL_PDF
    assert doc.EncapsulatedDocumentLength == len(MINIMAL_PDF)
    check_identity(doc, series.datasets[0])
    report = hd.sr.srread(tmp_path / "out" / "sr.dcm").content
    assert len(report.get_volumetric_roi_measurement_groups()) == 3
    (absent,) = report.get_image_measurement_groups()  # no intracranial volume given: only the absent structure
    assert str(absent.tracking_identifier) == "Left-Amygdala" and absent.get_measurements()[0].value == 0.0


def test_enhanced_multiframe_source(series: Series, tmp_path: Path) -> None:
    enhanced = hd.legacy.LegacyConvertedEnhancedMRImage(series.datasets, hd.UID(), 5, hd.UID(), 1)
    path = tmp_path / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    dseg = labels_on_grid(path, world_labels)
    export_dicom(tmp_path / "out", source=path, dseg=dseg, volumes=volumes_of(dseg), table=freesurfer())
    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    source_frames = enhanced.PerFrameFunctionalGroupsSequence
    for item in seg.PerFrameFunctionalGroupsSequence:
        reference = item.DerivationImageSequence[0].SourceImageSequence[0]
        assert reference.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
        source = source_frames[int(reference.ReferencedFrameNumber) - 1]
        np.testing.assert_allclose(
            [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient],
            [float(v) for v in source.PlanePositionSequence[0].ImagePositionPatient],
            atol=1e-4,
        )
    classic = {tuple(np.round(np.asarray(ds.ImagePositionPatient, dtype=float), 3)): ds for ds in series.datasets}
    masks = seg.get_pixels_by_source_frame(
        enhanced.SOPInstanceUID,
        list(range(1, len(source_frames) + 1)),
        segment_numbers=[1, 2, 3],
        assert_missing_frames_are_empty=True,
    )
    for f, item in enumerate(source_frames):
        position = np.asarray(item.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        truth = world_labels(pixel_centres(classic[tuple(np.round(position, 3))]))
        for s, label in enumerate((4, 17, 53)):
            assert np.array_equal(masks[f, ..., s].astype(bool), truth == label), (f, label)


# ----------------------------------------------------------------------------- bad input


def _assert_message(exc: pytest.ExceptionInfo[Exception], start: str) -> None:
    message = str(exc.value)
    assert message.startswith(start) and ", found " in message and "; " in message and "\n" not in message


def test_source_that_is_not_dicom(series: Series, tmp_path: Path) -> None:
    dseg = labels_on_grid(series.folder, world_labels)
    nifti = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(dseg.array.astype(np.float32), dseg.affine), str(nifti))
    with pytest.raises(DicomError) as exc:
        export_dicom(tmp_path / "out", source=nifti, dseg=dseg, volumes=volumes_of(dseg), table=freesurfer())
    _assert_message(exc, "Expected a DICOM folder, zip or file")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("change", ["shape", "shift"])
def test_labels_off_the_source_grid(series: Series, tmp_path: Path, change: str) -> None:
    dseg = labels_on_grid(series.folder, world_labels)
    if change == "shape":
        bad = LabelImage(dseg.array[:, :, :-1], dseg.affine.copy())
    else:
        affine = dseg.affine.copy()
        affine[:3, 3] += affine[:3, 0] * 0.5
        bad = LabelImage(dseg.array, affine)
    with pytest.raises(GeometryError) as exc:
        export_dicom(tmp_path / "out", source=series.folder, dseg=bad, volumes=volumes_of(dseg), table=freesurfer())
    _assert_message(exc, "Expected a label map on the native grid")
    assert not (tmp_path / "out").exists()


def test_missing_pdf_and_empty_labels_write_nothing(series: Series, tmp_path: Path) -> None:
    dseg = labels_on_grid(series.folder, world_labels)
    out = tmp_path / "out"
    with pytest.raises(InputError) as exc:
        export_dicom(
            out, source=series.folder, dseg=dseg, volumes=volumes_of(dseg), table=freesurfer(), pdf=tmp_path / "x.pdf"
        )
    _assert_message(exc, "Expected a PDF report")
    empty = LabelImage(np.zeros_like(dseg.array), dseg.affine.copy())
    with pytest.raises(InputError) as exc:
        export_dicom(out, source=series.folder, dseg=empty, volumes={"structures": []}, table=freesurfer())
    _assert_message(exc, "Expected positive structure labels")
    assert not out.exists()


# ----------------------------------------------------------------------------- real data


def _real_labels(shape: tuple[int, int, int]) -> npt.NDArray[np.int32]:
    i, j, k = np.indices(shape)
    out = np.zeros(shape, dtype=np.int32)
    out[(i - 100) ** 2 + (j - 120) ** 2 + (k - 70) ** 2 < 15**2] = 17
    out[(i - 150) ** 2 + (j - 125) ** 2 + (k - 105) ** 2 < 12**2] = 53
    out[120:140, 80:100, 20:40] = 4
    return out


def _real_export(source: Path, out: Path) -> tuple[hd.seg.Segmentation, dict[str, Any], dict[str, Any]]:
    image = read_image(source)
    dseg = LabelImage(_real_labels(image.shape), image.affine.copy(), {"segmentation": "test-model"})
    volumes = volumes_of(dseg)
    export_dicom(out, source=source, dseg=dseg, volumes=volumes, table=freesurfer())
    uids = image.meta["sop_instance_uids"]
    expected = {uid: dseg.array[:, :, k].T for k, uid in enumerate(uids)}  # reader: I along rows, J down columns
    return hd.seg.segread(out / "seg.dcm"), volumes, expected


@needs_philips
def test_philips_export(tmp_path: Path) -> None:
    seg, volumes, expected = _real_export(PHILIPS, tmp_path / "out")
    assert seg.number_of_segments == 3 and label_of_segment(seg) == {1: 4, 2: 17, 3: 53}
    sources = {
        str(ds.SOPInstanceUID): ds
        for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(PHILIPS.iterdir()))
    }
    assert set(expected) == set(sources)
    check_geometry(seg, sources, expected)
    first = next(iter(sources.values()))
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == first.SeriesInstanceUID
    assert {str(i.ReferencedSOPInstanceUID) for i in referenced.ReferencedInstanceSequence} == set(sources)
    sr = hd.sr.srread(tmp_path / "out" / "sr.dcm")
    check_report(sr, seg, volumes)
    for obj in (seg, sr):
        check_identity(obj, first)


@needs_philips
def test_philips_export_ignores_file_order(tmp_path: Path) -> None:
    shuffled = tmp_path / "shuffled" / "nested"
    shuffled.mkdir(parents=True)
    files = sorted(PHILIPS.iterdir())
    order = np.random.default_rng(3).permutation(len(files))
    for name, index in enumerate(order):
        shutil.copy(files[index], shuffled / f"z{name:03d}.dcm")
    seg, _, expected = _real_export(tmp_path / "shuffled", tmp_path / "out")
    sources = {str(ds.SOPInstanceUID): ds for ds in (pydicom.dcmread(p, stop_before_pixels=True) for p in files)}
    check_geometry(seg, sources, expected)


def test_frame_off_the_voxel_grid_is_refused() -> None:
    from mriquant.export.dicom import Plane, frame_indices

    affine = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS of voxel (i, j, k) = (-i, -j, k): LPS (i, j, k)
    plane = Plane(np.array([2.0, 3.0, 4.0]), np.array([1.0, 0, 0]), np.array([0, 1.0, 0]), (1.0, 1.0), (5, 6))
    i, j, k = frame_indices(plane, affine, (10, 10, 10))
    assert (i[0, 0], j[0, 0], k[0, 0]) == (2, 3, 4) and (i[0, 5], j[4, 0]) == (7, 7)  # column index moves along i
    shifted = Plane(plane.position + np.array([0, 0, 0.4]), plane.row_dir, plane.col_dir, plane.spacing, plane.shape)
    with pytest.raises(GeometryError, match="off the grid"):
        frame_indices(shifted, affine, (10, 10, 10))
    with pytest.raises(GeometryError, match="outside shape"):
        frame_indices(plane, affine, (6, 10, 10))


# ----------------------------------------------------------------------------- headers read once


class SourceReads:
    """Records every file opened below ``root`` (builtins/io ``open``, hence ``Path.read_bytes``, ``zipfile``,
    pydicom's deferred reads) and every ``pydicom.dcmread`` call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
        import builtins
        import io

        self.opened: list[str] = []
        self.dcmread: list[str] = []
        real_open, real_dcmread, root = builtins.open, pydicom.dcmread, root.resolve()

        def watched_open(file: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(file, str | Path) and Path(file).resolve().is_relative_to(root):
                self.opened.append(str(file))
            return real_open(file, *args, **kwargs)

        def watched_dcmread(fp: Any, *args: Any, **kwargs: Any) -> Any:
            self.dcmread.append(str(fp))
            return real_dcmread(fp, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", watched_open)
        monkeypatch.setattr(io, "open", watched_open)
        monkeypatch.setattr(pydicom, "dcmread", watched_dcmread)


@pytest.mark.parametrize("as_zip", [False, True], ids=["folder", "zip"])
def test_run_export_opens_no_source_file(series: Series, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         as_zip: bool) -> None:  # fmt: skip
    from mriquant.core.case import Case
    from mriquant.pipeline import write_run_outputs

    source = series.folder
    if as_zip:
        source = tmp_path / "zipped" / "scan.zip"
        source.parent.mkdir()
        with zipfile.ZipFile(source, "w") as zf:
            for path in sorted(series.folder.iterdir()):
                zf.write(path, f"dicom/{path.name}")
    case = Case(read_image(source))
    case.labels["dseg"] = labels_on_grid(source, world_labels)
    volumes = volumes_of(case.labels["dseg"])

    reads = SourceReads(monkeypatch, source.parent if as_zip else source)
    written = write_run_outputs(case, tmp_path / "out", volumes, manifest={}, source=source)
    monkeypatch.undo()

    assert {"seg.dcm", "sr.dcm", "report_pdf.dcm"} <= set(written)
    assert reads.opened == [] and reads.dcmread == []
    seg = hd.seg.segread(tmp_path / "out" / "seg.dcm")
    assert label_of_segment(seg) == {1: 4, 2: 17, 3: 53}
    check_geometry(seg, {str(ds.SOPInstanceUID): ds for ds in series.datasets}, _expected_by_uid(series.datasets))


def test_export_from_the_image_equals_export_from_the_path(series: Series, tmp_path: Path) -> None:
    image = read_image(series.folder)
    dseg = labels_on_grid(series.folder, world_labels)
    volumes = volumes_of(dseg)
    headers = image.meta["dicom_headers"].datasets
    for ds in headers:
        del ds.AccessionNumber  # a Type 2 attribute the export adds empty
    export_dicom(tmp_path / "image", image=image, dseg=dseg, volumes=volumes, table=freesurfer())
    export_dicom(tmp_path / "path", source=series.folder, dseg=dseg, volumes=volumes, table=freesurfer())
    segs = [hd.seg.segread(tmp_path / run / "seg.dcm") for run in ("image", "path")]
    assert segs[0].PixelData == segs[1].PixelData
    assert frame_sources(segs[0]) == frame_sources(segs[1])
    srs = [hd.sr.srread(tmp_path / run / "sr.dcm") for run in ("image", "path")]
    evidence = [{str(i.ReferencedSOPInstanceUID) for s in sr.CurrentRequestedProcedureEvidenceSequence[0]
                 .ReferencedSeriesSequence for i in s.ReferencedSOPSequence} for sr in srs]  # fmt: skip
    sources = {str(ds.SOPInstanceUID) for ds in series.datasets}
    assert evidence[0] - {segs[0].SOPInstanceUID} == evidence[1] - {segs[1].SOPInstanceUID} == sources
    assert segs[0].AccessionNumber == segs[1].AccessionNumber == ""
    # the reader kept the headers only, and the export did not change them (Type 2 attributes go on a copy)
    assert len(headers) == 12 and not any("PixelData" in ds or "AccessionNumber" in ds for ds in headers)


def test_image_not_read_from_dicom_is_refused(series: Series, tmp_path: Path) -> None:
    dseg = labels_on_grid(series.folder, world_labels)
    image = read_image(series.folder)
    image.meta.pop("dicom_headers")
    with pytest.raises(DicomError) as exc:
        export_dicom(tmp_path / "out", image=image, dseg=dseg, volumes=volumes_of(dseg), table=freesurfer())
    _assert_message(exc, "Expected the image read from a DICOM series")
    assert not (tmp_path / "out").exists()


def test_convert_sidecar_leaves_out_the_headers(series: Series, tmp_path: Path) -> None:
    import json

    from mriquant.cli import main
    from mriquant.convert import sidecar

    assert main(["convert", str(series.folder), str(tmp_path / "scan.nii.gz")]) == 0
    written = json.loads((tmp_path / "scan.json").read_text())
    image = read_image(series.folder)
    image.meta.pop("dicom_headers")  # the meta the reader returned before it kept the headers
    assert written == json.loads(json.dumps(sidecar(image), default=str))
    assert "dicom_headers" not in json.dumps(written) and "SeriesHeaders" not in json.dumps(written)
