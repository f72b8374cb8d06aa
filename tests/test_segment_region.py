"""Region methods: automatic ventricle seeds, region growing and level sets.

Bounds were measured on the seeded phantom (2 mm, seed 0) and on the MICCAI 2012 training
scans, then lowered by a margin; the measured values are in the comments.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

import numpy as np
import pytest
from scipy import ndimage

from mriquant.core.errors import InputError
from mriquant.core.geometry import resample_like
from mriquant.core.image import Image, LabelImage
from mriquant.evaluate import dice
from mriquant.segment import get_segmenter
from mriquant.segment._seeds import find_ventricle_seeds, seeds_to_voxels
from mriquant.segment.level_set import LevelSet, LevelSetOptions
from mriquant.segment.region_growing import LeakError, RegionGrowing, RegionGrowingOptions
from mriquant.testing import Phantom, PhantomSpec, make_phantom

LEFT, RIGHT = 4, 43
#: World positions (RAS mm) inside the phantom's left and right lateral ventricles.
PHANTOM_SEEDS = ((-7.0, 0.0, 17.0), (7.0, 0.0, 17.0))
MICCAI = "miccai2012/train"


@pytest.fixture(scope="module")
def oblique() -> Phantom:
    """The session phantom's anatomy on an LIA grid tilted by a few degrees."""
    return make_phantom(PhantomSpec(spacing=(2.0, 2.0, 2.0), orientation="LIA", rotation=(8.0, -5.0, 4.0)))


def _label_at(labels: LabelImage, image: Image, world: tuple[float, float, float]) -> int:
    return int(labels.array[tuple(seeds_to_voxels(image, np.array([world]))[0])])


# --------------------------------------------------------------------------- automatic seeds


@pytest.mark.parametrize(
    ("orientation", "rotation", "contrast"),
    [("RAS", (0.0, 0.0, 0.0), "T1"), ("LIA", (8.0, -5.0, 4.0), "T1"), ("PSR", (0.0, 0.0, 0.0), "T2")],
)
def test_ventricle_seeds_land_in_the_phantom_ventricles(
    orientation: str, rotation: tuple[float, float, float], contrast: Literal["T1", "T2"]
) -> None:
    ph = make_phantom(
        PhantomSpec(spacing=(2.0, 2.0, 2.0), orientation=orientation, rotation=rotation, contrast=contrast)
    )
    seeds = find_ventricle_seeds(ph.image, ph.brain_mask, contrast=contrast)
    assert _label_at(ph.structures, ph.image, seeds.left) == LEFT
    assert _label_at(ph.structures, ph.image, seeds.right) == RIGHT
    assert seeds.left[0] < seeds.midline.point[0] < seeds.right[0]


def test_ventricle_seeds_without_mask_use_the_foreground(phantom: Phantom) -> None:
    seeds = find_ventricle_seeds(phantom.image, None)
    assert _label_at(phantom.structures, phantom.image, seeds.left) == LEFT
    assert _label_at(phantom.structures, phantom.image, seeds.right) == RIGHT


@pytest.mark.needs_data(MICCAI)
@pytest.mark.parametrize("subject", ["1000", "1012", "1036"])  # small, small-and-close, large ventricles
def test_ventricle_seeds_land_in_the_miccai_ventricles(data_dir: Path, subject: str) -> None:
    from mriquant.io import read_image, read_labels

    folder = data_dir / MICCAI
    image = read_image(folder / f"{subject}_SS.nii.gz")
    truth = read_labels(folder / f"{subject}_glm.nii.gz")  # 52 left, 51 right lateral ventricle
    seeds = find_ventricle_seeds(image, read_labels(folder / f"{subject}_mask.nii.gz"))
    assert _label_at(truth, image, seeds.left) == 52
    assert _label_at(truth, image, seeds.right) == 51


def test_ventricle_seeds_fail_clearly_on_a_blank_brain() -> None:
    image = Image(np.full((20, 20, 20), 100.0, np.float32), np.eye(4))
    with pytest.raises(InputError, match=r"CSF-like|contrast"):
        find_ventricle_seeds(image, LabelImage(np.ones((20, 20, 20), np.uint8), np.eye(4)))


# --------------------------------------------------------------------------- region growing


def test_region_growing_finds_the_phantom_ventricles(phantom: Phantom) -> None:
    seg = RegionGrowing().segment(phantom.image, phantom.brain_mask)
    assert seg.dseg is not None and seg.dseg.labels == [LEFT, RIGHT]
    truth = phantom.structures.array
    # measured 0.84 (left) and 0.81 (right)
    assert dice(seg.dseg.array == LEFT, truth == LEFT) >= 0.75
    assert dice(seg.dseg.array == RIGHT, truth == RIGHT) >= 0.72
    assert seg.info["seeds"] == "lateral-ventricles"


def test_region_growing_t2_contrast() -> None:
    ph = make_phantom(PhantomSpec(spacing=(2.0, 2.0, 2.0), contrast="T2", seed=1))
    seg = RegionGrowing(RegionGrowingOptions(contrast="T2")).segment(ph.image, ph.brain_mask)
    assert seg.dseg is not None
    both = np.isin(ph.structures.array, [LEFT, RIGHT])
    assert dice(seg.dseg.array > 0, both) >= 0.8  # measured 0.88


def test_user_seeds_give_the_same_world_region_in_any_orientation(phantom: Phantom, oblique: Phantom) -> None:
    options = RegionGrowingOptions(seeds=PHANTOM_SEEDS, label=7)
    ras = RegionGrowing(options).segment(phantom.image, phantom.brain_mask).dseg
    lia_spec = dataclasses.replace(phantom.spec, orientation="LIA")
    lia_ph = make_phantom(lia_spec)
    lia = RegionGrowing(options).segment(lia_ph.image, lia_ph.brain_mask).dseg
    tilted = RegionGrowing(options).segment(oblique.image, oblique.brain_mask).dseg
    assert ras is not None and lia is not None and tilted is not None
    assert ras.labels == [7] and lia.axcodes == "LIA"
    # same voxels, other order: identical after resampling (measured 1.0)
    assert dice(resample_like(lia, ras).array == 7, ras.array == 7) > 0.999
    # another (oblique) sampling of the same anatomy: close in world space (measured 0.89)
    assert dice(resample_like(tilted, ras).array == 7, ras.array == 7) > 0.8
    both = np.isin(phantom.structures.array, [LEFT, RIGHT])
    assert dice(ras.array == 7, both) > 0.9  # measured 0.95


def test_seed_outside_the_image_is_an_input_error(phantom: Phantom) -> None:
    options = RegionGrowingOptions(seeds=((0.0, 0.0, 10.0), (500.0, 0.0, 0.0)))
    with pytest.raises(InputError, match=r"outside shape") as info:
        RegionGrowing(options).segment(phantom.image, phantom.brain_mask)
    assert "\n" not in str(info.value)


def test_seed_outside_the_mask_is_an_input_error(phantom: Phantom) -> None:
    options = RegionGrowingOptions(seeds=((0.0, 0.0, 85.0),))  # inside the grid, above the brain
    with pytest.raises(InputError, match="brain mask"):
        RegionGrowing(options).segment(phantom.image, phantom.brain_mask)


def _noise_volume() -> tuple[Image, LabelImage]:
    """Pure noise: every voxel looks like the seed's region, so growing can only leak."""
    rng = np.random.default_rng(3)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    image = Image(rng.normal(100.0, 10.0, (40, 40, 40)).astype(np.float32), affine)
    return image, LabelImage(np.ones((40, 40, 40), np.uint8), affine)


def test_leak_guard_raises_when_the_region_keeps_exploding() -> None:
    image, mask = _noise_volume()  # 40^3 voxels of 8 mm^3 = 512 mL
    options = RegionGrowingOptions(seeds=((40.0, 40.0, 40.0),), max_volume_ml=20.0)
    with pytest.raises(LeakError, match="mL") as info:
        RegionGrowing(options).segment(image, mask)
    assert "\n" not in str(info.value) and "--max-volume-ml" in str(info.value)
    unguarded = RegionGrowing(dataclasses.replace(options, max_volume_ml=0.0)).segment(image, mask)
    assert unguarded.dseg is not None and unguarded.info["region_ml"]["1"] > 400.0


def test_leak_guard_shrinks_the_multiplier_before_giving_up() -> None:
    image, mask = _noise_volume()
    options = RegionGrowingOptions(seeds=((40.0, 40.0, 40.0),), max_volume_ml=200.0, multiplier=1.0, iterations=0)
    seg = RegionGrowing(options).segment(image, mask)
    assert seg.info["retries"] >= 1 and seg.info["multiplier_used"] < 1.0
    assert seg.info["region_ml"]["1"] <= 200.0


def test_region_growing_is_deterministic(phantom: Phantom) -> None:
    options = RegionGrowingOptions(smoothing="gaussian")
    a = RegionGrowing(options).segment(phantom.image, phantom.brain_mask).dseg
    b = RegionGrowing(options).segment(phantom.image, phantom.brain_mask).dseg
    assert a is not None and b is not None and np.array_equal(a.array, b.array)


def test_bad_options_are_input_errors() -> None:
    with pytest.raises(InputError):
        RegionGrowingOptions(multiplier=0.0)
    with pytest.raises(InputError):
        RegionGrowingOptions(smoothing="median")  # type: ignore[arg-type]
    with pytest.raises(InputError):
        LevelSetOptions(model="snake")  # type: ignore[arg-type]


@pytest.mark.parametrize("options_type", [RegionGrowingOptions, LevelSetOptions])
def test_every_option_has_help(options_type: type) -> None:
    assert all(f.metadata.get("help") for f in dataclasses.fields(options_type))


# --------------------------------------------------------------------------- level sets


def _blob() -> tuple[Image, LabelImage, np.ndarray]:
    """A bright ellipsoid (semi-axes 14, 10, 12 mm) in noise on a 1.5 mm grid, and its truth."""
    shape = (48, 48, 48)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = -35.0
    world = np.indices(shape, dtype=np.float32) * 1.5 - 35.0
    truth = ((world[0] - 3) / 14) ** 2 + ((world[1] + 2) / 10) ** 2 + ((world[2] - 1) / 12) ** 2 < 1
    rng = np.random.default_rng(0)
    image = Image((truth * 100.0 + rng.normal(0.0, 20.0, shape)).astype(np.float32), affine)
    return image, LabelImage(np.ones(shape, np.uint8), affine), truth


def test_chan_vese_grows_from_a_small_sphere_to_the_blob() -> None:
    image, mask, truth = _blob()
    options = LevelSetOptions(seeds=((3.0, -2.0, 1.0),), init="seeds", seed_radius_mm=3.0, margin_mm=30.0)
    seg = LevelSet(options).segment(image, mask)
    assert seg.dseg is not None and seg.dseg.labels == [1]
    assert dice(seg.dseg.array > 0, truth) > 0.95  # measured 0.988
    phi = seg.extras["phi"]
    assert phi.same_grid(image) and phi.array.dtype == np.float32
    assert np.array_equal(phi.array > 0.5, seg.dseg.array > 0)


def test_geodesic_refines_a_dilated_brain_mask() -> None:
    # T2: CSF bright, skull dark, so the brain mask's outline is an edge
    ph = make_phantom(PhantomSpec(spacing=(2.0, 2.0, 2.0), contrast="T2"))
    truth = ph.brain_mask.array > 0
    options = LevelSetOptions(model="geodesic", target="brain", mask_offset_mm=4.0)
    start = ndimage.distance_transform_edt(~truth, sampling=ph.image.spacing) <= options.mask_offset_mm
    seg = LevelSet(options).segment(ph.image, ph.brain_mask)
    assert seg.dseg is not None
    before, after = dice(start, truth), dice(seg.dseg.array > 0, truth)
    assert after > before + 0.03 and after > 0.97  # measured 0.93 -> 0.99


def test_level_set_defaults_segment_the_ventricles(phantom: Phantom) -> None:
    seg = LevelSet().segment(phantom.image, phantom.brain_mask)
    assert seg.dseg is not None and seg.dseg.labels == [LEFT, RIGHT]
    truth = phantom.structures.array
    # measured 0.97 and 0.96
    assert dice(seg.dseg.array == LEFT, truth == LEFT) >= 0.9
    assert dice(seg.dseg.array == RIGHT, truth == RIGHT) >= 0.9


# --------------------------------------------------------------------------- contract


@pytest.mark.parametrize(("name", "bound"), [("region-growing", 0.65), ("level-set", 0.9)])
def test_outputs_lie_exactly_on_the_input_grid(name: str, bound: float, oblique: Phantom) -> None:
    method = get_segmenter(name)
    assert method.kind == "region" and method.reference
    seg = method().segment(oblique.image, oblique.brain_mask)
    assert seg.dseg is not None
    assert seg.dseg.shape == oblique.image.shape
    assert np.array_equal(seg.dseg.affine, oblique.image.affine)
    assert np.issubdtype(seg.dseg.array.dtype, np.integer)
    assert set(seg.dseg.labels) == {LEFT, RIGHT}
    for extra in seg.extras.values():
        assert extra.same_grid(oblique.image)
    both = np.isin(oblique.structures.array, [LEFT, RIGHT])
    assert dice(seg.dseg.array > 0, both) > bound  # measured 0.73 (region growing), 0.97 (level set)
