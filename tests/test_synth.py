"""BrainWeb MR simulator and the skull-stripping training-sample generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.image import LabelImage
from mriquant.models.inputs import normalise_intensity
from mriquant.simulate.brainweb import class_signals, simulate
from mriquant.training.synth import LabelMap, SynthConfig, SynthGenerator

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")


def _crisp_head(n: int = 96) -> LabelImage:
    """Concentric crisp head at 0.5 mm: WM core, GM, CSF, dura, skull, marrow, fat, skin, background."""
    c = (n - 1) / 2
    r = np.sqrt(((np.indices((n, n, n)) - c) ** 2).sum(axis=0)) * 0.5  # mm
    radii = [(10.0, 3), (14.0, 2), (16.0, 1), (17.0, 10), (18.0, 7), (19.0, 11), (20.0, 7), (21.5, 4), (23.0, 6)]
    labels = np.zeros((n, n, n), np.int32)
    for radius, value in reversed(radii):
        labels[r < radius] = value
    affine = np.diag([0.5, 0.5, 0.5, 1.0])
    affine[:3, 3] = -c * 0.5
    return LabelImage(labels, affine, {"source": "crisp test head"})


@pytest.fixture(scope="module")
def head() -> LabelImage:
    return _crisp_head()


def _class_means(scan_image: np.ndarray, labels: LabelImage) -> dict[int, float]:
    # majority labels at 1 mm (block of 2) and one voxel of erosion to avoid partial volume
    blocks = labels.array[::2, ::2, ::2]
    return {c: float(scan_image[ndimage.binary_erosion(blocks == c)].mean()) for c in (1, 2, 3)}


@pytest.mark.parametrize(("contrast", "order"), [("T1", (3, 2, 1)), ("T2", (1, 2, 3)), ("PD", (1, 2, 3))])
def test_contrast_ordering(head: LabelImage, contrast: str, order: tuple[int, int, int]) -> None:
    scan = simulate(head, contrast=contrast, noise=0.0, bias=0.0)
    means = _class_means(scan.image.array, head)
    assert means[order[0]] > means[order[1]] > means[order[2]]
    # BrainWeb-like ratios: T1 WM/GM about 1.35, T2 CSF/GM about 2.5
    if contrast == "T1":
        assert 1.2 < means[3] / means[2] < 1.5
    if contrast == "T2":
        assert means[1] / means[2] > 2.0


@pytest.mark.parametrize("noise", [0.03, 0.09])
def test_noise_level_in_white_matter(head: LabelImage, noise: float) -> None:
    scan = simulate(head, contrast="T1", noise=noise, bias=0.0, seed=3)
    wm = ndimage.binary_erosion(head.array[::2, ::2, ::2] == 3, iterations=2)
    measured = float(scan.image.array[wm].std())
    brightest = float(class_signals("T1")[[1, 2, 3]].max())
    assert measured == pytest.approx(noise * brightest, rel=0.10)


def test_bias_amplitude(head: LabelImage) -> None:
    clean = simulate(head, contrast="PD", noise=0.0, bias=0.0).image.array
    biased = simulate(head, contrast="PD", noise=0.0, bias=0.4, seed=5).image.array
    inside = clean > 0.1 * clean.max()
    ratio = biased[inside] / clean[inside]
    assert ratio.min() >= 0.79 and ratio.max() <= 1.21
    assert ratio.max() - ratio.min() > 0.2


def test_determinism_and_truth(head: LabelImage) -> None:
    a = simulate(head, contrast="T2", noise=0.05, bias=0.3, seed=7)
    b = simulate(head, contrast="T2", noise=0.05, bias=0.3, seed=7)
    c = simulate(head, contrast="T2", noise=0.05, bias=0.3, seed=8)
    np.testing.assert_array_equal(a.image.array, b.image.array)
    assert not np.array_equal(a.image.array, c.image.array)
    assert a.image.shape == (48, 48, 48) and a.image.spacing == pytest.approx((1.0, 1.0, 1.0))
    # voxel (0,0,0) of the 1 mm grid is the centre of the first 2x2x2 block: 0.25 mm from the 0.5 mm origin
    np.testing.assert_allclose(a.image.affine[:3, 3], head.affine[:3, 3] + 0.25)
    brain_ml = a.brain_mask.array.sum() / 1000
    assert brain_ml == pytest.approx(4 / 3 * np.pi * 16.0**3 / 1000, rel=0.05)
    assert set(np.unique(a.tissue.array)) == {0, 1, 2, 3}


def test_bad_arguments(head: LabelImage) -> None:
    with pytest.raises(InputError, match="contrast"):
        simulate(head, contrast="FLAIR")
    with pytest.raises(InputError, match="multiple"):
        simulate(head, resolution_mm=0.7)


# --------------------------------------------------------------------------- training generator


def _label_map() -> LabelMap:
    lab = _crisp_head(96).array[::2, ::2, ::2]  # 1 mm, 48^3
    index = np.pad(lab, 16).astype(np.uint8)
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    affine[:3, 3] = -(np.array(index.shape) - 1) / 2
    brain = np.isin(np.arange(12), (1, 2, 3))
    return LabelMap(index, affine, brain, None, "test")


def test_generator_shapes_ranges_and_determinism() -> None:
    cfg = SynthConfig(shape=(24, 24, 24), p_neck_cut=0.0, p_fov_cut=0.0)
    maps = [_label_map()]
    x1, y1 = SynthGenerator(maps, cfg, seed=4).sample()
    x2, y2 = SynthGenerator(maps, cfg, seed=4).sample()
    assert x1.shape == y1.shape == (1, 24, 24, 24)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert float(x1.min()) >= 0.0 and float(x1.max()) <= 1.0
    # brain = sphere of radius 16 mm (scaled by at most 12 %): about 17 mL
    brain_ml = float(y1.sum()) * 8 / 1000
    assert 10 < brain_ml < 26


def test_generator_stripped_samples_are_zero_outside_brain() -> None:
    cfg = SynthConfig(shape=(24, 24, 24), p_stripped=1.0, p_thick=0.0, p_neck_cut=0.0, p_fov_cut=0.0)
    x, y = SynthGenerator([_label_map()], cfg, seed=1).sample()
    assert float(x[y == 0].max()) == 0.0
    assert float(y[x > 0].min()) > 0.0


def test_normalise_intensity() -> None:
    t = torch.linspace(0, 100, 10001).reshape(1, 1, 10001)
    n = normalise_intensity(t)
    assert float(n.min()) == 0.0 and float(n.max()) == 1.0
    assert float(n[0, 0, 5000]) == pytest.approx(0.5, abs=1e-3)


@needs_data
@pytest.mark.slow
def test_brainweb_real_model_t1_contrast() -> None:
    from mriquant.io import read_labels

    labels = read_labels(DATA / "brainweb-crisp" / "subject05_crisp_v.mnc.gz")
    scan = simulate(labels, contrast="T1", noise=0.0, bias=0.0)
    assert scan.image.shape == (181, 217, 181)
    brain_ml = scan.brain_mask.array.sum() / 1000
    assert 1200 < brain_ml < 2300
    t = scan.tissue.array
    means = [float(scan.image.array[t == c].mean()) for c in (1, 2, 3)]
    assert means[2] > means[1] > means[0]
