"""``mriquant convert``: any supported scan to NIfTI in its native grid, plus a JSON sidecar."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mriquant import __version__
from mriquant.core.errors import OutputError
from mriquant.core.image import Image
from mriquant.io.write import atomic_path, guard_inputs, to_nifti

#: Sidecar keys that can identify a person; dropped even if a reader put them in.
IDENTIFYING = frozenset(
    {
        "PatientName",
        "PatientID",
        "PatientBirthDate",
        "PatientSex",
        "PatientAge",
        "PatientWeight",
        "AccessionNumber",
        "InstitutionName",
        "InstitutionAddress",
        "StationName",
        "DeviceSerialNumber",
        "ReferringPhysicianName",
        "PerformingPhysicianName",
        "OperatorsName",
        "StudyDate",
        "SeriesDate",
        "AcquisitionDate",
        "AcquisitionDateTime",
        "ContentDate",
        "StudyTime",
        "SeriesTime",
        "AcquisitionTime",
        "ContentTime",
        "StudyInstanceUID",
        "SeriesInstanceUID",
    }
)


def sidecar_path(output: Path) -> Path:
    """Return the JSON sidecar path for ``output`` (``x.nii.gz`` -> ``x.json``)."""
    name = output.name
    stem = name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else Path(name).stem
    return output.with_name(stem + ".json")


def sidecar(image: Image) -> dict[str, Any]:
    """Return the non-identifying acquisition parameters of ``image`` for the JSON sidecar."""
    fields = {k: v for k, v in dict(image.meta.get("sidecar", {})).items() if k not in IDENTIFYING}
    fields.setdefault("SourceFormat", image.meta.get("format"))
    fields["ConversionSoftware"] = "mriquant"
    fields["ConversionSoftwareVersion"] = __version__
    warnings = image.meta.get("warnings")
    if warnings:
        fields["ConversionWarnings"] = list(warnings)
    return fields


def check_output(output: Path, *, inputs: Iterable[Path], force: bool) -> None:
    """Raise :class:`OutputError` unless ``output`` may be written."""
    name = output.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise OutputError(f"Expected an output ending in .nii or .nii.gz, found {output.name}; rename the output.")
    guard_inputs(output, inputs)
    for path in (output, sidecar_path(output)):
        if path.exists() and not force:
            raise OutputError(f"Expected a new output file, found existing {path}; pass --force to overwrite it.")


def convert(image: Image, output: Path, *, inputs: Iterable[Path] = (), force: bool = False) -> tuple[Path, Path]:
    """Write ``image`` to ``output`` (NIfTI, native grid, exact affine) and its JSON sidecar.

    Both files appear together or not at all.

    Returns
    -------
    tuple of pathlib.Path
        The NIfTI and the sidecar paths.

    """
    import nibabel as nib

    output = Path(output)
    check_output(output, inputs=list(inputs), force=force)
    side = sidecar_path(output)
    with atomic_path(side) as tmp_json, atomic_path(output) as tmp_nii:
        nib.save(to_nifti(image), str(tmp_nii))
        tmp_json.write_text(json.dumps(sidecar(image), indent=2, default=str) + "\n", encoding="utf-8")
    return output, side
