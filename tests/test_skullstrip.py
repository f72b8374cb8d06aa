"""Skull stripping: bundled weights, accuracy on phantoms, native-grid output, stripped input, bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from mriquant.core.case import Case
from mriquant.core.errors import GeometryError, InputError
from mriquant.core.image import Image
from mriquant.models import WEIGHTS_DIR, WeightsError, load_weights, read_manifest
from mriquant.preprocess.skullstrip import SkullStripOptions, detect_stripped, skullstrip, skullstrip_step
from mriquant.testing import make_phantom

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data not present")

#: Dice bounds: measured with the shipped weights (model version 1: phantom 0.83-0.85 at 2 mm, held-out
#: BrainWeb T1 3 %/20 % 0.935), minus a margin. Raise them when better weights ship.
PHANTOM_DICE = 0.80
BRAINWEB_DICE = 0.975  # the atlas method with outline refinement: 0.985 measured on subject05 T1


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def test_weights_match_manifest_and_size() -> None:
    entry = read_manifest()["models"]["skullstrip"]
    for key in ("file", "sha256", "size_bytes", "training_command", "date", "training_data", "version", "config"):
        assert key in entry
    path = WEIGHTS_DIR / entry["file"]
    assert path.stat().st_size == entry["size_bytes"] <= 20 * 1024 * 1024
    state, config, _ = load_weights("skullstrip")
    assert config["channels"] and all(hasattr(v, "shape") for v in state.values())


def test_corrupted_weights_are_refused(tmp_path: Path) -> None:
    for item in WEIGHTS_DIR.iterdir():
        if item.is_file():
            shutil.copy(item, tmp_path / item.name)
    entry = read_manifest(tmp_path)["models"]["skullstrip"]
    blob = bytearray((tmp_path / entry["file"]).read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (tmp_path / entry["file"]).write_bytes(bytes(blob))
    with pytest.raises(WeightsError, match="SHA-256"):
        load_weights("skullstrip", folder=tmp_path)


@pytest.mark.parametrize("contrast", ["T1", "T2"])
def test_phantom_dice(contrast: str) -> None:
    ph = make_phantom(contrast=contrast, spacing=(2.0, 2.0, 2.0), seed=3)
    result = skullstrip(ph.image)
    assert not result.already_stripped
    assert _dice(result.mask.array, ph.brain_mask.array) >= PHANTOM_DICE


def test_native_grid_for_oblique_lia_input() -> None:
    ph = make_phantom(contrast="T1", spacing=(1.5, 2.0, 2.5), orientation="LIA", rotation=(8.0, 0.0, -6.0), seed=5)
    # the CNN (model version 1) over-segments oblique inputs (about 3200 mL here): this checks its geometry contract
    result = skullstrip(ph.image, options=SkullStripOptions(method="cnn", max_brain_ml=10_000))
    assert result.mask.same_grid(ph.image) and result.mask.array.dtype == np.uint8
    assert result.probability is not None and result.probability.same_grid(ph.image)
    assert set(np.unique(result.mask.array)) <= {0, 1}
    assert result.mask.array[ph.brain_mask.array > 0].mean() > 0.95  # the brain itself is inside the mask


def test_atlas_method_on_oblique_lia_input() -> None:
    ph = make_phantom(contrast="T1", spacing=(1.5, 2.0, 2.5), orientation="LIA", rotation=(8.0, 0.0, -6.0), seed=5)
    result = skullstrip(ph.image)  # the default method registers simulated heads (measured 0.935 here)
    assert result.mask.same_grid(ph.image) and result.mask.array.dtype == np.uint8
    assert _dice(result.mask.array, ph.brain_mask.array) >= 0.9


def test_refine_option_switches_the_outline_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """refine=False returns the registered mask; refine=True re-decides its outline (one registration, reused)."""
    import mriquant.preprocess.skullstrip_atlas as skullstrip_atlas
    from mriquant.preprocess.skullstrip import postprocess

    ph = make_phantom(contrast="T1", spacing=(2.0, 2.0, 2.0), seed=4)
    probability, _ = skullstrip_atlas.atlas_brain_probability(ph.image, atlases=1)
    monkeypatch.setattr(skullstrip_atlas, "atlas_brain_probability", lambda *a, **k: (probability, {}))
    plain = skullstrip(ph.image, options=SkullStripOptions(refine=False))
    refined = skullstrip(ph.image)
    assert np.array_equal(plain.mask.array > 0, postprocess(probability.array, 0.5))
    assert plain.probability is not None and np.array_equal(plain.probability.array, probability.array)
    assert refined.probability is not None and "outline re-decided" in refined.probability.meta["source"]
    assert _dice(refined.mask.array, refined.probability.array >= 0.5) > 0.99  # up to specks and filled holes
    assert not np.array_equal(refined.mask.array, plain.mask.array)


@pytest.mark.parametrize("contrast", ["T1", "PD"])  # the Mattes and the re-rendered cross-correlation paths
def test_atlas_method_leaves_no_temporary_files(contrast: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    ph = make_phantom(contrast=contrast, spacing=(2.0, 2.0, 2.0), seed=4)
    result = skullstrip(ph.image)
    assert _dice(result.mask.array, ph.brain_mask.array) >= PHANTOM_DICE
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # ANTs' transforms and inverse warps are removed


def test_brain_box_crops_the_fixed_image_to_the_carried_brain() -> None:
    import ants

    from mriquant.preprocess.skullstrip_atlas import _brain_box

    fixed = ants.from_numpy(np.zeros((60, 50, 40), np.float32), spacing=(2.0, 2.0, 2.0))
    classes = np.zeros((60, 50, 40), np.float32)
    classes[15:35, 5:45, 2:38] = 7.0  # skull carried onto the scan: not brain
    classes[20:30, 10:40, 5:35] = 2.0  # grey matter
    classes[24:26, 20:22, 15:17] = 3.0  # white matter
    box = _brain_box(fixed, fixed.new_image_like(classes), margin_mm=8.0)  # 4 voxels each side
    assert box.shape == (18, 38, 38)
    np.testing.assert_allclose(box.origin, (32.0, 12.0, 2.0))  # the crop keeps world positions
    assert _brain_box(fixed, fixed.new_image_like(np.ones_like(classes)), margin_mm=8.0) is fixed
    assert _brain_box(fixed, fixed.new_image_like(np.full_like(classes, 7.0))) is fixed  # no brain carried: no crop


def test_class_intensities_use_each_class_eroded_by_one_voxel() -> None:
    import ants
    from scipy import ndimage

    from mriquant.preprocess.skullstrip_atlas import _class_intensities

    rng = np.random.default_rng(2)
    labels = (ndimage.gaussian_filter(rng.random((30, 26, 22)), 2.0) * 900).astype(int) % 6
    labels[labels == 4] = 0  # a class that is absent
    labels[3:5, 3:5, 3:5] = 5  # ... and one too small to erode: its whole region counts
    values = rng.random(labels.shape).astype(np.float32)
    expected = np.zeros(7, np.float32)
    for c in (1, 2, 3, 5):
        core = ndimage.binary_erosion(labels == c)
        expected[c] = np.median(values[core if core.sum() > 50 else labels == c])
    found = _class_intensities(ants.from_numpy(values), ants.from_numpy(labels.astype(np.float32)), 7)
    np.testing.assert_array_equal(found, expected)


def test_fixed_image_is_on_the_grid_ants_would_resample_to() -> None:
    """The 2 mm fixed image: same origin, axes, size and values as ANTs' own resampling, in any orientation."""
    from mriquant.core.ants_bridge import to_ants
    from mriquant.core.geometry import smooth_to
    from mriquant.preprocess.skullstrip_atlas import _smooth_fixed

    ph = make_phantom(contrast="T1", spacing=(1.5, 1.2, 2.5), orientation="LIA", rotation=(8.0, 0.0, -6.0), seed=5)
    fixed = _smooth_fixed(ph.image, 2.0)
    smooth = ph.image.with_array(smooth_to(ph.image, 2.0))
    reference = to_ants(smooth).resample_image((2.0, 2.0, 2.0), use_voxels=False, interp_type=0)
    assert fixed.shape == reference.shape
    np.testing.assert_allclose(fixed.origin, reference.origin, atol=1e-4)
    np.testing.assert_allclose(fixed.direction, reference.direction, atol=1e-6)
    np.testing.assert_allclose(fixed.spacing, (2.0, 2.0, 2.0))
    np.testing.assert_allclose(fixed.numpy(), reference.numpy(), atol=1e-4 * float(reference.max()))


def test_head_library_reads_one_atlas_and_refuses_a_bad_file(tmp_path: Path) -> None:
    from mriquant.preprocess.skullstrip_atlas import _read_atlas, load_head_atlases

    heads = load_head_atlases()
    assert len(heads.names) == 3
    _read_atlas.cache_clear()
    head, brain = heads.atlas(0)
    assert _read_atlas.cache_info().currsize == 1  # the other atlases stay on disk
    assert head.shape == brain.shape == heads.classes(0).shape == heads.class_fractions(0).shape[1:]
    assert float(brain.array.min()) >= 0.0 and float(brain.array.max()) <= 1.0
    np.testing.assert_allclose(heads.class_fractions(0).sum(axis=0), 1.0, atol=0.05)
    with pytest.raises(IndexError):
        heads.atlas(3)
    bad = tmp_path / "heads.npz"
    np.savez(bad, images=np.zeros((1, 2, 2, 2)))
    with pytest.raises(InputError, match="Expected a head-atlas library with 'names'"):
        load_head_atlases(str(bad))
    with pytest.raises(InputError, match="found no file"):
        load_head_atlases(str(tmp_path / "missing.npz"))


def test_a_brain_cut_by_the_field_of_view_gets_a_note(monkeypatch: pytest.MonkeyPatch) -> None:
    import mriquant.preprocess.skullstrip_atlas as skullstrip_atlas
    from mriquant.core.geometry import reorient

    ph = make_phantom(contrast="T1", spacing=(2.0, 2.0, 2.0), seed=4)
    whole = reorient(ph.image, "RAS")
    brain = reorient(ph.brain_mask, "RAS").array > 0
    top = int(np.argwhere(brain)[:, 2].max())
    image = Image(whole.array[:, :, : top - 3].copy(), whole.affine.copy())  # the scan stops below the vertex
    truth = image.with_array(brain[:, :, : top - 3].astype(np.float32))
    monkeypatch.setattr(skullstrip_atlas, "atlas_brain_probability", lambda *a, **k: (truth, {}))
    result = skullstrip(image, options=SkullStripOptions(refine=False))
    assert any("edge of the field of view (superior" in note for note in result.notes)
    whole_truth = whole.with_array(brain.astype(np.float32))
    monkeypatch.setattr(skullstrip_atlas, "atlas_brain_probability", lambda *a, **k: (whole_truth, {}))
    assert skullstrip(whole, options=SkullStripOptions(refine=False)).notes == []


def test_options_are_checked() -> None:
    with pytest.raises(InputError, match="method"):
        SkullStripOptions(method="bet")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="atlases"):
        SkullStripOptions(atlases=0)


def test_anisotropic_lia_input_dice() -> None:
    ph = make_phantom(contrast="T1", spacing=(1.5, 2.0, 2.5), orientation="LIA", seed=5)
    result = skullstrip(ph.image)
    assert result.mask.same_grid(ph.image)
    assert _dice(result.mask.array, ph.brain_mask.array) >= PHANTOM_DICE


def test_already_stripped_phantom_is_detected() -> None:
    ph = make_phantom(contrast="T1", spacing=(2.0, 2.0, 2.0), noise=0.02, seed=2)
    stripped = ph.image.with_array(ph.image.array * (ph.brain_mask.array > 0))
    assert not detect_stripped(ph.image).is_stripped
    result = skullstrip(stripped)
    assert result.already_stripped and result.probability is None
    assert "already skull stripped" in result.notes[0]
    assert _dice(result.mask.array, ph.brain_mask.array) > 0.97


def test_noise_image_raises_input_error() -> None:
    rng = np.random.default_rng(0)
    noise = Image(rng.random((96, 96, 96)).astype(np.float32), np.diag([2.0, 2.0, 2.0, 1.0]), {"source": "noise"})
    with pytest.raises(InputError, match="no spatial structure"):
        skullstrip(noise)


def test_ct_like_and_thick_slices_raise() -> None:
    ph = make_phantom(contrast="T1", spacing=(2.0, 2.0, 2.0), noise=0.0, seed=1)
    ct = ph.image.with_array(np.where(ph.image.array > 0.01, 40.0 + 2000.0 * (ph.image.array < 0.1), -1000.0))
    with pytest.raises(InputError, match="CT-like"):
        skullstrip(ct)
    thick = Image(ph.image.array[:, :, ::5], ph.image.affine @ np.diag([1.0, 1.0, 5.0, 1.0]))
    with pytest.raises(GeometryError, match="thick"):
        skullstrip(thick)


def test_case_step_records_provenance() -> None:
    ph = make_phantom(contrast="PD", spacing=(2.0, 2.0, 2.0), seed=4)
    case = skullstrip_step(Case(ph.image), options=SkullStripOptions(keep_probability=False))
    step = case.provenance[-1]
    assert step.name == "skullstrip" and step.params["input"] == "image"
    assert step.params["method"] == "atlas" and step.params["already_stripped"] is False
    assert step.params["head_atlases"] == ["brainweb-subject18"]
    assert case.labels["brain_mask"].same_grid(ph.image)
    cnn = skullstrip_step(Case(ph.image), options=SkullStripOptions(method="cnn", max_brain_ml=10_000))
    assert len(cnn.provenance[-1].params["model_sha256"]) == 64


# --------------------------------------------------------------------------- real data


@needs_data
def test_miccai_stripped_scan_is_detected() -> None:
    from mriquant.io import read_image, read_labels

    image = read_image(DATA / "miccai2012" / "train" / "1000_SS.nii.gz")
    result = skullstrip(image)
    assert result.already_stripped
    truth = read_labels(DATA / "miccai2012" / "train" / "1000_mask.nii.gz")
    assert _dice(result.mask.array, truth.array) > 0.95


@needs_data
def test_real_heads_are_not_detected_as_stripped() -> None:
    from mriquant.io import read_image

    assert not detect_stripped(read_image(DATA / "t1" / "chris_t1.nii.gz")).is_stripped


@needs_data
@pytest.mark.slow
def test_held_out_brainweb_t1_dice() -> None:
    from mriquant.io import read_labels
    from mriquant.simulate.brainweb import simulate

    labels = read_labels(DATA / "brainweb-crisp" / "subject05_crisp_v.mnc.gz")
    sim = simulate(labels, contrast="T1", noise=0.03, bias=0.2, seed=11)
    result = skullstrip(sim.image)
    assert _dice(result.mask.array, sim.brain_mask.array) >= BRAINWEB_DICE


@needs_data
@pytest.mark.slow
def test_outline_refinement_removes_the_skull_an_atlas_mask_takes_in() -> None:
    """BrainWeb anatomy 06: the registered atlas mask runs ~2 mm wide (mostly skull); refinement fixes most."""
    from mriquant.io import read_labels
    from mriquant.preprocess.brain_boundary import refine_boundary
    from mriquant.preprocess.skullstrip import postprocess
    from mriquant.preprocess.skullstrip_atlas import atlas_brain_probability
    from mriquant.simulate.brainweb import simulate

    labels = read_labels(DATA / "brainweb-crisp" / "subject06_crisp_v.mnc.gz")
    sim = simulate(labels, contrast="T1", noise=0.03, bias=0.2, seed=5)
    probability, _ = atlas_brain_probability(sim.image, atlases=1)
    registered = postprocess(probability.array, 0.5)
    refined, _ = refine_boundary(sim.image.array, registered, sim.image.spacing)
    before, after = _dice(registered, sim.brain_mask.array), _dice(refined, sim.brain_mask.array)
    assert before < 0.962  # measured 0.956
    assert after >= 0.965 and after - before >= 0.008  # measured 0.969
