"""Shared fixtures: the real-data folder, a synthetic phantom, and writers for every input format.

Real data lives outside the repository at ``../shared/data``; tests that need it
carry ``@pytest.mark.needs_data("sub/path", ...)`` and are skipped with a clear
reason when it is absent. Everything else runs on the seeded synthetic phantom
of :mod:`mriquant.testing`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mriquant.core.image import Image
from mriquant.testing import Phantom, PhantomSpec, make_phantom, write_phantom

DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data"
DATA_REASON = "../shared/data not present (real MRI data for development; see shared/data/README.md)"

#: Every format the writer helper knows, with the file ending it uses.
FORMAT_ENDINGS: dict[str, str] = {
    "nifti1": ".nii",
    "nifti1-gz": ".nii.gz",
    "nifti2": ".nii",
    "nifti2-gz": ".nii.gz",
    "mgh": ".mgh",
    "mgz": ".mgz",
    "nrrd": ".nrrd",
    "mha": ".mha",
    "mhd": ".mhd",
}

#: RAS+ <-> LPS (ITK) world coordinates: negate x and y.
LPS_FLIP = np.diag([-1.0, -1.0, 1.0])

ImageWriter = Callable[..., Path]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "needs_data(*paths): needs ../shared/data (and these paths inside it); skipped when absent",
    )


def missing_data(*paths: str) -> str | None:
    """Return why the real data is unusable (the skip reason), or None when it is all present."""
    if not DATA_DIR.is_dir():
        return DATA_REASON
    absent = [p for p in paths if not (DATA_DIR / p).exists()]
    if absent:
        return f"{', '.join(absent)} not present in ../shared/data (see shared/data/README.md)"
    return None


def pytest_runtest_setup(item: pytest.Item) -> None:
    for marker in item.iter_markers(name="needs_data"):
        reason = missing_data(*marker.args)
        if reason:
            pytest.skip(reason)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real-data folder ``../shared/data``; skips the test when it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(DATA_REASON)
    return DATA_DIR


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    """A 2 mm T1 phantom (seed 0, 3 % Rician noise, 20 % bias), shared by the session."""
    return make_phantom(PhantomSpec(contrast="T1", spacing=(2.0, 2.0, 2.0), seed=0))


@pytest.fixture(scope="session")
def phantom_files(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``phantom`` written as NIfTI: keys image, tissue, structures, brain_mask, spec."""
    return write_phantom(phantom, tmp_path_factory.mktemp("phantom"))


# ---------------------------------------------------------------------------
# Writers: an Image to any input format, geometry from its RAS+ affine
# ---------------------------------------------------------------------------


def _write_nifti(image: Image, path: Path, *, version: int) -> Path:
    cls = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    nii = cls(image.array, image.affine)
    nii.header.set_qform(image.affine, code=1)
    nii.header.set_sform(image.affine, code=1)
    nii.header.set_xyzt_units("mm", "sec")
    nib.save(nii, str(path))
    return path


def _write_mgh(image: Image, path: Path) -> Path:
    nib.save(nib.MGHImage(image.array, image.affine), str(path))
    return path


def itk_geometry(affine: np.ndarray) -> tuple[list[float], list[float], list[float]]:
    """Return ITK (spacing, origin, direction row-major) in LPS for a voxel -> RAS+ affine."""
    lps = LPS_FLIP @ affine[:3, :4]
    spacing = np.linalg.norm(lps[:, :3], axis=0)
    direction = lps[:, :3] / spacing
    return spacing.tolist(), lps[:, 3].tolist(), direction.ravel().tolist()


def _write_itk(image: Image, path: Path) -> Path:
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(np.ascontiguousarray(image.array.transpose(2, 1, 0)))
    spacing, origin, direction = itk_geometry(image.affine)
    itk.SetSpacing(spacing)
    itk.SetOrigin(origin)
    itk.SetDirection(direction)
    sitk.WriteImage(itk, str(path), useCompression=path.suffix != ".mhd")
    return path


def write_as(image: Image, folder: Path, fmt: str, *, name: str = "image") -> Path:
    """Write ``image`` to ``folder/name<ending>`` in format ``fmt`` (a key of FORMAT_ENDINGS).

    The voxel array is written as it is (dtype kept where the format allows);
    NRRD and MetaImage go through SimpleITK with the geometry converted to LPS.
    """
    path = Path(folder) / f"{name}{FORMAT_ENDINGS[fmt]}"
    if fmt.startswith("nifti"):
        return _write_nifti(image, path, version=2 if fmt.startswith("nifti2") else 1)
    if fmt in ("mgh", "mgz"):
        return _write_mgh(image, path)
    return _write_itk(image, path)


@pytest.fixture
def write_image_as() -> ImageWriter:
    """The :func:`write_as` helper: ``write_image_as(image, folder, "nrrd") -> Path``."""
    return write_as
