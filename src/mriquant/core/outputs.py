"""The name of every public output file, in one place.

These names are the public contract (``../shared/DESIGN.md``): the maintainers' checks, FreeSurfer-aware
tools and users' scripts rely on them. Every writer takes its file name from here; :data:`DESCRIPTIONS`
says what each file holds (``mriquant info`` and the manifest can show it).
"""

from __future__ import annotations

__all__ = [
    "BIAS_FIELD", "BRAIN_MASK", "CHANGE_CSV", "CHANGE_JSON", "DESCRIPTIONS", "DSEG", "MANIFEST", "NORMALIZED",
    "PREPROC", "REPORT_HTML", "REPORT_PDF", "REPORT_PDF_DCM", "SEG_DCM", "SR_DCM", "TISSUE", "TO_MNI",
    "VOLUMES_CSV", "VOLUMES_JSON", "image_file",
]  # fmt: skip

PREPROC = "preproc.nii.gz"
BRAIN_MASK = "brain_mask.nii.gz"
BIAS_FIELD = "bias_field.nii.gz"
NORMALIZED = "normalized.nii.gz"
TISSUE = "tissue.nii.gz"
DSEG = "dseg.nii.gz"
#: Stem of the transform to MNI152: ``to_mni.json`` + ``to_mni.mat`` (+ ``to_mni_warp.nii.gz``, ...).
TO_MNI = "to_mni"
VOLUMES_JSON = "volumes.json"
VOLUMES_CSV = "volumes.csv"
REPORT_HTML = "report.html"
REPORT_PDF = "report.pdf"
MANIFEST = "manifest.json"
SEG_DCM = "seg.dcm"
SR_DCM = "sr.dcm"
REPORT_PDF_DCM = "report_pdf.dcm"
CHANGE_JSON = "change.json"
CHANGE_CSV = "change.csv"

#: What each file holds.
DESCRIPTIONS: dict[str, str] = {
    PREPROC: "bias-corrected scan, native grid",
    BRAIN_MASK: "brain mask (GM + WM + CSF inside the dura), native grid",
    BIAS_FIELD: "N4 bias field (--save-field), native grid",
    NORMALIZED: "intensity-normalised scan (normalize step), native grid",
    TISSUE: "tissue classes: 1 CSF, 2 GM, 3 WM, native grid",
    DSEG: "structures, FreeSurfer ids, native grid",
    f"{TO_MNI}.json": "transform to MNI152 2009 (ANTs files named inside)",
    VOLUMES_JSON: "volumes, shape, QC (mL; fractions of eTIV)",
    VOLUMES_CSV: "volumes.json as a table",
    REPORT_HTML: "self-contained report",
    REPORT_PDF: "the same report as PDF",
    MANIFEST: "versions, parameters, per-step timings, input hashes, outputs",
    SEG_DCM: "DICOM Segmentation of the structures, in the source study",
    SR_DCM: "DICOM Comprehensive 3D SR (TID 1500) of the volumes, in the source study",
    REPORT_PDF_DCM: "the PDF report as DICOM Encapsulated PDF, in the source study",
    CHANGE_JSON: "longitudinal change (PBVC, per-structure change)",
    CHANGE_CSV: "change.json as a table",
}


def image_file(key: str) -> str:
    """The file name of a case image or label map written under its key: ``"prob_GM"`` -> ``"prob_GM.nii.gz"``."""
    return f"{key}.nii.gz"
