"""Core objects: Image validation, geometry, Case provenance, label tables, atomic writes."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mriquant.core.case import Case
from mriquant.core.errors import GeometryError, InputError, OutputError
from mriquant.core.geometry import isotropic_grid, reorient, resample_like, resample_to
from mriquant.core.image import Image, LabelImage
from mriquant.core.labels import BILATERAL_PAIRS, SUBCORTICAL_15, TISSUES, freesurfer
from mriquant.io import read_image, write_image
from mriquant.io.write import atomic_path, label_dtype, output_folder


def _img(shape: tuple[int, int, int] = (6, 7, 8), affine: np.ndarray | None = None) -> Image:
    arr = np.arange(np.prod(shape), dtype=np.float32).reshape(shape)
    return Image(arr, np.eye(4) if affine is None else affine, {"source": "t"})


def test_image_properties() -> None:
    aff = np.diag([2.0, 1.5, 3.0, 1.0])
    img = _img(affine=aff)
    assert img.shape == (6, 7, 8)
    assert img.spacing == (2.0, 1.5, 3.0)
    assert img.voxel_volume_ml == pytest.approx(9.0 / 1000)
    assert img.axcodes == "RAS"


@pytest.mark.parametrize(
    ("array", "affine", "error", "phrase"),
    [
        (np.zeros((3, 3)), np.eye(4), InputError, "3D image"),
        (np.zeros((3, 3, 3, 2)), np.eye(4), InputError, "--volume"),
        (np.zeros((3, 0, 3)), np.eye(4), InputError, "zero-length"),
        (np.zeros((3, 3, 3)), np.diag([1, 1, 0, 1.0]), GeometryError, "singular"),
        (np.zeros((3, 3, 3)), np.full((4, 4), np.nan), GeometryError, "finite"),
        (np.zeros((3, 3, 3)), np.eye(3), GeometryError, "4x4"),
    ],
)
def test_image_rejects_bad_data(array: np.ndarray, affine: np.ndarray, error: type, phrase: str) -> None:
    with pytest.raises(error, match=phrase):
        Image(array, affine)


def test_label_image_casts_and_rejects_fractions() -> None:
    lab = LabelImage(np.array([[[0.0, 2.0], [3.0, 17.0]]] * 2), np.eye(4))
    assert lab.array.dtype == np.int32 and lab.labels == [2, 3, 17]
    with pytest.raises(InputError, match="integer labels"):
        LabelImage(np.full((2, 2, 2), 0.5), np.eye(4))


def test_reorient_keeps_world_positions() -> None:
    aff = np.array([[0, 0, -2.0, 10], [1.0, 0, 0, -5], [0, 3.0, 0, 7], [0, 0, 0, 1]])
    img = _img(affine=aff)
    ras = reorient(img, "RAS")
    assert ras.axcodes == "RAS"
    # the world position of every voxel value is unchanged
    for value in (0.0, 17.0, float(img.array.max())):
        a = np.argwhere(img.array == value)[0]
        b = np.argwhere(ras.array == value)[0]
        np.testing.assert_allclose(aff @ [*a, 1], ras.affine @ [*b, 1])
    back = reorient(ras, img.axcodes)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.affine, img.affine)


def test_resample_identity_and_labels_stay_integer() -> None:
    lab = LabelImage(np.random.default_rng(0).integers(0, 5, (8, 8, 8)), np.eye(4))
    same = resample_like(lab, lab)
    np.testing.assert_array_equal(same.array, lab.array)
    half = resample_to(lab, (4, 4, 4), np.diag([2.0, 2.0, 2.0, 1.0]))
    assert np.issubdtype(half.array.dtype, np.integer)
    assert set(np.unique(half.array)) <= set(np.unique(lab.array))


def test_resample_linear_matches_shift() -> None:
    img = Image(np.tile(np.arange(10, dtype=np.float32)[:, None, None], (1, 4, 4)), np.eye(4))
    shifted = np.eye(4)
    shifted[0, 3] = 0.5
    out = resample_to(img, img.shape, shifted)
    np.testing.assert_allclose(out.array[2:8, 1, 1], np.arange(2, 8) + 0.5, atol=1e-5)


@pytest.mark.parametrize("error_mm", [0.0, 1e-9, -1e-9])
def test_resample_keeps_outer_slices_of_a_grid_equal_up_to_rounding(error_mm: float) -> None:
    """A grid whose outer voxel centres match the source's only up to float rounding keeps every slice."""
    rng = np.random.default_rng(0)
    affine = np.array([[-1.0, 0, 0, 10], [0, 0, 1.3, -5], [0, -1.7, 0, 7], [0, 0, 0, 1]])
    image = Image(rng.random((20, 30, 25)).astype(np.float32) + 1.0, affine)
    labels = LabelImage(rng.integers(1, 5, (20, 30, 25)), affine)
    ras = reorient(image, "RAS")
    target = ras.affine.copy()
    target[:3, 3] += error_mm
    np.testing.assert_allclose(resample_to(image, ras.shape, target).array, ras.array, atol=1e-5)
    np.testing.assert_array_equal(resample_to(labels, ras.shape, target).array, reorient(labels, "RAS").array)


def test_resample_fills_beyond_half_a_voxel_outside() -> None:
    img = Image(np.tile(np.arange(1, 11, dtype=np.float32)[:, None, None], (1, 4, 4)), np.eye(4))
    for shift, edge in [(0.4, 10.0), (0.6, -1.0), (-0.4, 1.0), (-0.6, -1.0)]:  # centres 0.4 / 0.6 voxel out
        moved = np.eye(4)
        moved[0, 3] = shift
        out = resample_to(img, img.shape, moved, fill=-1.0)
        assert out.array[-1 if shift > 0 else 0, 1, 1] == pytest.approx(edge)  # the edge value, or the fill
        lab = resample_to(LabelImage(img.array.astype(np.int16), np.eye(4)), img.shape, moved, fill=0)
        assert lab.array[-1 if shift > 0 else 0, 1, 1] == (0 if edge < 0 else edge)


def test_border_contact_names_anatomical_sides() -> None:
    from mriquant.core.geometry import border_contact_mm2, describe_contact

    affine = np.array([[-2.0, 0, 0, 0], [0, 0, 3.0, 0], [0, -1.5, 0, 0], [0, 0, 0, 1]])  # LIA: 2 x 1.5 x 3 mm
    mask = np.zeros((10, 12, 8), np.uint8)
    mask[3:6, 4:7, 2:5] = 1
    assert border_contact_mm2(LabelImage(mask, affine)) == {}
    mask[-1, 4:7, 2:5] = 1  # 9 voxels on the last face of axis 0 (pointing left): 1.5 x 3 mm each
    mask[2:4, 0, 2:5] = 1  # 6 voxels on the first face of axis 1 (pointing inferior): the superior side
    contact = border_contact_mm2(LabelImage(mask, affine))
    assert contact == pytest.approx({"left": 9 * 4.5, "superior": 6 * 6.0})
    assert describe_contact(contact) == "left (0.4 cm²), superior (0.4 cm²)"


def test_isotropic_grid_covers_field_of_view() -> None:
    img = _img((10, 10, 4), np.diag([1.0, 1.0, 5.0, 1.0]))
    shape, aff = isotropic_grid(img, 1.0)
    assert shape == (10, 10, 20)
    np.testing.assert_allclose(np.diag(aff)[:3], [1, 1, 1])


def test_case_records_steps_without_copying_arrays() -> None:
    case = Case(_img())
    with case.step("threshold", {"level": 3}) as params:
        params["voxels"] = 12
    assert [s.name for s in case.provenance] == ["threshold"]
    assert case.provenance[0].params == {"level": 3, "voxels": 12}
    assert case.provenance[0].seconds >= 0
    child = case.evolve()
    assert child.image.array is case.image.array
    child.provenance.append(case.provenance[0])
    assert len(case.provenance) == 1


def test_label_tables() -> None:
    fs = freesurfer()
    assert fs.by_id(53).name == "Right-Hippocampus"
    assert fs.by_name("left-thalamus").id == 10
    assert all(i in fs for i in SUBCORTICAL_15)
    assert all(a in fs and b in fs for a, b in BILATERAL_PAIRS)
    assert [t.name for t in TISSUES] == ["CSF", "GM", "WM"]
    with pytest.raises(InputError, match="known ids"):
        fs.by_id(9999)


def test_write_image_roundtrip_exact_affine(tmp_path: Path) -> None:
    aff = np.array([[0.9, 0.1, 0, -80], [-0.1, 0.9, 0, -100], [0, 0, 1.2, -60], [0, 0, 0, 1]])
    img = _img(affine=aff)
    path = write_image(img, tmp_path / "a.nii.gz")
    back = read_image(path)
    np.testing.assert_array_equal(back.array, img.array)
    np.testing.assert_allclose(back.affine, aff, atol=1e-6)
    assert nib.load(str(path)).get_data_dtype() == np.float32


def test_label_image_written_as_small_integers(tmp_path: Path) -> None:
    lab = LabelImage(np.array([[[0, 3], [2, 1]]] * 2, dtype=np.int32), np.eye(4))
    path = write_image(lab, tmp_path / "t.nii.gz")
    assert nib.load(str(path)).get_data_dtype() == np.uint8
    assert label_dtype(np.array([-1, 2000])) == np.int16


def test_atomic_path_leaves_nothing_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "x.json"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_output_folder_is_all_or_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(RuntimeError), output_folder(out) as staging:
        (staging / "a.txt").write_text("a")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with output_folder(out) as staging:
        (staging / "a.txt").write_text("a")
    assert (out / "a.txt").read_text() == "a"
    with pytest.raises(OutputError, match="--force"), output_folder(out):
        pass
