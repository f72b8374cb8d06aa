"""N4 bias-field correction, the Image <-> ANTs bridge, foreground masks and NLM denoising.

N4 runs on 3 mm phantoms with ``shrink=2`` (a 6 mm fit grid, like ``shrink=4`` on a 1.5 mm scan) to keep
the suite fast; the 1 mm defaults are measured in ``bench/n4.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from scipy import ndimage

from mriquant.core.ants_bridge import ants_affine, from_ants, to_ants
from mriquant.core.case import Case
from mriquant.core.errors import GeometryError, InputError, MriquantError
from mriquant.core.image import Image, LabelImage
from mriquant.preprocess.bias import N4Result, foreground_mask, n4, n4_step
from mriquant.preprocess.denoise import NlmOptions, denoise_step, estimate_noise_sigma, nlm
from mriquant.testing import make_phantom

ants = pytest.importorskip("ants")

SPACING = (3.0, 3.0, 3.0)


def _oblique_flipped_affine() -> np.ndarray:
    angle = np.deg2rad(17.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    tilt = np.array([[1, 0, 0], [0, np.cos(0.3), -np.sin(0.3)], [0, np.sin(0.3), np.cos(0.3)]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ tilt @ np.diag([-1.5, 2.0, -3.0])  # flipped first and last axes
    affine[:3, 3] = [12.5, -40.25, 7.0]
    return affine


def test_ants_round_trip_oblique_flipped() -> None:
    rng = np.random.default_rng(3)
    image = Image(rng.normal(size=(5, 6, 7)).astype(np.float32), _oblique_flipped_affine(), {"source": "obl"})
    converted = to_ants(image)
    back = from_ants(converted, image)
    assert np.array_equal(back.array, image.array)
    assert np.array_equal(back.affine, image.affine)
    assert back.meta == image.meta
    np.testing.assert_allclose(ants_affine(converted), image.affine, atol=1e-9)
    # ANTs' physical point of a voxel is the RAS world point with x and y negated (LPS)
    world = image.affine @ np.array([1.0, 2.0, 3.0, 1.0])
    lps = ants.transform_index_to_physical_point(converted, (1, 2, 3))
    np.testing.assert_allclose(lps, world[:3] * [-1, -1, 1], atol=1e-6)


def test_from_ants_off_grid_keeps_ants_geometry() -> None:
    image = Image(np.ones((4, 4, 4), np.float32), _oblique_flipped_affine())
    shrunk = ants.resample_image(to_ants(image), (2, 2, 2), use_voxels=True, interp_type=0)
    out = from_ants(shrunk, image)
    assert out.shape == (2, 2, 2)
    np.testing.assert_allclose(out.affine, ants_affine(shrunk), atol=1e-12)


@dataclass
class BiasCase:
    image: Image
    true_field: np.ndarray
    clean: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    result: N4Result


def _phantom_with_truth(
    seed: int, orientation: str = "RAS"
) -> tuple[Image, np.ndarray, np.ndarray, LabelImage, LabelImage]:
    kwargs: dict[str, Any] = {"spacing": SPACING, "seed": seed, "orientation": orientation}
    noisy = make_phantom(**kwargs)
    biased = make_phantom(noise=0.0, **kwargs).image.array
    flat = make_phantom(noise=0.0, bias=0.0, **kwargs).image.array
    true_field = np.where(flat > 0, biased / np.maximum(flat, 1e-6), 1.0)
    return noisy.image, true_field, biased, noisy.tissue, noisy.brain_mask


@pytest.fixture(scope="module")
def corrected() -> BiasCase:
    image, true_field, clean, tissue, brain = _phantom_with_truth(seed=0)
    result = n4(image, shrink=2, return_field=True)
    wm = ndimage.binary_erosion(tissue.array == 3)
    return BiasCase(image, true_field, clean, wm, brain.array > 0, result)


def _cov(array: np.ndarray, region: np.ndarray) -> float:
    values = array[region].astype(np.float64)
    return float(values.std() / values.mean())


def test_n4_lowers_wm_cov(corrected: BiasCase) -> None:
    before = _cov(corrected.image.array, corrected.wm)
    after = _cov(corrected.result.corrected.array, corrected.wm)
    # measured 0.062 -> 0.040 (noise alone: 0.0375 = 3 % of the brightest tissue over WM's 0.8)
    assert after < 0.75 * before
    assert after < 0.046


def test_n4_field_matches_truth(corrected: BiasCase) -> None:
    field = corrected.result.field
    assert field is not None
    brain = corrected.brain
    r = np.corrcoef(np.log(field.array[brain]), np.log(corrected.true_field[brain]))[0, 1]
    assert r > 0.9  # measured 0.944
    residual = _cov(corrected.true_field / field.array, corrected.wm)
    assert residual < 0.35 * _cov(corrected.true_field, corrected.wm)  # measured 0.0078 vs 0.048


def test_n4_output_on_native_grid(corrected: BiasCase) -> None:
    out, field, image = corrected.result.corrected, corrected.result.field, corrected.image
    assert field is not None
    for result in (out, field):
        assert result.shape == image.shape
        assert np.array_equal(result.affine, image.affine)
        assert result.array.dtype == np.float32
    np.testing.assert_allclose(out.array * field.array, image.array, rtol=1e-5, atol=1e-3)
    fit = (foreground_mask(image).array > 0) & (image.array > 0)
    assert abs(np.exp(np.log(field.array[fit]).mean()) - 1.0) < 1e-4


def test_n4_mask_restricted_lia_with_zeros_and_negatives() -> None:
    image, true_field, _, tissue, brain = _phantom_with_truth(seed=1, orientation="LIA")
    array = image.array.copy()
    outside = brain.array == 0
    array[outside & (array < 60)] = 0.0
    array[0, :4, :4] = -25.0
    result = n4(image.with_array(array), mask=brain, shrink=2, return_field=True)
    assert result.field is not None
    assert np.array_equal(result.corrected.affine, image.affine)
    assert np.all(result.corrected.array[array == 0] == 0)
    assert np.all(result.corrected.array[0, :4, :4] < 0)
    inside = brain.array > 0
    r = np.corrcoef(np.log(result.field.array[inside]), np.log(true_field[inside]))[0, 1]
    assert r > 0.9  # measured 0.966
    wm = ndimage.binary_erosion(tissue.array == 3)
    assert _cov(result.corrected.array, wm) < 0.75 * _cov(array, wm)


def test_n4_rejects_constant_image() -> None:
    image = Image(np.full((24, 24, 24), 7.0, np.float32), np.eye(4), {"source": "flat.nii.gz"})
    with pytest.raises(MriquantError, match=r"Expected .*varying.*flat\.nii\.gz"):
        n4(image)
    with pytest.raises(InputError, match="N4 mask"):
        n4(image, mask=LabelImage(np.ones((24, 24, 24), np.uint8), np.eye(4)))


def test_n4_rejects_mask_on_other_grid_and_bad_options() -> None:
    image = Image(np.random.default_rng(0).uniform(1, 2, (24, 24, 24)).astype(np.float32), np.eye(4))
    with pytest.raises(GeometryError, match="resample the mask"):
        n4(image, mask=LabelImage(np.ones((24, 24, 24), np.uint8), np.diag([2.0, 2.0, 2.0, 1.0])))
    with pytest.raises(InputError, match="shrink"):
        n4(image, shrink=8)


def test_n4_step_records_and_sets_images() -> None:
    image = make_phantom(spacing=SPACING, seed=2).image
    case = Case(image)
    out = n4_step(case, save_field=True, shrink=2, iterations=(5, 5))
    assert "preproc" not in case.images and case.provenance == []
    assert set(out.images) == {"preproc", "bias_field"}
    assert out.image is image
    step = out.provenance[-1]
    assert step.name == "n4"
    assert step.params["shrink"] == 2 and tuple(step.params["iterations"]) == (5, 5)
    assert step.params["mask"] == "foreground"
    brain = make_phantom(spacing=SPACING, seed=2).brain_mask
    masked = n4_step(Case(image, labels={"brain_mask": brain}), shrink=2, iterations=(5,))
    assert masked.provenance[-1].params["mask"] == "brain_mask" and "bias_field" not in masked.images
    with pytest.raises(InputError, match="option names"):
        n4_step(case, shrinking=2)


def test_foreground_mask_covers_head_with_neck() -> None:
    phantom = make_phantom(spacing=SPACING, seed=0, neck=True)
    head = make_phantom(spacing=SPACING, seed=0, noise=0.0, bias=0.0).image.array > 5.0
    mask = foreground_mask(phantom.image).array > 0
    assert mask.dtype == bool and np.array_equal(foreground_mask(phantom.image).affine, phantom.image.affine)
    assert (mask & head).sum() / head.sum() > 0.97
    assert (mask & ~head).sum() / head.sum() < 0.05
    assert (mask & (phantom.brain_mask.array > 0)).sum() == (phantom.brain_mask.array > 0).sum()


# --------------------------------------------------------------------------- denoising


def test_estimate_noise_sigma_on_phantom() -> None:
    for noise in (0.01, 0.05):
        phantom = make_phantom(spacing=(2.0, 2.0, 2.0), seed=0, noise=noise)
        sigma = estimate_noise_sigma(phantom.image, phantom.brain_mask)
        assert sigma == pytest.approx(noise * 1000.0, rel=0.1)  # measured within 2 %


def _wm_snr(array: np.ndarray, wm: np.ndarray) -> float:
    return float(array[wm].mean() / array[wm].std())


@pytest.mark.parametrize(("method", "gain"), [("skimage", 2.5), ("ants", 1.6)])
def test_nlm_raises_wm_snr_inside_mask_only(method: str, gain: float) -> None:
    phantom = make_phantom(spacing=SPACING, seed=0, bias=0.0)
    wm = ndimage.binary_erosion(phantom.tissue.array == 3)
    out = nlm(phantom.image, mask=phantom.brain_mask, options=NlmOptions(method=method))  # type: ignore[arg-type]
    outside = phantom.brain_mask.array == 0
    assert np.array_equal(out.array[outside], phantom.image.array[outside])
    assert np.array_equal(out.affine, phantom.image.affine)
    # measured at 3 mm: skimage 26 -> 104 (x4.0), ants 26 -> 58 (x2.2)
    assert _wm_snr(out.array, wm) > gain * _wm_snr(phantom.image.array, wm)


def test_denoise_step_records() -> None:
    phantom = make_phantom(spacing=SPACING, seed=0)
    case = Case(phantom.image, labels={"brain_mask": phantom.brain_mask})
    out = denoise_step(case, mask_key="brain_mask")
    assert out.provenance[-1].name == "denoise" and out.provenance[-1].params["mask"] == "brain_mask"
    assert out.images["preproc"].meta["noise_sigma"] == pytest.approx(30.0, rel=0.15)
