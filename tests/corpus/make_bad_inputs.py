"""Build the bad-input corpus: every file the command line must reject cleanly.

Run ``python tests/corpus/make_bad_inputs.py DEST`` to write the corpus to DEST;
the tests build it in a temporary folder. Each entry maps a name to the path of the
bad input and the words its error message must contain.
"""

from __future__ import annotations

import gzip
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np


@dataclass(frozen=True)
class BadInput:
    """One corpus entry: the path to pass and a phrase the error must contain."""

    path: Path
    expect: str
    extra_args: tuple[str, ...] = ()


def _head(shape: tuple[int, ...] = (16, 16, 16), seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(np.int16)


def _nifti(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(path))
    return path


def _nifti_raw_sform(path: Path, data: np.ndarray, sform: np.ndarray) -> Path:
    """Write a single-file NIfTI byte by byte, so an sform nibabel would refuse is kept as given."""
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(data.shape)
    hdr.set_data_dtype(data.dtype)
    hdr["sform_code"], hdr["qform_code"] = 1, 0
    hdr["srow_x"], hdr["srow_y"], hdr["srow_z"] = sform[0], sform[1], sform[2]
    hdr["vox_offset"] = 352
    with gzip.open(path, "wb") as fh:
        fh.write(hdr.binaryblock + b"\x00" * 4 + np.asfortranarray(data).tobytes(order="F"))
    return path


def _dicom_slice(path: Path, z: float, iop: list[float], uid: str, series_uid: str) -> None:
    from pydicom import Dataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MRImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = MRImageStorage, uid
    ds.Modality, ds.SeriesInstanceUID, ds.StudyInstanceUID = "MR", series_uid, "1.2.3.4"
    ds.SeriesNumber, ds.InstanceNumber = 1, int(z) + 1
    ds.ImageOrientationPatient = iop
    ds.ImagePositionPatient = [0.0, 0.0, z]
    ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.0
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(64, dtype=np.uint16) * (int(z) + 1)).tobytes()
    ds.save_as(path, enforce_file_format=True)


def _dicom_mixed_orientation(folder: Path) -> Path:
    folder.mkdir()
    axial, tilted = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.8, 0.6]
    for k in range(6):
        _dicom_slice(folder / f"s{k}.dcm", float(k), axial if k % 2 else tilted, f"1.2.3.4.5.{k + 1}", "1.2.3.4.9")
    return folder


def build(dest: Path) -> dict[str, BadInput]:
    """Write the corpus under ``dest`` and return it by name."""
    dest.mkdir(parents=True, exist_ok=True)
    good = _head()
    corpus: dict[str, BadInput] = {}

    def add(name: str, path: Path, expect: str, *extra: str) -> None:
        corpus[name] = BadInput(path, expect, extra)

    add("missing", dest / "does_not_exist.nii.gz", "no such path")
    (dest / "empty.nii.gz").write_bytes(b"")
    add("empty", dest / "empty.nii.gz", "empty file")
    full = gzip.compress(_nifti(dest / "_tmp.nii", good).read_bytes())
    (dest / "_tmp.nii").unlink()
    (dest / "truncated.nii.gz").write_bytes(full[: len(full) // 2])
    add("truncated_gzip", dest / "truncated.nii.gz", "corrupt or truncated")
    (dest / "text.nii.gz").write_text("this is not an image\n")
    add("text_named_nii_gz", dest / "text.nii.gz", "corrupt or truncated")
    add("2d", _nifti(dest / "slice2d.nii.gz", good[:, :, 0]), "2D image")
    add("4d", _nifti(dest / "four_d.nii.gz", np.stack([good, good], axis=-1)), "--volume")
    add("nan", _nifti(dest / "all_nan.nii.gz", np.full((16, 16, 16), np.nan, np.float32)), "NaN")
    add("zero", _nifti(dest / "all_zero.nii.gz", np.zeros((16, 16, 16), np.int16)), "all-zero")
    singular = np.diag([1.0, 1.0, 0.0, 1.0])
    add("singular_affine", _nifti_raw_sform(dest / "singular.nii.gz", good, singular), "singular affine")
    add("zero_length_axis", _nifti(dest / "zero_axis.nii.gz", np.zeros((16, 0, 16), np.int16)), "zero-length")
    (dest / "empty_dicom_dir").mkdir()
    add("empty_dicom_folder", dest / "empty_dicom_dir", "empty folder")
    (dest / "not_dicom_dir").mkdir()
    for i in range(3):
        (dest / "not_dicom_dir" / f"note{i}.txt").write_text(f"note {i}\n")
    add("non_dicom_folder", dest / "not_dicom_dir", "none of them DICOM")
    add("dicom_mixed_orientation", _dicom_mixed_orientation(dest / "dicom_mixed_orientation"), "orientation")
    return corpus


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bad_inputs")
    for name, entry in build(out).items():
        print(f"{name:28s} {entry.path}  (error mentions: {entry.expect!r})")
