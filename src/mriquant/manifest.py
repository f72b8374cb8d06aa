"""Run manifests: what ran, on what, with which versions, thread counts, parameters and timings.

Every command that writes outputs also writes ``manifest.json``; the fields are
read back by tests and by the report's provenance section.
"""

from __future__ import annotations

import hashlib
import os
import platform
import sys
from collections.abc import Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from mriquant.core.case import Step

#: Distributions whose versions every manifest records: every runtime dependency whose version can change an
#: output (numbers, images, DICOM objects or the report), i.e. all of ``[project] dependencies`` in
#: pyproject.toml except ``rich`` (the progress display), plus matplotlib and jinja2, which draw the report.
TRACKED = (
    "numpy",
    "scipy",
    "nibabel",
    "pydicom",
    "pylibjpeg",
    "pylibjpeg-libjpeg",
    "pylibjpeg-openjpeg",
    "pylibjpeg-rle",
    "pyjpegls",
    "pynrrd",
    "SimpleITK",
    "antspyx",
    "scikit-image",
    "highdicom",
    "nilearn",
    "torch",
    "matplotlib",
    "jinja2",
)
#: Environment variables that set thread counts of the numeric libraries (read, never written).
THREAD_VARIABLES = ("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


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


def threads() -> dict[str, Any]:
    """Thread counts in effect: multi-threaded sums make results differ in the last digits between counts.

    Returns
    -------
    dict
        ``cpu_count``; ``torch`` (``torch.get_num_threads()``) and ``SimpleITK`` (its global default
        number of threads), each None when the library was not loaded by this run (so it did no work);
        and the environment variables of :data:`THREAD_VARIABLES` (None when unset). ANTsPy's ITK reads
        ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` when it starts, else uses every core.

    """
    torch = sys.modules.get("torch")
    sitk = sys.modules.get("SimpleITK")
    found: dict[str, Any] = {
        "cpu_count": os.cpu_count(),
        "torch": int(torch.get_num_threads()) if torch is not None else None,
        "SimpleITK": int(sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()) if sitk is not None else None,
    }
    found.update({name: os.environ.get(name) for name in THREAD_VARIABLES})
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
        "threads": threads(),
        "platform": {"system": platform.system(), "machine": platform.machine(), "python": sys.version.split()[0]},
        "parameters": parameters,
        "inputs": [hash_input(Path(p)) for p in inputs],
        "outputs": sorted(outputs),
        "steps": [s.as_dict() for s in steps],
    }
    if extra:
        manifest.update(extra)
    return manifest
