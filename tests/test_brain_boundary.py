"""Outline refinement of a brain mask: Bayes' rule with a blurred-mask prior and EM-learnt intensities."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from mriquant.preprocess.brain_boundary import BoundaryOptions, band_posterior, largest_filled, refine_boundary


def _ball(shape: tuple[int, ...], radius: float, spacing: tuple[float, ...]) -> npt.NDArray[np.bool_]:
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    return np.asarray(np.sqrt(x**2 + y**2 + z**2) <= radius)


def _head(spacing: tuple[float, float, float] = (1.0, 1.0, 1.0), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A 'brain' ball (radius 30 mm, bright) inside a 5 mm dark 'skull' shell and a bright 'scalp'; noisy."""
    shape = tuple(round(90 / s) for s in spacing)
    brain = _ball(shape, 30.0, spacing)
    skull = _ball(shape, 35.0, spacing) & ~brain
    scalp = _ball(shape, 40.0, spacing) & ~brain & ~skull
    image = np.where(brain, 1.0, 0.0) + np.where(skull, 0.1, 0.0) + np.where(scalp, 0.8, 0.0)
    rng = np.random.default_rng(seed)
    return (image + rng.normal(0.0, 0.05, image.shape)).astype(np.float32), brain


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


@pytest.mark.parametrize(("radius", "floor"), [(28.5, 0.96), (29.0, 0.98), (31.0, 0.98), (31.5, 0.97), (32.5, 0.885)])
def test_a_mask_off_by_1_to_2_5_mm_moves_to_the_intensity_edge(radius: float, floor: float) -> None:
    """Measured: 1 mm off 0.95 -> 0.99, 1.5 mm off 0.92-0.93 -> 0.968-0.977; 2.5 mm wide 0.881 -> 0.892."""
    image, truth = _head()
    mask = _ball(truth.shape, radius, (1.0, 1.0, 1.0))
    kept = mask.copy()
    refined, probability = refine_boundary(image, mask, (1.0, 1.0, 1.0))
    assert np.array_equal(mask, kept)  # input untouched
    assert _dice(refined, truth) > max(floor, _dice(mask, truth) + 0.005)
    assert probability.shape == image.shape and probability.dtype == np.float32
    assert np.array_equal(refined, probability >= 0.5)


def test_uninformative_intensities_keep_the_mask() -> None:
    image = np.ones((100, 100, 100), np.float32)
    mask = _ball((100, 100, 100), 40.0, (1.0, 1.0, 1.0))
    refined, _ = refine_boundary(image, mask, (1.0, 1.0, 1.0))
    assert _dice(refined, mask) > 0.99


def test_anisotropic_voxels() -> None:
    spacing = (1.0, 1.0, 3.0)
    image, truth = _head(spacing)
    mask = _ball(truth.shape, 31.5, spacing)
    refined, _ = refine_boundary(image, mask, spacing)
    assert _dice(refined, truth) > _dice(mask, truth) + 0.03


def test_empty_mask_is_returned_unchanged() -> None:
    mask = np.zeros((20, 20, 20), bool)
    refined, probability = refine_boundary(np.random.default_rng(0).random((20, 20, 20)), mask, (1.0, 1.0, 1.0))
    assert not refined.any() and not probability.any()


def test_band_posterior_follows_separable_intensities_over_a_flat_prior() -> None:
    rng = np.random.default_rng(1)
    values = np.concatenate([rng.normal(1.0, 0.05, 5000), rng.normal(0.0, 0.05, 5000)])
    prior = np.concatenate([np.full(5000, 0.6), np.full(5000, 0.4)])
    posterior = band_posterior(values, prior, iterations=10)
    assert posterior[:5000].min() > 0.95 and posterior[5000:].max() < 0.05
    flat = band_posterior(np.ones(10000), prior)  # one intensity: the prior is the answer
    np.testing.assert_allclose(flat, prior, atol=1e-9)


def _largest_filled_whole_grid(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The reference: label and fill on the whole grid."""
    from scipy import ndimage

    labels, n = ndimage.label(mask)
    if n > 1:
        mask = labels == int(np.argmax(np.bincount(labels.ravel())[1:])) + 1
    return np.asarray(ndimage.binary_fill_holes(mask), dtype=bool)


def test_largest_filled_in_its_box_matches_the_whole_grid() -> None:
    from scipy import ndimage

    rng = np.random.default_rng(7)
    for k in range(60):  # random blobs, some touching the grid's faces (where the box is clipped)
        shape = tuple(int(n) for n in rng.integers(4, 24, 3))
        mask = ndimage.gaussian_filter(rng.random(shape), 1.2) > rng.uniform(0.48, 0.52)
        if k % 3 == 0:
            mask[int(rng.integers(0, shape[0]))] = True
        assert np.array_equal(largest_filled(mask), _largest_filled_whole_grid(mask)), k
    shell = _ball((40, 40, 40), 18.0, (1.0, 1.0, 1.0)) & ~_ball((40, 40, 40), 9.0, (1.0, 1.0, 1.0))
    speck = np.zeros_like(shell)
    speck[0, 0, 0] = True
    filled = largest_filled(shell | speck)
    assert np.array_equal(filled, _ball((40, 40, 40), 18.0, (1.0, 1.0, 1.0)))  # hole filled, speck dropped
    assert not largest_filled(np.zeros((5, 5, 5), bool)).any()


def test_no_smoothing_option() -> None:
    image, truth = _head()
    mask = _ball(truth.shape, 31.0, (1.0, 1.0, 1.0))
    refined, _ = refine_boundary(image, mask, (1.0, 1.0, 1.0), BoundaryOptions(smooth_mm=0.0))
    assert _dice(refined, truth) > 0.97


@pytest.mark.parametrize("bad", [{"sigma_mm": 0.0}, {"band": 0.5}, {"bins": 1}, {"iterations": 0}, {"smooth_mm": -1.0}])
def test_bad_options_are_refused(bad: dict[str, float]) -> None:
    from mriquant.core.errors import InputError

    with pytest.raises(InputError, match="Expected sigma_mm > 0"):
        BoundaryOptions(**bad)  # type: ignore[arg-type]
