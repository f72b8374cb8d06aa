"""Geometry is sacred: every voxel-axis orientation converts onto its own grid and agrees in world space.

Real data: ``../shared/data/orientation`` holds one image stored in all 48
orientations. Synthetic: the phantom sampled in a sample of orientations, and
on an oblique grid compared by world coordinates.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mriquant.cli import main
from mriquant.core.geometry import reorient, resample_like
from mriquant.core.image import Image, LabelImage
from mriquant.io import read_image
from mriquant.testing import ORIENTATION_CODES, Phantom, PhantomSpec, make_phantom, write_phantom

ALL_CODES = list(ORIENTATION_CODES)
SAMPLE_CODES = ["LPS", "LIA", "PSR", "ASL", "IRP", "SAR", "RPI"]
ORIENTATION_DATA = "orientation/RAS.nii.gz"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def convert(src: Path, out: Path) -> nib.Nifti1Image:
    """Run ``mriquant convert`` in-process and return the written NIfTI."""
    assert main(["-q", "convert", str(src), str(out)]) == 0
    assert out.with_name(out.name.replace(".nii.gz", ".json")).is_file()
    return nib.load(out)


def assert_native_grid(out: nib.Nifti1Image, src: nib.Nifti1Image) -> None:
    """``out`` has ``src``'s shape, affine (qform and sform) and voxel values."""
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine, rtol=0, atol=1e-5)
    for which in ("qform", "sform"):
        matrix, code = getattr(out.header, f"get_{which}")(coded=True)
        assert code > 0, which
        np.testing.assert_allclose(matrix, src.affine, rtol=0, atol=1e-5, err_msg=which)
    np.testing.assert_array_equal(np.asarray(out.dataobj, np.float32), np.asarray(src.dataobj, np.float32))


def assert_same_world(image: Image, reference: Image) -> None:
    assert image.shape == reference.shape
    np.testing.assert_allclose(image.affine, reference.affine, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(image.array, reference.array)


def test_there_are_48_distinct_codes() -> None:
    assert len(set(ALL_CODES)) == 48 and ALL_CODES[0] == "RAS"
    assert {"RAS", "LPS", "LIA", "PSR"} <= set(ALL_CODES)


# ---------------------------------------------------------------------------
# Real data: one image in all 48 orientations
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ras_reference(data_dir: Path) -> Image:
    return read_image(data_dir / ORIENTATION_DATA)


@pytest.mark.needs_data(ORIENTATION_DATA)
@pytest.mark.parametrize("code", ALL_CODES)
def test_convert_keeps_each_orientation_on_its_native_grid(code: str, data_dir: Path, tmp_path: Path) -> None:
    src = data_dir / "orientation" / f"{code}.nii.gz"
    source = nib.load(src)
    assert "".join(nib.aff2axcodes(source.affine)) == code  # the file is what its name says
    out = convert(src, tmp_path / f"{code}.nii.gz")
    assert_native_grid(out, source)


@pytest.mark.needs_data(ORIENTATION_DATA)
@pytest.mark.parametrize("code", ALL_CODES)
def test_every_orientation_reoriented_to_ras_matches_ras(code: str, data_dir: Path, tmp_path: Path,
                                                         ras_reference: Image) -> None:
    out = tmp_path / f"{code}.nii.gz"
    convert(data_dir / "orientation" / f"{code}.nii.gz", out)
    image = reorient(read_image(out), "RAS")
    assert image.axcodes == "RAS"
    assert_same_world(image, ras_reference)


# ---------------------------------------------------------------------------
# Synthetic phantom: a sample of orientations, and an oblique grid
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ras_phantom() -> Phantom:
    return make_phantom(PhantomSpec(spacing=(2.0, 2.5, 3.0), orientation="RAS", seed=3))


@pytest.mark.parametrize("code", SAMPLE_CODES)
def test_phantom_orientations_convert_natively_and_agree_in_world(code: str, ras_phantom: Phantom,
                                                                  tmp_path: Path) -> None:
    ph = make_phantom(ras_phantom.spec, orientation=code)
    files = write_phantom(ph, tmp_path / "in")
    out = tmp_path / "out" / "image.nii.gz"
    assert_native_grid(convert(files["image"], out), nib.load(files["image"]))
    assert_same_world(reorient(read_image(out), "RAS"), ras_phantom.image)
    for name in ("tissue", "structures", "brain_mask"):
        assert_same_world(reorient(getattr(ph, name), "RAS"), getattr(ras_phantom, name))


@pytest.mark.parametrize("code", SAMPLE_CODES)
def test_phantom_orientations_resample_exactly_onto_each_other(code: str, ras_phantom: Phantom) -> None:
    ph = make_phantom(ras_phantom.spec, orientation=code)
    for name in ("tissue", "structures"):
        moved = resample_like(getattr(ph, name), getattr(ras_phantom, name))
        np.testing.assert_array_equal(moved.array, getattr(ras_phantom, name).array)
    image = resample_like(ph.image, ras_phantom.image)
    np.testing.assert_allclose(image.array, ras_phantom.image.array, rtol=1e-4, atol=1e-2)


@pytest.fixture(scope="module")
def oblique_pair() -> tuple[Phantom, Phantom]:
    """The same clean 1 mm head on a RAS grid and on an oblique LIA grid."""
    base = PhantomSpec(spacing=(1.0, 1.0, 1.0), noise=0.0, bias=0.0, neck=False, seed=5)
    return make_phantom(base), make_phantom(base, orientation="LIA", rotation=(10.0, -7.0, 6.0))


def test_oblique_phantom_keeps_its_orientation_code(oblique_pair: tuple[Phantom, Phantom]) -> None:
    _, oblique = oblique_pair
    assert oblique.image.axcodes == "LIA"
    columns = oblique.image.affine[:3, :3] / np.linalg.norm(oblique.image.affine[:3, :3], axis=0)
    assert np.all(np.abs(columns).max(axis=0) < 0.999)  # really oblique: no axis is aligned


def test_oblique_labels_resampled_by_world_coordinates_match(oblique_pair: tuple[Phantom, Phantom]) -> None:
    ras, oblique = oblique_pair
    truth = ras.tissue.array
    moved = resample_like(oblique.tissue, ras.tissue).array
    assert dice(moved > 0, truth > 0) > 0.95
    assert dice(moved >= 2, truth >= 2) > 0.95  # GM + WM
    assert dice(moved == 3, truth == 3) > 0.95
    # thin layers lose more to nearest-neighbour resampling between rotated grids
    assert dice(moved == 2, truth == 2) > 0.85
    assert dice(moved == 1, truth == 1) > 0.8
    structures = resample_like(oblique.structures, ras.structures).array
    for label in (4, 43, 10, 49, 11, 50, 12, 51):
        assert dice(structures == label, ras.structures.array == label) > 0.9, label


def test_a_rotation_sign_error_would_be_caught(oblique_pair: tuple[Phantom, Phantom]) -> None:
    """The thresholds above are meaningful: the wrong rotation sign fails them by far."""
    ras, oblique = oblique_pair
    right = oblique.tissue.affine
    wrong = make_phantom(oblique.spec, rotation=(-10.0, 7.0, -6.0), shape=(4, 4, 4)).image.affine
    centre = (np.array(oblique.tissue.shape) - 1) / 2  # keep the grid centre where it was
    wrong[:3, 3] = right[:3, :3] @ centre + right[:3, 3] - wrong[:3, :3] @ centre
    mislabelled = LabelImage(oblique.tissue.array, wrong)
    moved = resample_like(mislabelled, ras.tissue).array
    assert dice(moved == 3, ras.tissue.array == 3) < 0.8
