"""The synthetic phantom: its truth is consistent and its options are honoured."""

from __future__ import annotations

import json
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mriquant.core.geometry import reorient
from mriquant.core.image import Image, LabelImage
from mriquant.io import read_image, read_labels
from mriquant.testing import (
    MEANS,
    ORIENTATION_CODES,
    Phantom,
    PhantomError,
    PhantomSpec,
    make_phantom,
    write_phantom,
)

#: Small, fast phantoms for option sweeps (4 mm voxels).
FAST = PhantomSpec(spacing=(4.0, 4.0, 4.0))

LEFT_IDS = (2, 3, 4, 10, 11, 12)
RIGHT_IDS = (41, 42, 43, 49, 50, 51)
#: FreeSurfer id -> tissue class it belongs to.
STRUCTURE_TISSUE = {24: 1, 4: 1, 43: 1, 3: 2, 42: 2, 10: 2, 49: 2, 11: 2, 50: 2, 12: 2, 51: 2, 2: 3, 41: 3}


def world_x(image: Image) -> np.ndarray:
    """World x (RAS+ mm) of every voxel centre, grid-shaped."""
    ijk = np.indices(image.shape).reshape(3, -1)
    return (image.affine[0, :3] @ ijk + image.affine[0, 3]).reshape(image.shape)


def interior(mask: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` one voxel away from its boundary (no partial volume)."""
    return ndimage.binary_erosion(mask)


def clean(**overrides: object) -> Phantom:
    """A 2 mm phantom without noise or bias."""
    return make_phantom(PhantomSpec(noise=0.0, bias=0.0), **overrides)


# ---------------------------------------------------------------------------
# Truth is consistent
# ---------------------------------------------------------------------------


def test_truth_maps_share_the_image_grid(phantom: Phantom) -> None:
    for truth in (phantom.tissue, phantom.structures, phantom.brain_mask):
        assert isinstance(truth, LabelImage)
        assert truth.same_grid(phantom.image, atol=0.0)
    assert isinstance(phantom.image, Image) and not isinstance(phantom.image, LabelImage)


def test_tissue_labels_and_volumes_are_plausible(phantom: Phantom) -> None:
    assert phantom.tissue.labels == [1, 2, 3]
    volumes = phantom.tissue_volumes_ml()
    icv = sum(volumes.values())
    assert 1200 < icv < 1900, volumes
    assert 0.10 < volumes["CSF"] / icv < 0.30, volumes
    assert 0.30 < volumes["GM"] / icv < 0.55, volumes
    assert 0.30 < volumes["WM"] / icv < 0.55, volumes


def test_brain_mask_is_tissue_above_zero(phantom: Phantom) -> None:
    assert phantom.brain_mask.array.dtype == np.uint8
    np.testing.assert_array_equal(phantom.brain_mask.array, phantom.tissue.array > 0)


def test_brain_mask_is_one_closed_blob_inside_the_head(phantom: Phantom) -> None:
    mask = phantom.brain_mask.array > 0
    _, n = ndimage.label(mask)
    assert n == 1
    filled = ndimage.binary_fill_holes(mask)
    assert filled.sum() == mask.sum()  # no holes: ventricles and nuclei are inside the brain
    border = np.zeros_like(mask)
    border[[0, -1]], border[:, [0, -1]], border[:, :, [0, -1]] = True, True, True
    assert not np.any(mask & border)


def test_structures_match_tissue_classes(phantom: Phantom) -> None:
    structures, tissue = phantom.structures.array, phantom.tissue.array
    assert set(phantom.structures.labels) == set(STRUCTURE_TISSUE)
    for label, cls in STRUCTURE_TISSUE.items():
        assert np.all(tissue[structures == label] == cls), label
    np.testing.assert_array_equal(structures > 0, tissue > 0)


def test_structures_lie_in_their_hemisphere(phantom: Phantom) -> None:
    x = world_x(phantom.structures)
    structures = phantom.structures.array
    for left, right in zip(LEFT_IDS, RIGHT_IDS, strict=True):
        assert np.all(x[structures == left] < 0), left
        assert np.all(x[structures == right] >= 0), right
        n_left, n_right = np.count_nonzero(structures == left), np.count_nonzero(structures == right)
        assert 0.7 < n_left / n_right < 1.4, (left, n_left, right, n_right)  # both sides present


def test_deep_structures_have_plausible_volumes(phantom: Phantom) -> None:
    vox = phantom.structures.voxel_volume_ml
    counts = np.bincount(phantom.structures.array.ravel(), minlength=52)
    for label, (lo, hi) in {10: (2, 7), 11: (1, 5), 12: (2, 7), 4: (2, 12)}.items():
        assert lo < counts[label] * vox < hi, (label, counts[label] * vox)


@pytest.mark.parametrize(
    ("contrast", "order"),
    [("T1", (3, 2, 1)), ("T2", (1, 2, 3)), ("PD", (1, 2, 3))],
)
def test_contrast_ordering_inside_truth_masks(contrast: str, order: tuple[int, int, int]) -> None:
    ph = make_phantom(contrast=contrast)
    img, tissue = ph.image.array, ph.tissue.array
    means = [float(img[interior(tissue == label)].mean()) for label in order]
    assert means[0] > means[1] > means[2], (contrast, order, means)


def test_t1_skull_is_dark_and_scalp_fat_bright() -> None:
    ph = clean(contrast="T1")
    img, brain = ph.image.array, ph.brain_mask.array > 0
    wm = float(img[interior(ph.tissue.array == 3)].mean())
    shell = ndimage.binary_dilation(brain, iterations=3) & ~ndimage.binary_dilation(brain, iterations=2)
    assert float(np.median(img[shell])) < 0.3 * wm  # skull, 4-6 mm outside the brain
    assert img.max() >= 0.99 * ph.spec.scale > wm  # fat is the brightest tissue


def test_clean_image_holds_the_tissue_means_inside_and_blends_at_edges() -> None:
    ph = clean(contrast="T1")
    img, tissue = ph.image.array, ph.tissue.array
    wm_mean = MEANS["T1"][7] * ph.spec.scale
    deep_wm = img[interior(interior(tissue == 3))]
    # thin slivers between voxel centres may still blend in a few voxels
    assert np.mean(np.abs(deep_wm - wm_mean) < 1e-3 * wm_mean) > 0.999
    edge = (tissue == 3) & ~interior(tissue == 3)
    partial = img[edge]
    assert np.mean((partial < wm_mean - 1) & (partial > MEANS["T1"][5] * ph.spec.scale)) > 0.2
    hard = clean(contrast="T1", partial_volume=False).image.array
    assert len(np.unique(hard)) <= len(MEANS["T1"])


# ---------------------------------------------------------------------------
# Seeds, bias and noise
# ---------------------------------------------------------------------------


def test_same_seed_gives_identical_phantoms(phantom: Phantom) -> None:
    again = make_phantom(phantom.spec)
    for name in ("image", "tissue", "structures", "brain_mask"):
        np.testing.assert_array_equal(getattr(again, name).array, getattr(phantom, name).array)
        np.testing.assert_array_equal(getattr(again, name).affine, getattr(phantom, name).affine)


def test_different_seeds_give_different_anatomy(phantom: Phantom) -> None:
    other = make_phantom(phantom.spec, seed=1)
    assert not np.array_equal(other.image.array, phantom.image.array)
    changed = np.mean(other.tissue.array != phantom.tissue.array)
    assert 0.005 < changed < 0.2  # a different head, not a different kind of head


def test_bias_field_has_the_requested_amplitude() -> None:
    flat, biased = clean(), clean(bias=0.2)
    head = flat.image.array > 0.05 * flat.spec.scale
    ratio = biased.image.array[head] / flat.image.array[head]
    assert ratio.min() >= 0.8 - 1e-4 and ratio.max() <= 1.2 + 1e-4
    assert ratio.min() < 0.9 and ratio.max() > 1.1
    field = np.where(head, biased.image.array / np.maximum(flat.image.array, 1e-6), np.nan)
    steps = np.abs(np.diff(field, axis=0))
    assert np.nanmax(steps) < 0.02  # smooth: under 2 % per 2 mm voxel


@pytest.mark.parametrize("kind", ["rician", "gaussian"])
def test_noise_level_is_a_fraction_of_the_brightest_tissue(kind: str) -> None:
    base, noisy = clean(), clean(noise=0.05, noise_kind=kind)
    wm = interior(interior(base.tissue.array == 3))
    residual = noisy.image.array[wm] - base.image.array[wm]
    sigma = 0.05 * base.spec.scale
    assert abs(residual.std() / sigma - 1) < 0.05
    background = base.image.array == 0
    if kind == "rician":
        assert noisy.image.array.min() >= 0
        rayleigh_mean = sigma * np.sqrt(np.pi / 2)
        assert abs(noisy.image.array[background].mean() / rayleigh_mean - 1) < 0.05
    else:
        assert abs(noisy.image.array[background].mean()) < 0.05 * sigma


# ---------------------------------------------------------------------------
# Grid options are honoured
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "int16", "uint16", "uint8"])
def test_dtype_is_honoured(dtype: str) -> None:
    ph = make_phantom(FAST, dtype=dtype)
    assert ph.image.array.dtype == np.dtype(dtype)
    reference = make_phantom(FAST).image.array * (ph.spec.scale / 1000.0)
    err = np.abs(ph.image.array.astype(np.float64) - reference)
    limit = np.iinfo(dtype).max if dtype != "float32" else np.inf
    assert np.all(err[reference < limit] <= 0.5 + 1e-3)


@pytest.mark.parametrize("code", ORIENTATION_CODES)
def test_orientation_is_honoured(code: str) -> None:
    ph = make_phantom(FAST, orientation=code)
    for image in (ph.image, ph.tissue, ph.structures, ph.brain_mask):
        assert "".join(nib.aff2axcodes(image.affine)) == code
    assert ph.image.axcodes == code


def test_shape_and_spacing_follow_the_orientation() -> None:
    spec = PhantomSpec(shape=(40, 50, 30), spacing=(3.0, 4.0, 5.0), orientation="PSR", rotation=(5, -3, 4))
    ph = make_phantom(spec)
    assert ph.image.shape == (50, 30, 40)
    np.testing.assert_allclose(ph.image.spacing, (4.0, 5.0, 3.0))
    centre = ph.image.affine @ np.r_[(np.array(ph.image.shape) - 1) / 2, 1]
    np.testing.assert_allclose(centre[:3], spec.center, atol=1e-9)
    assert ph.image.axcodes == "PSR"


def test_same_spec_in_two_orientations_is_the_same_anatomy() -> None:
    ras = make_phantom(FAST, orientation="RAS", spacing=(4.0, 3.0, 5.0))
    lia = make_phantom(FAST, orientation="LIA", spacing=(4.0, 3.0, 5.0))
    for name in ("image", "tissue", "structures", "brain_mask"):
        back = reorient(getattr(lia, name), "RAS")
        np.testing.assert_array_equal(back.array, getattr(ras, name).array)
        np.testing.assert_allclose(back.affine, getattr(ras, name).affine, atol=1e-9)


@pytest.mark.parametrize(
    "bad",
    [
        {"orientation": "RAR"},
        {"orientation": "XYZ"},
        {"dtype": "float16"},
        {"contrast": "FLAIR"},
        {"spacing": (1.0, 0.0, 1.0)},
        {"rotation": (50.0, 0.0, 0.0)},
        {"bias": 1.5},
        {"noise_kind": "poisson"},
    ],
)
def test_invalid_specs_are_rejected(bad: dict[str, object]) -> None:
    with pytest.raises(PhantomError, match="Expected"):
        PhantomSpec(**bad)


def test_spec_normalises_lists_and_lowercase_codes() -> None:
    spec = PhantomSpec(spacing=[1, 2, 3], orientation="lia")
    assert spec.spacing == (1.0, 2.0, 3.0) and spec.orientation == "LIA"
    assert json.loads(json.dumps(spec.as_dict()))["orientation"] == "LIA"


def test_make_phantom_is_fast_at_2mm() -> None:
    make_phantom()  # warm up imports
    start = time.perf_counter()
    make_phantom()
    assert time.perf_counter() - start < 2.0


# ---------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------


def test_write_phantom_round_trips(phantom: Phantom, phantom_files: dict[str, Path]) -> None:
    assert set(phantom_files) == {"image", "tissue", "structures", "brain_mask", "spec"}
    image = read_image(phantom_files["image"])
    np.testing.assert_array_equal(image.array, phantom.image.array)
    np.testing.assert_allclose(image.affine, phantom.image.affine, atol=1e-4)
    for name in ("tissue", "structures", "brain_mask"):
        labels = read_labels(phantom_files[name])
        np.testing.assert_array_equal(labels.array, getattr(phantom, name).array)
        assert nib.load(phantom_files[name]).header["intent_code"] == 1002
    spec = json.loads(phantom_files["spec"].read_text())
    assert PhantomSpec(**spec) == phantom.spec


def test_write_phantom_keeps_integer_dtype(tmp_path: Path) -> None:
    ph = make_phantom(FAST, dtype="int16")
    paths = write_phantom(ph, tmp_path, prefix="sub-01_")
    assert paths["image"].name == "sub-01_image.nii.gz"
    assert nib.load(paths["image"]).get_data_dtype() == np.int16
