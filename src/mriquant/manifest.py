"""Run manifests: what ran, on what, with which versions, parameters and timings.

Every command that writes outputs also writes ``manifest.json``; the fields are
read back by tests and by the report's provenance section.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mriquant.core.case import Step

#: Distributions whose versions every manifest records.
TRACKED = (
    "numpy",
    "scipy",
    "nibabel",
    "pydicom",
    "SimpleITK",
    "scikit-image",
    "highdicom",
    "nilearn",
    "torch",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pyjpegls",
)


def versions() -> dict[str, str | None]:
    """Return the versions of mriquant, Python and the tracked libraries (None when absent)."""
    from mriquant import __version__

    found: dict[str, str | None] = {"mriquant": __version__, "python": platform.python_version()}
    for dist in TRACKED:
        try:
            found[dist] = version(dist)
        except PackageNotFoundError:
            found[dist] = None
    return found


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file())
    return [path]


def hash_input(path: Path, *, chunk: int = 1 << 20) -> dict[str, Any]:
    """Return ``{"path", "sha256", "bytes", "files"}`` for a file or a folder's files.

    A folder's hash covers each file's relative path and content, in sorted order.
    """
    digest = hashlib.sha256()
    total = 0
    files = _files_of(path)
    for f in files:
        if path.is_dir():
            digest.update(str(f.relative_to(path)).encode())
        with f.open("rb") as fh:
            while block := fh.read(chunk):
                digest.update(block)
                total += len(block)
    return {"path": str(path.resolve()), "sha256": digest.hexdigest(), "bytes": total, "files": len(files)}


def build(
    *,
    command: str,
    argv: Sequence[str],
    parameters: dict[str, Any],
    inputs: Iterable[Path],
    outputs: Iterable[str],
    steps: Iterable[Step],
    started: str,
    seconds: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Assemble a manifest dictionary (JSON-serialisable).

    Parameters
    ----------
    command : str
        Subcommand name, e.g. ``"run"``.
    argv : sequence of str
        Arguments as given.
    parameters : dict
        Resolved parameters of the run.
    inputs : iterable of pathlib.Path
        Input files or folders; each is hashed.
    outputs : iterable of str
        Output file names relative to the output folder.
    steps : iterable of Step
        Provenance of the case.
    started : str
        ISO 8601 UTC start time.
    seconds : float
        Total wall-clock time.
    extra : dict, optional
        Additional top-level entries.

    """
    manifest: dict[str, Any] = {
        "tool": "mriquant",
        "command": command,
        "argv": list(argv),
        "started": started,
        "seconds": round(seconds, 3),
        "versions": versions(),
        "platform": {"system": platform.system(), "machine": platform.machine(), "python": sys.version.split()[0]},
        "parameters": parameters,
        "inputs": [hash_input(Path(p)) for p in inputs],
        "outputs": sorted(outputs),
        "steps": [s.as_dict() for s in steps],
    }
    if extra:
        manifest.update(extra)
    return manifest
