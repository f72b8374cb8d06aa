"""The one door to ANTsPy: the thread setting that makes ANTs reproducible, and Image <-> ANTs images.

Reproducibility
---------------
ITK (under ANTsPy) splits a registration metric's sums over its threads, and with more than one
thread the partial sums meet in whatever order the threads finish: two runs of the same
registration on the same scan then differ (measured on the demo T1 with 2 threads: the MNI
correlation 0.6486 vs 0.6472, 3 353 brain-mask voxels, 24 423 structure voxels and an eTIV 13 mL
apart). With one ITK thread every ANTs call is bit-identical from run to run. N4 is the exception: its
result depends on the thread count but not on the order threads finish (identical in repeated runs
with 2 threads), so :func:`run_with_itk_threads` runs it in a child process with a fixed count,
:data:`N4_THREADS`: reproducible, on any machine, and about twice as fast as one thread (demo T1:
19 vs 34 s for the N4 fit).

ITK reads ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` once, when its first filter runs (setting it
later has no effect; checked in-process). ANTsPy has no thread argument, so :func:`ants_module`
sets that variable to ``"1"`` before handing out the module, unless the user set it: a value they
chose is kept and recorded as not reproducible. Every ANTs call in mriquant goes through
:func:`ants_module`; :func:`itk_threads` says what is in effect for the manifest.

Geometry
--------
ANTs images live in LPS+ physical space while mriquant affines are RAS+, so :func:`to_ants` and
:func:`from_ants` negate the first two rows of the affine on the way in and out.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from mriquant.core.image import Image

if TYPE_CHECKING:
    import ants

__all__ = [
    "ITK_THREADS_ENV", "N4_THREADS", "ants_affine", "ants_module", "ants_seed", "from_ants", "itk_threads",
    "run_with_itk_threads", "to_ants",
]  # fmt: skip

#: The environment variable ITK reads (once) for its default thread count.
ITK_THREADS_ENV = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
#: ITK threads of N4's child process (:func:`run_with_itk_threads`); fixed, so results do not depend on the machine.
N4_THREADS = 2
#: The thread count the user set before mriquant was imported (None: mriquant chooses).
_USER_THREADS = os.environ.get(ITK_THREADS_ENV)
#: RAS+ <-> LPS+ flip (its own inverse).
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Affines closer than this (mm) to ``like``'s are snapped to it by :func:`from_ants`.
_SNAP_ATOL = 1e-6


def ants_module() -> ModuleType:
    """Return the ``ants`` module with ITK pinned to one thread (unless the user chose a count).

    Call it instead of ``import ants`` so that the first ANTs filter of the process starts with
    the reproducible setting (module docstring).
    """
    os.environ.setdefault(ITK_THREADS_ENV, "1")
    import ants

    module: ModuleType = ants
    return module


@contextmanager
def ants_seed(seed: int) -> Iterator[None]:
    """Make ``ants.registration`` pass ``--random-seed seed`` inside the block.

    ANTsPy 0.6.3 has no ``random_seed`` argument (extra keyword arguments are silently ignored);
    its only hook is the module attribute ``ants.config._random_seed``, set here for the block and
    restored afterwards.
    """
    config = ants_module().config
    previous = config._random_seed
    config._random_seed = int(seed)
    try:
        yield
    finally:
        config._random_seed = previous


def run_with_itk_threads(function: Callable[..., Any], *args: Any, threads: int) -> Any:
    """Run ``function(*args)`` with ``threads`` ITK threads, in a fresh Python process.

    ITK reads its thread count once per process, hence the child. It is started with ``subprocess`` (not
    ``multiprocessing``, which would re-import the caller's main script: a script without a ``__main__``
    guard would run again). Only for ANTs calls whose result does not depend on the order threads finish
    (N4). ``function`` must be a module-level function; it and its arguments travel by pickle, and a
    :class:`MriquantError` it raises is raised here. A thread count the user set is kept: the call then
    runs in this process.
    """
    if _USER_THREADS is not None:
        return function(*args)
    with tempfile.TemporaryDirectory(prefix="mriquant-itk-") as tmp:
        job, result = Path(tmp) / "job.pkl", Path(tmp) / "result.pkl"
        job.write_bytes(pickle.dumps((function, args)))
        entry = "from mriquant.core.ants_bridge import _child; _child()"
        command = [sys.executable, "-c", entry, str(job), str(result)]
        # the child imports the same mriquant as this process, even one put on sys.path by a script
        env = {**os.environ, ITK_THREADS_ENV: str(threads), "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0 or not result.is_file():
            raise RuntimeError(f"ITK child process for {function.__name__} failed ({done.returncode}):\n{done.stderr}")
        ok, value = pickle.loads(result.read_bytes())
    if not ok:
        raise value
    return value


def _child() -> None:
    """Entry point of :func:`run_with_itk_threads`' child: ``argv[1]`` holds the job, ``argv[2]`` gets the result."""
    from mriquant.core.errors import MriquantError

    function, args = pickle.loads(Path(sys.argv[1]).read_bytes())
    try:
        outcome: tuple[bool, Any] = (True, function(*args))
    except MriquantError as exc:
        outcome = (False, exc)
    Path(sys.argv[2]).write_bytes(pickle.dumps(outcome))


def itk_threads() -> dict[str, Any]:
    """The ITK thread count in effect for ANTs, and whether it makes runs bit-reproducible.

    Returns
    -------
    dict
        ``{"itk_threads": "1", "reproducible": True}``; ``itk_threads`` is ``None`` before any
        ANTs call of this process (nothing set yet: :func:`ants_module` sets it).
    """
    value = os.environ.get(ITK_THREADS_ENV)
    return {"itk_threads": value, "reproducible": value in (None, "1")}


def to_ants(image: Image) -> ants.ANTsImage:
    """Convert an :class:`Image` to a float32 ``ants.ANTsImage`` in LPS+ physical space.

    Parameters
    ----------
    image : Image
        Array ``(I, J, K)`` and voxel->RAS+ affine in mm.

    Returns
    -------
    ants.ANTsImage
        Same voxel order (ANTs index ``(i, j, k)`` is array index ``(i, j, k)``); origin, spacing
        (mm) and direction cosines in LPS+.

    Examples
    --------
    >>> ants_img = to_ants(Image(np.zeros((4, 5, 6), np.float32), np.eye(4)))  # doctest: +SKIP
    >>> ants_img.origin  # doctest: +SKIP
    (-0.0, -0.0, 0.0)

    """
    lps = _LPS @ image.affine
    spacing = np.sqrt((lps[:3, :3] ** 2).sum(axis=0))
    direction = lps[:3, :3] / spacing
    array = np.ascontiguousarray(image.array, dtype=np.float32)
    return ants_module().from_numpy(
        array, origin=tuple(map(float, lps[:3, 3])), spacing=tuple(map(float, spacing)), direction=direction
    )


def ants_affine(ants_img: ants.ANTsImage) -> npt.NDArray[np.float64]:
    """Return the 4x4 voxel->RAS+ affine (mm) of an ``ants.ANTsImage``."""
    lps = np.eye(4)
    direction = np.asarray(ants_img.direction, dtype=np.float64).reshape(3, 3)
    lps[:3, :3] = direction * np.asarray(ants_img.spacing, dtype=np.float64)
    lps[:3, 3] = np.asarray(ants_img.origin, dtype=np.float64)
    return np.asarray(_LPS @ lps, dtype=np.float64)


def from_ants(ants_img: ants.ANTsImage, like: Image) -> Image:
    """Convert an ``ants.ANTsImage`` back to an image of ``like``'s type and metadata.

    Parameters
    ----------
    ants_img : ants.ANTsImage
        A 3D scalar ANTs image.
    like : Image
        Supplies the type (Image or LabelImage) and metadata. When ``ants_img`` lies on
        ``like``'s grid (within 1e-6 mm) the result carries ``like``'s affine exactly, so
        conversions never drift.

    Returns
    -------
    Image
        Array ``(I, J, K)`` and the RAS+ affine of ``ants_img``.

    """
    array = ants_img.numpy()
    affine = ants_affine(ants_img)
    if tuple(array.shape) == like.shape and np.allclose(affine, like.affine, rtol=0.0, atol=_SNAP_ATOL):
        affine = like.affine.copy()
    return type(like)(array, affine, dict(like.meta))
