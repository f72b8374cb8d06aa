"""Tests of the DICOM reader: synthetic series built with pydicom, and real data against dcm2niix."""

from __future__ import annotations

import gzip
import json
import logging
import shutil
import subprocess
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import get_encoder
from pydicom.uid import (
    EnhancedMRImageStorage,
    ExplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    MRImageStorage,
    RLELossless,
    generate_uid,
)
from scipy.spatial.transform import Rotation

from mriquant.core.errors import DicomError
from mriquant.io import read_raw
from mriquant.io.base import RawVolume, ReadOptions
from mriquant.io.dicom import read_dicom

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DICOM_DATA = DATA / "dicom"
needs_data = pytest.mark.skipif(
    not DICOM_DATA.exists(),
    reason=f"../shared/data not present: the real DICOM references are expected in {DICOM_DATA}",
)
needs_dcm2niix = pytest.mark.skipif(
    shutil.which("dcm2niix") is None,
    reason="dcm2niix binary not on PATH (pip install dcm2niix); it converts the references",
)

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
OBLIQUE = Rotation.from_euler("xyz", [20.0, -15.0, 30.0], degrees=True).as_matrix()


def read(path: Path, series: str | None = None) -> RawVolume:
    return read_dicom(path, ReadOptions(series=series))


# ----------------------------------------------------------------------------- synthetic series


@dataclass
class Series:
    """What a synthetic series should read back as."""

    volume: np.ndarray  # stored values, shape (I, J, K)
    affine: np.ndarray  # expected voxel-to-RAS
    paths: list[Path]
    uid: str
    datasets: list[Dataset]


def _base_dataset(*, uid: str, number: int, description: str, image_type: tuple[str, ...]) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MRImageStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = MRImageStorage
    ds.PatientName = "Test^Patient"
    ds.PatientID = "P001"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.InstitutionName = "Test Hospital"
    ds.StudyDate = "20240102"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = uid
    ds.SeriesNumber = number
    ds.SeriesDescription = description
    ds.ImageType = list(image_type)
    ds.Modality = "MR"
    ds.Manufacturer = "mriquant-test"
    ds.MagneticFieldStrength = 3
    ds.RepetitionTime = 2300
    ds.EchoTime = 2.98
    ds.InversionTime = 900
    ds.FlipAngle = 9
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.2"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    return ds


def write_series(
    folder: Path,
    *,
    n_slices: int = 8,
    shape: tuple[int, int] = (16, 12),
    rotation: np.ndarray = OBLIQUE,
    origin: tuple[float, float, float] = (-40.0, 25.0, 10.0),
    pixel_spacing: tuple[float, float] = (1.1, 0.9),
    step: float = 2.0,
    thickness: float | None = None,
    number: int = 301,
    description: str = "T1 MPRAGE",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "M"),
    rescale: tuple[float, float] = (1.0, 0.0),
    signed: bool = False,
    seed: int = 0,
    names: list[str] | None = None,
    echo: int | None = None,
    uid: str | None = None,
) -> Series:
    """Write a classic series: I = Columns along the rotation's first axis, J = Rows along its second."""
    rng = np.random.default_rng(seed)
    low, dtype = (-2000, np.int16) if signed else (0, np.uint16)
    volume = rng.integers(low, 4000, size=(*shape, n_slices)).astype(dtype)
    row_dir, col_dir, normal = rotation[:, 0], rotation[:, 1], rotation[:, 2]
    uid = uid or generate_uid()
    folder.mkdir(parents=True, exist_ok=True)
    paths, datasets = [], []
    for k in range(n_slices):
        ds = _base_dataset(uid=uid, number=number, description=description, image_type=image_type)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        ds.Rows, ds.Columns = shape[1], shape[0]
        ds.PixelRepresentation = 1 if signed else 0
        ds.PixelSpacing = list(pixel_spacing)
        ds.SliceThickness = thickness if thickness is not None else step
        ds.SpacingBetweenSlices = step
        ds.ImageOrientationPatient = [*row_dir.tolist(), *col_dir.tolist()]
        ds.ImagePositionPatient = (np.asarray(origin) + k * step * normal).tolist()
        ds.RescaleSlope, ds.RescaleIntercept = rescale
        if echo is not None:
            ds.EchoNumbers = echo
        ds.PixelData = np.ascontiguousarray(volume[:, :, k].T).astype(dtype).tobytes()
        path = folder / (names[k] if names else f"IM{k:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
        datasets.append(ds)
    lps = np.eye(4)
    lps[:3, 0] = row_dir * pixel_spacing[1]
    lps[:3, 1] = col_dir * pixel_spacing[0]
    lps[:3, 2] = normal * step
    lps[:3, 3] = origin
    return Series(volume, LPS_TO_RAS @ lps, paths, uid, datasets)


def expected_values(series: Series, rescale: tuple[float, float] = (1.0, 0.0)) -> np.ndarray:
    return series.volume.astype(np.float32) * np.float32(rescale[0]) + np.float32(rescale[1])


def assert_same_volume(raw: RawVolume, series: Series, rescale: tuple[float, float] = (1.0, 0.0)) -> None:
    assert raw.array.dtype == np.float32
    assert raw.array.shape == series.volume.shape
    np.testing.assert_array_equal(raw.array, expected_values(series, rescale))
    np.testing.assert_allclose(raw.affine, series.affine, atol=1e-6)


def write_text_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_dicomdir_like(path: Path) -> None:
    """A DICOM file with preamble but no pixel data (like DICOMDIR or an SR)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.FileSetID = "TEST"
    ds.save_as(path, enforce_file_format=True)


# ----------------------------------------------------------------------------- geometry and values


def test_oblique_series_gives_expected_affine_and_values(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", rescale=(0.5, -10.0), signed=True)
    raw = read(tmp_path / "s")
    assert_same_volume(raw, series, rescale=(0.5, -10.0))
    assert raw.array.min() < -500  # signed values survive
    assert raw.meta["format"] == "dicom"
    assert raw.meta["series_uid"] == series.uid
    assert raw.meta["files"] == [str(p) for p in series.paths]
    assert raw.meta["warnings"] == []


def test_slices_are_sorted_along_the_normal_not_by_file_name(tmp_path: Path) -> None:
    names = [f"z{v:03d}" for v in np.random.default_rng(7).permutation(8)]  # no extension
    series = write_series(tmp_path / "s", names=names)
    raw = read(tmp_path / "s")
    assert_same_volume(raw, series)
    assert raw.meta["files"] == [str(p) for p in series.paths]


def test_zip_and_gzip_give_the_same_volume(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s")
    archive = tmp_path / "scan.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in reversed(series.paths):
            zf.write(path, f"study/{path.name}")
        zf.writestr("study/README.txt", "not dicom")
    gz_folder = tmp_path / "gz"
    gz_folder.mkdir()
    for path in series.paths:
        (gz_folder / f"{path.name}.gz").write_bytes(gzip.compress(path.read_bytes()))
    from_zip, from_gz = read(archive), read(gz_folder)
    assert_same_volume(from_zip, series)
    assert_same_volume(from_gz, series)
    assert from_zip.meta["files"] == [f"study/{p.name}" for p in series.paths]
    assert from_zip.meta["source"] == str(archive)


def test_single_file_is_that_file_only(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", step=2.0, thickness=1.5)
    raw = read(series.paths[3])
    assert raw.array.shape == (16, 12, 1)
    np.testing.assert_array_equal(raw.array[..., 0], series.volume[:, :, 3].astype(np.float32))
    expected = series.affine.copy()
    expected[:3, 3] = series.affine[:3, 3] + 3 * series.affine[:3, 2]
    np.testing.assert_allclose(raw.affine, expected, atol=1e-6)  # step = normal * SpacingBetweenSlices


def test_single_gzipped_file(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s")
    gz = tmp_path / "one.dcm.gz"
    gz.write_bytes(gzip.compress(series.paths[0].read_bytes()))
    raw = read(gz)
    np.testing.assert_array_equal(raw.array[..., 0], series.volume[:, :, 0].astype(np.float32))


def test_file_without_preamble_is_read_and_other_files_skipped(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s")
    raw_file = tmp_path / "s" / "IM0002.dcm"
    ds = pydicom.dcmread(raw_file)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(raw_file, ds, implicit_vr=False, little_endian=True, enforce_file_format=False)
    assert raw_file.read_bytes()[128:132] != b"DICM"
    write_text_file(tmp_path / "s" / "README", "a readme")
    write_text_file(tmp_path / "s" / "meta.json", json.dumps({"a": 1}))
    write_dicomdir_like(tmp_path / "s" / "DICOMDIR")
    assert_same_volume(read(tmp_path / "s"), series)


def test_gaps_between_slices_warn_and_use_the_real_step(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", step=4.8, thickness=4.0)
    raw = read(tmp_path / "s")
    assert_same_volume(raw, series)
    assert len(raw.meta["warnings"]) == 1
    assert "4 mm thick with 0.8 mm gaps" in raw.meta["warnings"][0]


def test_missing_slice_is_an_error(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s")
    series.paths[4].unlink()
    with pytest.raises(
        DicomError,
        match=r"Expected evenly spaced slices, found slice steps from 2\.000 "
        r"to 4\.000 mm \(about 1 missing slice\)",
    ) as info:
        read(tmp_path / "s")
    assert "\n" not in str(info.value)


def test_slightly_uneven_spacing_warns(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", step=2.0)
    ds = pydicom.dcmread(series.paths[3])
    normal = OBLIQUE[:, 2]
    ds.ImagePositionPatient = (np.asarray(ds.ImagePositionPatient, float) + 0.05 * normal).tolist()
    ds.save_as(series.paths[3])
    raw = read(tmp_path / "s")
    assert raw.array.shape == (16, 12, 8)
    assert any("slice steps vary from 1.950 to 2.050 mm" in w for w in raw.meta["warnings"])
    np.testing.assert_allclose(raw.affine, series.affine, atol=1e-6)  # first-to-last step is exact


def test_mixed_orientations_in_one_series_is_an_error(tmp_path: Path) -> None:
    uid = generate_uid()
    write_series(tmp_path / "s", n_slices=4, uid=uid, names=[f"a{k}.dcm" for k in range(4)])
    other = Rotation.from_euler("x", 90, degrees=True).as_matrix()
    second = write_series(
        tmp_path / "s", n_slices=4, uid=uid, rotation=other, seed=1, names=[f"b{k}.dcm" for k in range(4)]
    )
    with pytest.raises(
        DicomError,
        match=r"^Expected one slice orientation per series, found 2 "
        r"different orientations in .*; pass --series",
    ) as info:
        read(tmp_path / "s")
    assert "\n" not in str(info.value)
    listing_index = "2" if "1: series 301" in str(info.value) else "1"
    picked = read(tmp_path / "s", series=listing_index)  # an index still reads one orientation
    assert picked.array.shape == (16, 12, 4)
    if np.allclose(picked.affine, second.affine, atol=1e-6):
        np.testing.assert_array_equal(picked.array, second.volume.astype(np.float32))


def test_missing_geometry_tag_is_named(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s")
    ds = pydicom.dcmread(series.paths[2])
    del ds.PixelSpacing
    ds.save_as(series.paths[2])
    with pytest.raises(
        DicomError,
        match=r"Expected PixelSpacing \(0028,0030\) in every image, "
        r"found it missing in IM0002\.dcm",
    ):
        read(tmp_path / "s")


def test_empty_folder_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DicomError, match=r"^Expected DICOM files in .*empty, found an empty folder; "):
        read(tmp_path / "empty")


def test_folder_of_text_files_is_an_error(tmp_path: Path) -> None:
    for name in ("a.txt", "b.json", "sub/c"):
        write_text_file(tmp_path / "t" / name, "hello " * 50)
    with pytest.raises(
        DicomError,
        match=r"^Expected DICOM files in .*t, found 3 files, none of them "
        r"DICOM; pass the folder",
    ):
        read(tmp_path / "t")


def test_dicom_without_pixel_data_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    write_dicomdir_like(tmp_path / "d" / "DICOMDIR")
    with pytest.raises(
        DicomError,
        match=r"^Expected DICOM images with pixel data in .*d, found 1 DICOM "
        r"file without pixel data",
    ):
        read(tmp_path / "d")


def test_single_non_dicom_file_is_an_error(tmp_path: Path) -> None:
    fake = tmp_path / "fake.dcm"
    fake.write_bytes(b"\x00" * 300)
    with pytest.raises(DicomError, match=r"^Expected a DICOM file, found .*fake\.dcm that is not DICOM"):
        read(fake)


def test_read_raw_dispatches_every_dicom_input(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", names=[f"img{k}" for k in range(8)])
    archive = tmp_path / "scan.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for path in series.paths:
            zf.write(path, path.name)
    assert_same_volume(read_raw(tmp_path / "s"), series)
    assert_same_volume(read_raw(archive), series)
    assert read_raw(series.paths[0]).array.shape == (16, 12, 1)  # no extension, DICM preamble


# ----------------------------------------------------------------------------- several series


@pytest.fixture
def study(tmp_path: Path) -> dict[str, Series]:
    folder = tmp_path / "study"
    out = {
        "localizer": write_series(folder / "loc", n_slices=1, number=101, description="localizer"),
        "small": write_series(folder / "t2", n_slices=5, number=201, description="T2", seed=2),
        "main": write_series(folder / "t1", n_slices=8, number=301, description="T1", seed=3),
        "derived": write_series(
            folder / "mpr",
            n_slices=12,
            number=401,
            description="MPR",
            image_type=("DERIVED", "SECONDARY", "MPR"),
            seed=4,
        ),
    }
    write_text_file(folder / "README", "study export")
    write_dicomdir_like(folder / "DICOMDIR")
    return out


def test_several_series_choose_the_documented_one(
    study: dict[str, Series], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="mriquant.io.dicom_series"):
        raw = read(tmp_path / "study")
    assert_same_volume(raw, study["main"])  # ORIGINAL beats the larger DERIVED; more slices than T2
    listing = raw.meta["series"]
    assert [s["number"] for s in listing] == [101, 201, 301, 401]
    assert [s["chosen"] for s in listing] == [False, False, True, False]
    assert [s["n_slices"] for s in listing] == [1, 5, 8, 12]
    assert listing[0]["problem"] == "localizer or fewer than 3 slices"
    assert set(listing[0]) >= {
        "index",
        "uid",
        "number",
        "description",
        "n_files",
        "rows",
        "columns",
        "n_slices",
        "chosen",
    }
    assert "also found 2: series 201 'T2'" in caplog.text


@pytest.mark.parametrize("how", ["uid", "number", "index"])
def test_series_option_picks_another(study: dict[str, Series], tmp_path: Path, how: str) -> None:
    wanted = {"uid": study["small"].uid, "number": "201", "index": "2"}[how]
    raw = read(tmp_path / "study", series=wanted)
    assert_same_volume(raw, study["small"])
    assert [s["chosen"] for s in raw.meta["series"]] == [False, True, False, False]


def test_series_option_reads_a_localizer_on_request(study: dict[str, Series], tmp_path: Path) -> None:
    raw = read(tmp_path / "study", series="1")
    assert raw.array.shape == (16, 12, 1)


def test_unknown_series_lists_the_available_ones(study: dict[str, Series], tmp_path: Path) -> None:
    with pytest.raises(DicomError) as info:
        read(tmp_path / "study", series="999")
    message = str(info.value)
    assert message.startswith(
        "Expected --series to be a SeriesInstanceUID, a SeriesNumber or an index 1..4, found '999'"
    )
    assert "1: series 101 'localizer'" in message and "4: series 401 'MPR'" in message
    assert study["main"].uid in message
    assert "\n" not in message


def test_echoes_are_split_and_the_first_is_chosen(tmp_path: Path) -> None:
    uid = generate_uid()
    first = write_series(tmp_path / "s", uid=uid, echo=1, names=[f"e1_{k}.dcm" for k in range(8)])
    write_series(tmp_path / "s", uid=uid, echo=2, seed=5, names=[f"e2_{k}.dcm" for k in range(8)])
    raw = read(tmp_path / "s")
    assert_same_volume(raw, first)
    assert [s["echo"] for s in raw.meta["series"]] == [1, 2]


def test_repeated_positions_give_a_4d_array(tmp_path: Path) -> None:
    uid = generate_uid()
    vols = []
    for t in range(3):
        series = write_series(tmp_path / "s", uid=uid, seed=10 + t, names=[f"t{t}_{k}" for k in range(8)])
        for path in series.paths:
            ds = pydicom.dcmread(path)
            ds.AcquisitionNumber = t + 1
            ds.save_as(path)
        vols.append(series.volume)
    raw = read(tmp_path / "s")
    assert raw.array.shape == (16, 12, 8, 3)
    np.testing.assert_array_equal(raw.array, np.stack(vols, axis=-1).astype(np.float32))
    np.testing.assert_allclose(raw.affine, series.affine, atol=1e-6)


# ----------------------------------------------------------------------------- enhanced multi-frame


def _private_scale_item(scale: float) -> Dataset:
    inner = Dataset()
    inner.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", scale)
    return inner


def write_enhanced(
    datasets: list[Dataset],
    path: Path,
    *,
    echo_times: list[float] | None = None,
    philips_scale: float | None = None,
) -> None:
    """Build an Enhanced MR Image from classic datasets (frames in the given order)."""
    first = datasets[0]
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = EnhancedMRImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = EnhancedMRImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    for keyword in (
        "PatientName",
        "PatientID",
        "StudyInstanceUID",
        "SeriesNumber",
        "SeriesDescription",
        "Modality",
        "Manufacturer",
        "ImageType",
        "Rows",
        "Columns",
        "SamplesPerPixel",
        "PhotometricInterpretation",
        "BitsAllocated",
        "BitsStored",
        "HighBit",
        "PixelRepresentation",
        "FrameOfReferenceUID",
    ):
        if keyword in first:
            setattr(ds, keyword, first.get(keyword))
    ds.SeriesInstanceUID = generate_uid()
    ds.NumberOfFrames = len(datasets)
    shared = Dataset()
    shared.PixelMeasuresSequence = [Dataset()]
    shared.PixelMeasuresSequence[0].PixelSpacing = first.PixelSpacing
    shared.PixelMeasuresSequence[0].SliceThickness = first.SliceThickness
    shared.PlaneOrientationSequence = [Dataset()]
    shared.PlaneOrientationSequence[0].ImageOrientationPatient = first.ImageOrientationPatient
    ds.SharedFunctionalGroupsSequence = [shared]
    frames = []
    for i, src in enumerate(datasets):
        item = Dataset()
        item.PlanePositionSequence = [Dataset()]
        item.PlanePositionSequence[0].ImagePositionPatient = src.ImagePositionPatient
        item.PixelValueTransformationSequence = [Dataset()]
        transform = item.PixelValueTransformationSequence[0]
        transform.RescaleSlope, transform.RescaleIntercept = src.RescaleSlope, src.RescaleIntercept
        transform.RescaleType = "US"
        if echo_times is not None:
            item.MREchoSequence = [Dataset()]
            item.MREchoSequence[0].EffectiveEchoTime = echo_times[i]
        if philips_scale is not None:
            block = item.private_block(0x2005, "Philips MR Imaging DD 005", create=True)
            block.add_new(0x0F, "SQ", [_private_scale_item(philips_scale)])
        frames.append(item)
    ds.PerFrameFunctionalGroupsSequence = frames
    ds.PixelData = b"".join(src.PixelData for src in datasets)
    ds.save_as(path, enforce_file_format=True)


def test_enhanced_multiframe_matches_the_classic_series(tmp_path: Path) -> None:
    series = write_series(tmp_path / "classic", rescale=(2.0, 1.0))
    order = [5, 2, 7, 0, 3, 1, 6, 4]  # frames out of slice order
    write_enhanced([series.datasets[k] for k in order], tmp_path / "enhanced.dcm")
    classic, enhanced = read(tmp_path / "classic"), read(tmp_path / "enhanced.dcm")
    assert_same_volume(enhanced, series, rescale=(2.0, 1.0))
    np.testing.assert_array_equal(enhanced.array, classic.array)
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-9)
    assert enhanced.meta["dicom_kind"] == "enhanced"
    assert enhanced.meta["sidecar"]["SliceThickness"] == 2.0


def test_enhanced_with_two_echoes_is_4d(tmp_path: Path) -> None:
    echo1 = write_series(tmp_path / "e1", seed=1)
    echo2 = write_series(tmp_path / "e2", seed=2)
    datasets = [d for pair in zip(echo2.datasets, echo1.datasets, strict=True) for d in pair]
    write_enhanced(datasets, tmp_path / "me.dcm", echo_times=[20.0, 10.0] * 8)
    raw = read(tmp_path / "me.dcm")
    assert raw.array.shape == (16, 12, 8, 2)
    np.testing.assert_array_equal(raw.array[..., 0], echo1.volume.astype(np.float32))  # shorter TE first
    np.testing.assert_array_equal(raw.array[..., 1], echo2.volume.astype(np.float32))
    np.testing.assert_allclose(raw.affine, echo1.affine, atol=1e-6)


def test_philips_private_scale_gives_floating_point_values(tmp_path: Path) -> None:
    series = write_series(tmp_path / "s", rescale=(2.5, 0.0))
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.Manufacturer = "Philips"
        ds.private_block(0x2005, "Philips MR Imaging DD 001", create=True).add_new(0x0E, "FL", 0.25)
        ds.save_as(path)
    raw = read(tmp_path / "s")
    np.testing.assert_array_equal(raw.array, series.volume.astype(np.float32) * np.float32(4.0))
    assert raw.meta["sidecar"]["UsePhilipsFloatNotDisplayScaling"] == 1


# ----------------------------------------------------------------------------- compression


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless, JPEG2000Lossless], ids=lambda u: u.name)
def test_compressed_transfer_syntax_round_trips(tmp_path: Path, syntax: Any) -> None:
    if not get_encoder(syntax).is_available:
        pytest.skip(f"no pydicom encoder installed for {syntax.name}")
    series = write_series(tmp_path / "s", shape=(64, 48))  # JPEG 2000 needs tiles of some size
    for path in series.paths:
        ds = pydicom.dcmread(path)
        ds.compress(syntax, generate_instance_uid=False)
        ds.save_as(path)
    assert pydicom.dcmread(series.paths[0]).file_meta.TransferSyntaxUID == syntax
    assert_same_volume(read(tmp_path / "s"), series)


# ----------------------------------------------------------------------------- metadata


def test_sidecar_has_no_identifying_fields_and_times_in_seconds(tmp_path: Path) -> None:
    write_series(tmp_path / "s")
    meta = read(tmp_path / "s").meta
    sidecar = meta["sidecar"]
    assert sidecar["RepetitionTime"] == pytest.approx(2.3)
    assert sidecar["EchoTime"] == pytest.approx(0.00298)
    assert sidecar["InversionTime"] == pytest.approx(0.9)
    assert sidecar["ImageType"] == ["ORIGINAL", "PRIMARY", "M"]
    assert sidecar["ConversionSoftware"] == "mriquant"
    assert len(sidecar["ImageOrientationPatientDICOM"]) == 6
    text = json.dumps(sidecar)
    for private in ("Test^Patient", "P001", "19700101", "Test Hospital", "20240102"):
        assert private not in text
    assert meta["dicom"]["PatientName"] == "Test^Patient"
    assert meta["dicom"]["StudyDate"] == "20240102"
    assert meta["modality"] == "MR"
    assert meta["study_uid"] == "1.2.826.0.1.3680043.8.498.1"


def test_header_fields_keep_multiple_values_in_dicom_form() -> None:
    from mriquant.io.dicom_series import header_fields

    ds = Dataset()
    ds.SoftwareVersions = ["5.7.1", "5.7.1.1"]
    ds.PatientName = "Doe^Jane"
    ds.PatientAge = "041Y"
    ds.StudyTime = "121816"
    fields = header_fields(ds)
    assert fields["SoftwareVersions"] == "5.7.1\\5.7.1.1"  # not the Python list repr "['5.7.1', '5.7.1.1']"
    assert (fields["PatientName"], fields["PatientAge"], fields["StudyTime"]) == ("Doe^Jane", "041Y", "121816")


# ----------------------------------------------------------------------------- real data


def agreement(raw: RawVolume, reference: Any) -> tuple[float, bool]:
    """Max |affine difference| (mm) and voxel equality after reorienting both to RAS."""
    ours = nib.as_closest_canonical(nib.Nifti1Image(raw.array, raw.affine))
    theirs = nib.as_closest_canonical(reference)
    difference = float(np.abs(ours.affine - theirs.affine).max())
    a, b = np.asarray(ours.dataobj), theirs.get_fdata()
    # Our output is float32: compare with the reference's scaled values rounded to float32.
    return difference, a.shape == b.shape and np.array_equal(a, b.astype(np.float32))


def flip_rows(raw: RawVolume) -> tuple[np.ndarray, np.ndarray]:
    """The volume with its J axis reversed, and the matching affine."""
    flip = np.eye(4)
    flip[1, 1], flip[1, 3] = -1.0, raw.array.shape[1] - 1
    return raw.array[:, ::-1], raw.affine @ flip


@needs_data
def test_philips_classic_matches_dcm2niix_reference() -> None:
    folder = DICOM_DATA / "philips-t1-mprage"
    raw = read(folder / "dicom")
    reference = nib.load(folder / "1301_WIP_ADNI_Sag3D_MPRAGE.nii.gz")
    difference, equal = agreement(raw, reference)
    assert difference < 0.05
    assert equal
    assert raw.array.shape == (256, 256, 170)
    ref_json = json.loads((folder / "1301_WIP_ADNI_Sag3D_MPRAGE.json").read_text())
    for key in ("RepetitionTime", "EchoTime", "InversionTime", "FlipAngle", "SliceThickness"):
        assert raw.meta["sidecar"][key] == pytest.approx(ref_json[key], rel=1e-3)
    np.testing.assert_allclose(
        raw.meta["sidecar"]["ImageOrientationPatientDICOM"], ref_json["ImageOrientationPatientDICOM"], atol=1e-5
    )


@needs_data
def test_philips_enhanced_built_from_classic_matches_the_reference(tmp_path: Path) -> None:
    folder = DICOM_DATA / "philips-t1-mprage"
    datasets = [pydicom.dcmread(p) for p in sorted((folder / "dicom").glob("*.dcm"))][::-1]
    scale = float(datasets[0][0x2005, 0x100E].value)
    write_enhanced(datasets, tmp_path / "enhanced.dcm", philips_scale=scale)
    raw = read(tmp_path / "enhanced.dcm")
    difference, equal = agreement(raw, nib.load(folder / "1301_WIP_ADNI_Sag3D_MPRAGE.nii.gz"))
    assert difference < 0.05
    assert equal


@needs_data
@pytest.mark.parametrize("number", range(1, 10))
def test_transfer_syntaxes_match_references(number: int) -> None:
    folder = DICOM_DATA / "transfer-syntaxes"
    raw = read(folder / "In" / f"{number}.dcm")
    difference, equal = agreement(raw, nib.load(folder / "Ref" / f"{number}.nii"))
    assert raw.meta["dicom_kind"] == "mosaic"
    assert difference < 0.05
    assert equal


@needs_data
@pytest.mark.parametrize(
    ("name", "number"),
    [("12bitUnsigned", 2), ("12bitUnsigned_0x0F0F", 3), ("12bitSigned_0x0F0F", 4)],
)
def test_12bit_images_match_references(name: str, number: int) -> None:
    folder = DICOM_DATA / "12bit"
    path = folder / "In" / f"{name}.dcm"
    ref_json = json.loads((folder / "Ref" / f"{number}.json").read_text())
    assert int(pydicom.dcmread(path, stop_before_pixels=True).SeriesNumber) == ref_json["SeriesNumber"]
    raw = read(path)
    difference, equal = agreement(raw, nib.load(folder / "Ref" / f"{number}.nii"))
    assert difference < 0.05
    assert equal
    if "Signed" in name:
        assert raw.array.min() == -2048  # sign bit 11 extended


@pytest.fixture(scope="module")
def decubitus_references(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = {}
    for position in ("HFS", "HFDL"):
        target = tmp_path_factory.mktemp(position)
        subprocess.run(
            [
                "dcm2niix",
                "-z",
                "y",
                "-f",
                "out",
                "-o",
                str(target),
                str(DICOM_DATA / "decubitus-t1" / position / "dicom"),
            ],
            check=True,
            capture_output=True,
        )
        out[position] = nib.load(target / "out.nii.gz")
    return out


@needs_data
@needs_dcm2niix
@pytest.mark.parametrize("position", ["HFS", "HFDL"])
def test_decubitus_matches_dcm2niix(position: str, decubitus_references: dict[str, Any]) -> None:
    raw = read(DICOM_DATA / "decubitus-t1" / position / "dicom")
    difference, equal = agreement(raw, decubitus_references[position])
    assert difference < 0.05
    assert equal
    # dcm2niix stores rows bottom-up: with J flipped, our grid is its grid, voxel for voxel.
    flipped, affine = flip_rows(raw)
    np.testing.assert_allclose(affine, decubitus_references[position].affine, atol=0.05)
    np.testing.assert_array_equal(flipped, decubitus_references[position].get_fdata())
    assert any("0.8 mm gaps" in w for w in raw.meta["warnings"])  # 4 mm slices every 4.8 mm


@needs_data
@needs_dcm2niix
def test_hfs_and_hfdl_describe_the_same_anatomy(decubitus_references: dict[str, Any]) -> None:
    hfs = read(DICOM_DATA / "decubitus-t1" / "HFS" / "dicom")
    hfdl = read(DICOM_DATA / "decubitus-t1" / "HFDL" / "dicom")
    # Patient coordinates follow the patient: both scans share one voxel-to-world mapping,
    # exactly as dcm2niix finds, whatever the position on the table.
    np.testing.assert_allclose(hfs.affine, hfdl.affine, atol=0.05)
    np.testing.assert_allclose(decubitus_references["HFS"].affine, decubitus_references["HFDL"].affine, atol=0.05)
    same = np.corrcoef(hfs.array.ravel(), hfdl.array.ravel())[0, 1]
    upside_down = np.corrcoef(hfs.array.ravel(), np.flip(hfdl.array, axis=1).ravel())[0, 1]
    assert same > upside_down + 0.2
