"""Intensity normalisation: WM peak, z-score, Nyúl-Udupa landmarks (learn, apply, save/load, shipped)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mriquant.core.case import Case
from mriquant.core.errors import GeometryError, InputError
from mriquant.core.image import Image, LabelImage
from mriquant.preprocess.normalize import (
    DEFAULT_PERCENTILES,
    NyulLandmarks,
    learn_nyul,
    normalize_step,
    nyul,
    shipped_landmarks,
    white_matter_mode,
    wm_peak,
    zscore,
)
from mriquant.testing import Phantom, make_phantom

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
MICCAI = DATA / "miccai2012" / "train"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return make_phantom(spacing=(2.0, 2.0, 2.0), seed=0, bias=0.0)


def _rescaled(phantom: Phantom, gain: float, offset: float) -> Image:
    return phantom.image.with_array((phantom.image.array * gain + offset).astype(np.float32))


def test_zscore_mean_zero_sd_one(phantom: Phantom) -> None:
    out = zscore(phantom.image, phantom.brain_mask)
    values = out.array[phantom.brain_mask.array > 0].astype(np.float64)
    assert abs(values.mean()) < 1e-4
    assert abs(values.std() - 1.0) < 1e-4
    assert out.array.dtype == np.float32 and np.array_equal(out.affine, phantom.image.affine)


@pytest.mark.parametrize("bias", [0.0, 0.2])
def test_wm_peak_maps_wm_mean_to_target(bias: float) -> None:
    ph = make_phantom(spacing=(2.0, 2.0, 2.0), seed=0, bias=bias)
    out = wm_peak(_rescaled(ph, 0.37, 0.0), ph.brain_mask, target=110.0)
    wm_mean = float(out.array[ph.tissue.array == 3].mean())
    assert wm_mean == pytest.approx(110.0, rel=0.05)  # measured 108.8 (no bias), 108.1 (20 % bias)
    assert out.meta["wm_mode"] == pytest.approx(0.37 * 800.0, rel=0.03)


def test_white_matter_mode_picks_brightest_prominent_peak() -> None:
    rng = np.random.default_rng(0)
    # tall GM peak, smaller but prominent WM peak, a few very bright voxels that must not win
    values = np.concatenate([rng.normal(60, 4, 60000), rng.normal(100, 4, 30000), rng.normal(200, 2, 300)])
    assert white_matter_mode(values) == pytest.approx(100.0, abs=1.5)


def test_nyul_maps_training_percentiles_to_landmarks(phantom: Phantom) -> None:
    images = [_rescaled(phantom, g, o) for g, o in ((1.0, 0.0), (0.5, 40.0), (2.3, -100.0))]
    masks = [phantom.brain_mask] * 3
    landmarks = learn_nyul(images, masks, scale=(0.0, 100.0))
    assert landmarks.percentiles == DEFAULT_PERCENTILES and landmarks.n_images == 3
    assert landmarks.landmarks[0] == pytest.approx(0.0) and landmarks.landmarks[-1] == pytest.approx(100.0)
    out = nyul(images[1], phantom.brain_mask, landmarks)
    got = np.percentile(out.array[phantom.brain_mask.array > 0], landmarks.percentiles)
    np.testing.assert_allclose(got, landmarks.landmarks, atol=1e-3)


def test_nyul_is_monotonic_and_extrapolates_linearly(phantom: Phantom) -> None:
    landmarks = NyulLandmarks((10.0, 50.0, 90.0), (0.0, 30.0, 100.0))
    out = nyul(phantom.image, phantom.brain_mask, landmarks)
    source = phantom.image.array.ravel()
    order = np.argsort(source, kind="stable")
    assert np.all(np.diff(out.array.ravel()[order].astype(np.float64)) >= -1e-4)
    p10, p50, p90 = np.percentile(phantom.image.array[phantom.brain_mask.array > 0], [10, 50, 90])
    below = source < p10
    expected = (source[below] - p10) * 30.0 / (p50 - p10)
    np.testing.assert_allclose(out.array.ravel()[below], expected, rtol=1e-4, atol=1e-3)
    above = source > p90
    expected = 100.0 + (source[above] - p90) * 70.0 / (p90 - p50)
    np.testing.assert_allclose(out.array.ravel()[above], expected, rtol=1e-4, atol=1e-3)


def test_landmarks_save_load_round_trip(tmp_path: Path, phantom: Phantom) -> None:
    landmarks = learn_nyul([phantom.image], [phantom.brain_mask], contrast="t1", source="phantom")
    path = landmarks.save(tmp_path / "lm.json")
    assert NyulLandmarks.load(path) == landmarks
    assert json.loads(path.read_text())["format"] == "mriquant-nyul-landmarks"
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(InputError, match="mriquant-nyul-landmarks"):
        NyulLandmarks.load(tmp_path / "bad.json")
    with pytest.raises(InputError, match="readable"):
        NyulLandmarks.load(tmp_path / "missing.json")


def test_landmarks_validate() -> None:
    with pytest.raises(InputError, match="increasing"):
        NyulLandmarks((10.0, 50.0, 90.0), (0.0, 60.0, 50.0))
    with pytest.raises(InputError, match="as many"):
        NyulLandmarks((10.0, 90.0), (0.0, 50.0, 100.0))


def test_shipped_t1_landmarks_load() -> None:
    landmarks = shipped_landmarks("t1")
    assert landmarks.contrast == "t1" and landmarks.n_images == 15
    assert landmarks.percentiles == DEFAULT_PERCENTILES
    assert landmarks.landmarks[0] == pytest.approx(0.0) and landmarks.landmarks[-1] == pytest.approx(100.0)
    assert np.all(np.diff(landmarks.landmarks) > 0)
    assert "miccai2012" in landmarks.source and "learn_nyul_from_folder" in landmarks.regenerate
    with pytest.raises(InputError, match="bundled"):
        shipped_landmarks("flair")


def test_normalisers_reject_bad_masks(phantom: Phantom) -> None:
    other = LabelImage(np.ones((4, 4, 4), np.uint8), np.eye(4))
    for function in (zscore, wm_peak):
        with pytest.raises(GeometryError, match="resample the mask"):
            function(phantom.image, other)
    flat = Image(np.full((8, 8, 8), 3.0, np.float32), np.eye(4), {"source": "flat.nii.gz"})
    with pytest.raises(InputError, match=r"varying intensities.*flat\.nii\.gz"):
        zscore(flat, LabelImage(np.ones((8, 8, 8), np.uint8), np.eye(4)))


@pytest.mark.parametrize("method", ["wm-peak", "zscore", "nyul"])
def test_normalize_step(phantom: Phantom, method: str) -> None:
    case = Case(phantom.image, labels={"brain_mask": phantom.brain_mask})
    out = normalize_step(case, method=method)  # type: ignore[arg-type]
    step = out.provenance[-1]
    assert step.name == "normalize" and step.params["method"] == method and step.params["mask"] == "brain_mask"
    assert set(out.images) == {"normalized"} and case.images == {}
    brain = out.images["normalized"].array[phantom.brain_mask.array > 0]
    if method == "zscore":
        assert abs(float(brain.mean())) < 1e-4
    elif method == "nyul":
        assert np.percentile(brain, 50) == pytest.approx(shipped_landmarks().landmarks[5], abs=1e-3)
    no_mask = normalize_step(Case(phantom.image), method=method)  # type: ignore[arg-type]
    assert no_mask.provenance[-1].params["mask"] == "foreground"


def test_normalize_step_rejects_unknown_method(phantom: Phantom) -> None:
    with pytest.raises(InputError, match="wm-peak"):
        normalize_step(Case(phantom.image), method="minmax")  # type: ignore[arg-type]


@needs_data
def test_nyul_on_a_miccai_training_scan() -> None:
    from mriquant.io import read_image, read_labels

    image, mask = read_image(MICCAI / "1000_SS.nii.gz"), read_labels(MICCAI / "1000_mask.nii.gz")
    landmarks = shipped_landmarks("t1")
    out = nyul(image, mask, landmarks)
    got = np.percentile(out.array[mask.array > 0], landmarks.percentiles)
    np.testing.assert_allclose(got, landmarks.landmarks, atol=1e-3)
    tissue = read_labels(MICCAI / "1000_classified.nii.gz").array
    wm = wm_peak(image, mask)
    assert float(wm.array[tissue == 3].mean()) == pytest.approx(110.0, rel=0.08)  # measured 104.8 (mode > mean)
