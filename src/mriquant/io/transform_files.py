"""Transform files: write a :class:`~mriquant.core.transform.Transform` to a folder and read it back.

A saved transform is its ANTs files (``{stem}.mat``, and for SyN ``{stem}_warp.nii.gz`` and
``{stem}_invwarp.nii.gz``; a composed transform numbers further files ``{stem}_2.mat``, ...) and
``{stem}.json``, which names them in composition order with the grids they connect.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mriquant.core.errors import InputError
from mriquant.core.transform import TRANSFORM_FORMAT, Grid, Transform, TransformFile, TransformFolder
from mriquant.io.write import write_json

__all__ = ["read_transform", "write_transform"]


def write_transform(transform: Transform, folder: str | Path, stem: str = "to_mni") -> list[Path]:
    """Write the transform files and ``{stem}.json`` (the composition order) to ``folder``.

    Existing files of the same names are replaced.

    Returns
    -------
    list of pathlib.Path
        The files written, the JSON last.

    Examples
    --------
    >>> write_transform(case.transforms["to_mni"], "out")  # doctest: +SKIP
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = _file_names(transform.forward + transform.inverse, stem)
    written = []
    for source, name in names.items():
        shutil.copyfile(source, folder / name)
        written.append(folder / name)
    written.append(write_json(transform.describe(names), folder / f"{stem}.json"))
    return written


def read_transform(folder: str | Path, stem: str = "to_mni") -> Transform:
    """Read a transform written by :func:`write_transform` (files are copied to a private folder)."""
    path = Path(folder) / f"{stem}.json"
    if not path.is_file():
        raise InputError(
            f"Expected a transform description at {path}, found no file; pass a folder write_transform wrote "
            "(e.g. a preprocess output folder)."
        )
    data = json.loads(path.read_text(encoding="utf-8"))
    if data.get("format") != TRANSFORM_FORMAT:
        raise InputError(
            f"Expected format {TRANSFORM_FORMAT!r} in {path}, found {data.get('format')!r}; "
            "pass a to_mni.json written by mriquant."
        )
    private = TransformFolder()

    def steps(key: str) -> tuple[TransformFile, ...]:
        return tuple(_copy_step(Path(folder), item, private.path) for item in data[key])

    return Transform(
        kind=str(data["kind"]),
        template=Grid.from_dict(data["template_grid"]),
        subject=Grid.from_dict(data["subject_grid"]),
        forward=steps("forward"),
        inverse=steps("inverse"),
        meta=dict(data.get("meta", {})),
        _folders=(private,),
    )


def _file_names(steps: Sequence[TransformFile], stem: str) -> dict[Path, str]:
    """Output file name of every distinct file: ``stem.mat``, ``stem_warp.nii.gz``, ``stem_2.mat``, ..."""
    suffix = {"affine": ".mat", "warp": "_warp.nii.gz", "invwarp": "_invwarp.nii.gz"}
    counts: dict[str, int] = {}
    names: dict[Path, str] = {}
    for step in steps:
        if step.path in names:
            continue
        counts[step.role] = counts.get(step.role, 0) + 1
        number = "" if counts[step.role] == 1 else f"_{counts[step.role]}"
        ending = suffix[step.role]
        names[step.path] = f"{stem}{number}{ending}" if step.role == "affine" else f"{stem}{ending[:-7]}{number}.nii.gz"
    return names



def _copy_step(folder: Path, item: dict[str, Any], private: Path) -> TransformFile:
    source = folder / str(item["file"])
    if not source.is_file():
        raise InputError(f"Expected transform file {source}, found none; copy every file write_transform wrote.")
    target = private / source.name
    if not target.exists():
        shutil.copyfile(source, target)
    return TransformFile(target, bool(item["invert"]), str(item["role"]))
