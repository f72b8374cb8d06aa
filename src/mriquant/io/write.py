"""Atomic writers: NIfTI images, JSON files and whole output folders.

Every file is written to a temporary name in the destination folder and then
renamed over the destination, so a crash never leaves a half-written output.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mriquant.core.errors import OutputError
from mriquant.core.image import Image, LabelImage


def _same_path(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def guard_inputs(output: Path, inputs: Iterable[Path]) -> None:
    """Raise :class:`OutputError` if ``output`` is, or lies inside or contains, an input."""
    out = output.resolve()
    for src in inputs:
        s = src.resolve()
        if out == s or s in out.parents or (out in s.parents and output.exists()):
            raise OutputError(
                f"Expected an output path apart from the inputs, found {output} overlapping input {src}; "
                "choose another output path."
            )


def _read_umask() -> int:
    """The process umask (read by setting and restoring it, at import)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


#: Modes ``open()`` / ``mkdir()`` would give: mkstemp/mkdtemp make 0600/0700, outputs get these instead.
_UMASK = _read_umask()
_FILE_MODE = 0o666 & ~_UMASK
_DIR_MODE = 0o777 & ~_UMASK


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if tmp.exists():
            os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def label_dtype(array: np.ndarray) -> type[np.integer[Any]]:
    """Smallest integer dtype that holds every value of ``array``."""
    lo, hi = (int(array.min()), int(array.max())) if array.size else (0, 0)
    for dt in (np.uint8, np.int16, np.int32):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return dt
    return np.int64


def to_nifti(image: Image) -> nib.Nifti1Image:
    """Build a NIfTI-1 image with ``image``'s exact affine (both qform and sform set).

    Label images are stored as the smallest fitting integer type, intensity
    images as float32.
    """
    if isinstance(image, LabelImage):
        data = image.array.astype(label_dtype(image.array), copy=False)
    else:
        data = image.array.astype(np.float32, copy=False)
    nii = nib.Nifti1Image(data, image.affine)
    code = int(image.meta.get("sform_code") or 1)
    nii.header.set_qform(image.affine, code=code)
    nii.header.set_sform(image.affine, code=code)
    nii.header.set_xyzt_units("mm", "sec")
    if isinstance(image, LabelImage):
        nii.header["intent_code"] = 1002  # NIFTI_INTENT_LABEL
    return nii


def write_image(image: Image, path: Path) -> Path:
    """Write ``image`` atomically to ``path`` (NIfTI, ``.nii`` or ``.nii.gz``).

    Returns
    -------
    pathlib.Path
        The path written.

    """
    path = Path(path)
    name = path.name.lower()
    if not (name.endswith(".nii") or name.endswith(".nii.gz")):
        raise OutputError(f"Expected an output ending in .nii or .nii.gz, found {path.name}; rename the output.")
    with atomic_path(path) as tmp:
        nib.save(to_nifti(image), str(tmp))
    return path


def write_json(data: Any, path: Path) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n", encoding="utf-8")
    return Path(path)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


@contextmanager
def output_folder(outdir: Path, *, force: bool = False, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Yield a staging folder that becomes ``outdir`` only if the block succeeds.

    Nothing appears at ``outdir`` on failure; an existing ``outdir`` is kept unless
    ``force`` is given, and then replaced only after the new outputs are complete.

    Raises
    ------
    OutputError
        If ``outdir`` exists and ``force`` is false, or it overlaps an input.

    """
    outdir = Path(outdir)
    guard_inputs(outdir, inputs)
    if outdir.exists() and not force:
        raise OutputError(
            f"Expected a new output folder, found existing {outdir}; pass --force to overwrite it "
            "or choose another folder."
        )
    if outdir.exists() and not outdir.is_dir():
        raise OutputError(f"Expected a folder for the outputs, found a file at {outdir}; choose another path.")
    outdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.", dir=outdir.parent))
    os.chmod(staging, _DIR_MODE)
    try:
        yield staging
        if outdir.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{outdir.name}.old.", dir=outdir.parent))
            os.replace(outdir, trash / "old")
            os.replace(staging, outdir)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(staging, outdir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
