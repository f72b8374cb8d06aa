"""Pick a reader by file content and ending.

Order of the rules: a folder is a DICOM series folder; otherwise the file's first
bytes decide (zip, gzip, DICOM preamble, NIfTI magic) together with its ending.
"""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

from mriquant.core.errors import FormatError

#: Endings each format family answers to, longest first within a family.
ENDINGS: dict[str, tuple[str, ...]] = {
    "nifti": (".nii.gz", ".nii", ".img.gz", ".hdr", ".img"),
    "mgh": (".mgz", ".mgh", ".mgh.gz"),
    "minc": (".mnc.gz", ".mnc"),
    "nrrd": (".nrrd", ".nhdr"),
    "metaimage": (".mha", ".mhd"),
    "dicom": (".dcm.gz", ".dcm", ".ima", ".zip"),
}

FORMAT_NAMES = {
    "nifti": "NIfTI-1/2 (.nii, .nii.gz) and Analyze (.hdr/.img)",
    "mgh": "FreeSurfer MGH/MGZ (.mgh, .mgz)",
    "minc": "MINC1 (.mnc, .mnc.gz)",
    "nrrd": "NRRD (.nrrd, .nhdr)",
    "metaimage": "MetaImage (.mha, .mhd)",
    "dicom": "DICOM: a folder, a .zip, .dcm/.dcm.gz files; classic and enhanced multi-frame; "
    "JPEG, JPEG-LS, JPEG 2000 and RLE transfer syntaxes",
}


def _head(path: Path, n: int = 132) -> bytes:
    with path.open("rb") as fh:
        return fh.read(n)


def _is_dicom_bytes(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def detect_format(path: Path) -> str:
    """Return the format family of ``path`` (a key of :data:`ENDINGS`).

    Raises
    ------
    FormatError
        If neither the ending nor the content names a supported format.

    """
    if path.is_dir():
        return "dicom"
    name = path.name.lower()
    head = _head(path)
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        return "dicom"
    if _is_dicom_bytes(head):
        return "dicom"
    if head[:2] == b"\x1f\x8b" and name.endswith(".dcm.gz"):
        return "dicom"
    if head[:2] == b"\x1f\x8b" and not any(name.endswith(e) for es in ENDINGS.values() for e in es):
        try:
            with gzip.open(path, "rb") as fh:
                inner = fh.read(348)
        except OSError:
            inner = b""
        if _is_dicom_bytes(inner):
            return "dicom"
        if len(inner) >= 348 and inner[344:348] in (b"n+1\x00", b"ni1\x00"):
            return "nifti"
    for fmt, endings in ENDINGS.items():
        if any(name.endswith(e) for e in endings):
            return fmt
    if len(head) >= 348 or head[:4] in (b"\x5c\x01\x00\x00", b"\x00\x00\x01\x5c"):
        full = _head(path, 352)
        if full[344:348] in (b"n+1\x00", b"ni1\x00") or full[4:8] == b"n+2\x00":
            return "nifti"
    raise FormatError(
        f"Expected a supported image ({', '.join(sorted(ENDINGS))}), found {path.name} "
        "with an unknown ending and content; convert it to NIfTI or pass a DICOM folder."
    )
