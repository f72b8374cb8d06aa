"""Atomic writers: NIfTI images, JSON files and whole output folders.

Every file is written to a temporary name in the destination folder and then
renamed over the destination, so a crash never leaves a half-written output.

Temporary names say whose they are: ``.<name>.mriquant-<kind>-<pid>-<owner>-<random>``, where ``pid`` is the
writing process and ``owner`` its host and PID namespace (:func:`owner_token`). A process killed outright
(``kill -9``, power cut) cannot delete its temporaries; the next write beside them does, once their process
is gone (:func:`remove_stale`).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from mriquant.core.errors import OutputError
from mriquant.core.image import Image, LabelImage

log = logging.getLogger(__name__)


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


# ----------------------------------------------------------------------------------------------------------------------
# temporary names that identify their writer, and removal of those whose writer is gone

#: ``<pid>-<owner>-<8 random characters of tempfile>`` after ``.mriquant-<kind>-`` (owner never holds ``-``).
_TEMP_TAIL = r"\.mriquant-(?P<kind>staging|old|tmp)-(?P<pid>[0-9]+)-(?P<owner>[A-Za-z0-9._]+)-[a-z0-9_]{8}"


def owner_token() -> str:
    """The host and PID namespace of this process, as a file-name token (``[A-Za-z0-9._]``, no ``-``).

    Two processes with the same token see each other's process ids: a PID written by one can be checked by
    the other with ``os.kill(pid, 0)``. The PID namespace (Linux, ``/proc/self/ns/pid``) tells apart containers
    that share a host name and a folder.
    """
    host = re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"
    try:
        namespace = re.sub(r"[^0-9]", "", os.readlink("/proc/self/ns/pid"))
    except OSError:
        namespace = ""
    return f"{host}.ns{namespace}" if namespace else host


def _temp_prefix(name: str, kind: str) -> str:
    """``.<name>.mriquant-<kind>-<pid>-<owner>-``: tempfile appends 8 random characters (and the suffix)."""
    return f".{name}.mriquant-{kind}-{os.getpid()}-{owner_token()}-"


def _process_gone(pid: int, owner: str) -> bool:
    """True only when process ``pid`` of ``owner`` surely no longer runs (another owner: not known, False)."""
    if owner != owner_token():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # PermissionError: it runs, as another user
        return False
    return False


def remove_stale(folder: Path, *, name: str | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` left by mriquant processes that no longer run.

    The rule: an entry is removed only if its name has the form written by this module
    (``.<name>.mriquant-{staging,old,tmp}-<pid>-<owner>-<random>[suffix]``), its ``owner`` is this
    process's :func:`owner_token` (same host and PID namespace) and no process ``pid`` exists
    (``os.kill(pid, 0)`` raises ProcessLookupError). Anything else is kept: other files, symbolic links,
    temporaries of running processes (two runs may write side by side), and those written from another host
    or container, whose process cannot be checked from here. A PID reused by a new process after a reboot
    only delays the removal until that process ends.

    Parameters
    ----------
    folder : pathlib.Path
        Folder to clean (not recursed into).
    name : str, optional
        Only the temporaries of this destination name (``.<name>.mriquant-...``); all of them when None.

    Returns
    -------
    list of pathlib.Path
        The entries removed.

    """
    lead = re.escape(f".{name}") if name is not None else r"\..+"
    pattern = re.compile(lead + _TEMP_TAIL + r"(?:\.[^-/]*)?")
    removed = []
    for entry in _entries(folder):
        match = pattern.fullmatch(entry.name)
        if match is None or not _process_gone(int(match["pid"]), match["owner"]) or entry.is_symlink():
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        log.info("removed %s, left by process %s that no longer runs", entry, match["pid"])
        removed.append(entry)
    return removed


def _entries(folder: Path) -> list[Path]:
    """The entries of ``folder`` (none when it cannot be listed)."""
    try:
        return list(folder.iterdir())
    except OSError:
        return []


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` when the block succeeds.

    The temporary (``.<stem>.mriquant-tmp-<pid>-<owner>-<random><suffix>``) is deleted when the block fails;
    one left by a killed process is deleted by the next write of the same name (:func:`remove_stale`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, name=path.stem)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".gz") else path.suffix
    fd, tmp_name = tempfile.mkstemp(prefix=_temp_prefix(path.stem, "tmp"), suffix=suffix, dir=path.parent)
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

    The staging folder is a hidden sibling, ``.<outdir name>.mriquant-staging-<pid>-<owner>-<random>``. A run
    killed outright leaves it behind; the next ``output_folder`` in the same parent folder removes it and
    any other temporaries of mriquant processes that no longer run (the rule is :func:`remove_stale`'s:
    same host and PID namespace, process gone), and keeps those of runs still writing.

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
    remove_stale(outdir.parent)
    staging = Path(tempfile.mkdtemp(prefix=_temp_prefix(outdir.name, "staging"), dir=outdir.parent))
    os.chmod(staging, _DIR_MODE)
    try:
        yield staging
        _publish(staging, outdir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _publish(staging: Path, outdir: Path) -> None:
    """Rename ``staging`` to ``outdir``; an existing ``outdir`` is moved aside first, then deleted."""
    if not outdir.exists():
        os.replace(staging, outdir)
        return
    trash = Path(tempfile.mkdtemp(prefix=_temp_prefix(outdir.name, "old"), dir=outdir.parent))
    os.replace(outdir, trash / "old")
    try:
        os.replace(staging, outdir)
    except OSError:
        os.replace(trash / "old", outdir)  # the old outputs go back where they were
        raise
    shutil.rmtree(trash, ignore_errors=True)
